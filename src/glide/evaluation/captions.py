"""Caption accuracy with the built-in ``shapes`` oracle.

An image is accurate when :func:`glide.data.oracle.matches` holds for its caption, judged at the
base resolution (64x64, :func:`glide.data.shapes.to_base_resolution`). Accuracy is reported over
all captions and over *single-object* captions (one object phrase, count one, no relation), the
case the tiny default model is expected to get right.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from glide.data.oracle import check, parse_background, parse_caption, parse_image
from glide.data.shapes import to_base_resolution

__all__ = ["CaptionAccuracy", "caption_accuracy", "is_builtin_caption", "is_single_object"]


def is_builtin_caption(caption: str) -> bool:
    """Whether the oracle understands ``caption`` (it belongs to the ``shapes`` grammar)."""
    try:
        parse_caption(caption)
    except ValueError:
        return False
    return True


def is_single_object(caption: str) -> bool:
    """One object phrase of count one and no relation (background allowed)."""
    try:
        spec = parse_caption(caption)
    except ValueError:
        return False
    return len(spec.objects) == 1 and spec.objects[0].count == 1 and not spec.relations


@dataclass(frozen=True)
class CaptionAccuracy:
    """Oracle results for a set of images: exact-match accuracies and mean constraint score."""

    accuracy: float
    single_object_accuracy: float | None
    mean_score: float
    n: int
    n_single_object: int

    def as_dict(self) -> dict[str, float]:
        out = {"caption_accuracy": self.accuracy, "oracle_score": self.mean_score}
        if self.single_object_accuracy is not None:
            out["caption_accuracy_single"] = self.single_object_accuracy
        return out


def caption_accuracy(images: Sequence[Image.Image], captions: Sequence[str]) -> CaptionAccuracy:
    """Score each image against its caption (all captions must be in the oracle's grammar)."""
    if len(images) != len(captions) or not captions:
        raise ValueError("need one caption per image and at least one image")
    hits, scores, single_hits = [], [], []
    for img, caption in zip(images, captions, strict=True):
        small = to_base_resolution(img.convert("RGB"))
        results = check(parse_caption(caption), parse_image(small), parse_background(small))
        score = sum(results) / len(results) if results else 1.0
        hits.append(score == 1.0)
        scores.append(score)
        if is_single_object(caption):
            single_hits.append(score == 1.0)
    return CaptionAccuracy(
        accuracy=sum(hits) / len(hits),
        single_object_accuracy=sum(single_hits) / len(single_hits) if single_hits else None,
        mean_score=sum(scores) / len(scores),
        n=len(hits),
        n_single_object=len(single_hits),
    )
