"""Finished evaluation images on disk, so a killed evaluation resumes where it stopped.

Each sweep point keeps its images under ``<cache_dir>/<point>/<key>/``: ``NNNNNN.png`` per
caption index (``NNNNNN_up.png`` for an upsampled grid image) and one ``chunk-NNNNN.json``
marker per finished chunk, written after its images (each file atomically), so a chunk counts as
done only when all of it is on disk. ``key`` hashes everything that determines the images (model
digests, samplers, scales, seed, sizes, batch size, captions, device, precision): a run with any
of them changed gets a fresh folder, and the folders of older keys of the same point are removed,
so images of two configurations are never mixed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from glide.io import atomic_path, atomic_write_text

__all__ = ["PointCache"]


class PointCache:
    """The images of one sweep point under one configuration key."""

    def __init__(self, root: str | Path, point: str, key: str) -> None:
        self.point_dir = Path(root) / point.replace("+", "p").replace("/", "_")
        self.dir = self.point_dir / key

    def prune_other_keys(self) -> list[Path]:
        """Remove this point's folders of other configuration keys; returns what was removed."""
        removed = []
        if self.point_dir.is_dir():
            for other in self.point_dir.iterdir():
                if other.is_dir() and other != self.dir:
                    shutil.rmtree(other, ignore_errors=True)
                    removed.append(other)
        return removed

    def _marker(self, chunk: int) -> Path:
        return self.dir / f"chunk-{chunk:05d}.json"

    def image_path(self, index: int, kind: str = "") -> Path:
        return self.dir / (f"{index:06d}_{kind}.png" if kind else f"{index:06d}.png")

    def done(self, chunk: int) -> bool:
        return self._marker(chunk).is_file()

    def seconds(self, chunk: int) -> float:
        """Generation time recorded for a finished chunk."""
        return float(json.loads(self._marker(chunk).read_text())["seconds"])

    def save_chunk(
        self,
        chunk: int,
        indices: Sequence[int],
        images: Mapping[str, Tensor],
        *,
        seconds: float,
    ) -> None:
        """Write uint8 images [k, 3, H, W] per kind (``""``: the point's images, ``"up"``: grid
        upsamples of the first rows), then the chunk's marker."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for kind, batch in images.items():
            for index, image in zip(indices, batch, strict=False):
                with atomic_path(self.image_path(index, kind)) as tmp:
                    Image.fromarray(image.permute(1, 2, 0).numpy(), "RGB").save(tmp, format="PNG")
        atomic_write_text(
            self._marker(chunk),
            json.dumps({"seconds": seconds, "images": len(indices)}) + "\n",
        )

    def load(self, indices: Iterable[int], kind: str = "") -> Tensor:
        """uint8 images [k, 3, H, W] of ``indices``."""
        arrays = []
        for index in indices:
            with Image.open(self.image_path(index, kind)) as img:
                arrays.append(np.asarray(img.convert("RGB")))
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
