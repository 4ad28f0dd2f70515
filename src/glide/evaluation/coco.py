"""Reading COCO-format caption sets (MS-COCO's ``captions_val2014.json`` or our val export).

The file needs ``images: [{id, file_name, ...}]`` and ``annotations: [{image_id, caption}]``;
``image_dir`` holds the ``file_name``\\s. Images without captions are skipped.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

__all__ = ["CaptionedImage", "CocoCaptions", "load_coco_captions"]


@dataclass(frozen=True)
class CaptionedImage:
    """One image and one of its captions."""

    image_id: int
    path: Path
    caption: str

    def load(self) -> Image.Image:
        """The image as RGB."""
        with Image.open(self.path) as img:
            return img.convert("RGB")


@dataclass
class CocoCaptions:
    """Image paths and their captions, in the file's image order."""

    images: dict[int, Path]
    captions: dict[int, list[str]]

    def __len__(self) -> int:
        return len(self.captions)

    def sample(self, n: int, seed: int = 0) -> list[CaptionedImage]:
        """``n`` distinct images (all when ``n <= 0`` or beyond the set), one random caption each,
        chosen reproducibly from ``seed`` (as the paper samples 30,000 val captions)."""
        rng = random.Random(seed)
        ids = sorted(self.captions)
        if 0 < n < len(ids):
            ids = sorted(rng.sample(ids, n))
        return [CaptionedImage(i, self.images[i], rng.choice(self.captions[i])) for i in ids]


def load_coco_captions(
    annotations: str | Path, image_dir: str | Path | None = None
) -> CocoCaptions:
    """Read a COCO captions file; ``image_dir`` defaults to ``images/`` beside it.

    Raises ``FileNotFoundError`` / ``ValueError`` naming the file on a missing file or folder,
    malformed JSON, missing keys, or a caption whose image is unknown.
    """
    annotations = Path(annotations)
    if not annotations.is_file():
        raise FileNotFoundError(
            f"COCO captions file {annotations} not found (run the prepare stage, or point "
            "evaluate.captions at e.g. annotations/captions_val2014.json)"
        )
    image_dir = Path(image_dir) if image_dir is not None else annotations.parent / "images"
    if not image_dir.is_dir():
        raise FileNotFoundError(f"COCO image folder {image_dir} not found")
    try:
        doc = json.loads(annotations.read_text("utf-8"))
        images = {int(im["id"]): image_dir / str(im["file_name"]) for im in doc["images"]}
        captions: dict[int, list[str]] = {}
        for ann in doc["annotations"]:
            image_id = int(ann["image_id"])
            if image_id not in images:
                raise ValueError(f"annotation {ann.get('id')} refers to unknown image {image_id}")
            captions.setdefault(image_id, []).append(str(ann["caption"]).strip())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{annotations} is not valid JSON: {exc}") from None
    except (KeyError, TypeError) as exc:
        raise ValueError(
            f"{annotations} is not a COCO captions file (missing {exc}); expected 'images' with "
            "'id'/'file_name' and 'annotations' with 'image_id'/'caption'"
        ) from None
    return CocoCaptions(images=images, captions=dict(sorted(captions.items())))
