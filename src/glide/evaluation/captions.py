"""Caption accuracy with the built-in ``shapes`` oracle, overall and per attribute.

An image is accurate when every constraint its caption names holds (:func:`glide.data.oracle.check`),
judged at the base resolution (64x64, :func:`glide.data.shapes.to_base_resolution`). Accuracy is
reported over all captions and over *single-object* captions (one object phrase, count one, no
relation), the case the tiny default model is expected to get right. For single-object captions
each attribute is also scored on its own:

- ``color``, ``shape``: of the detected object that best matches the caption (most named
  attributes right, then largest);
- ``size``, ``position``: the same object, over the captions that name them;
- ``background``: the caption's background where it names one, else the world's background when
  the world has only one (``world_background``), else not scored.

Every accuracy comes with a 95% Wilson score interval, so a reader sees how far one image moves it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image

from glide.data.oracle import (
    CaptionSpec,
    DetectedObject,
    check,
    parse_background,
    parse_caption,
    parse_image,
)
from glide.data.shapes import to_base_resolution

__all__ = [
    "ATTRIBUTES",
    "CaptionAccuracy",
    "Verdict",
    "accuracy_from_verdicts",
    "caption_accuracy",
    "is_builtin_caption",
    "is_single_object",
    "judge",
    "wilson_interval",
]

ATTRIBUTES = ("color", "shape", "size", "position", "background")


def is_builtin_caption(caption: str) -> bool:
    """Whether the oracle understands ``caption`` (it belongs to the ``shapes`` grammar)."""
    try:
        parse_caption(caption)
    except ValueError:
        return False
    return True


def _single(spec: CaptionSpec) -> bool:
    return len(spec.objects) == 1 and spec.objects[0].count == 1 and not spec.relations


def is_single_object(caption: str) -> bool:
    """One object phrase of count one and no relation (background allowed)."""
    try:
        spec = parse_caption(caption)
    except ValueError:
        return False
    return _single(spec)


def wilson_interval(hits: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion ``hits / n`` (``(0, 1)`` when ``n == 0``)."""
    if n <= 0:
        return 0.0, 1.0
    p = hits / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    return (0.0 if hits == 0 else lo), (1.0 if hits == n else hi)  # exact at the ends


@dataclass(frozen=True)
class Verdict:
    """The oracle's judgement of one image against its caption.

    ``attributes`` (single-object captions only) maps each scored attribute to whether it is
    right; ``failed`` names the first attribute (single-object) or constraint that failed
    (``None``: the caption is matched).
    """

    matched: bool
    score: float  # fraction of the caption's constraints met
    single: bool
    attributes: dict[str, bool] = field(default_factory=dict)
    failed: str | None = None

    @property
    def label(self) -> str:
        """Short text for a grid tile: ``ok`` or ``x <what failed>``."""
        return "ok" if self.failed is None else f"x {self.failed}"


def _object_attributes(spec: CaptionSpec, obj: DetectedObject | None) -> dict[str, bool]:
    o = spec.objects[0]
    named = {
        "color": True,
        "shape": True,
        "size": o.size is not None,
        "position": o.row is not None,
    }
    if obj is None:
        return {k: False for k, on in named.items() if on}
    right = {
        "color": obj.color == o.color,
        "shape": obj.shape == o.shape,
        "size": obj.size == o.size,
        "position": (obj.row, obj.col) == (o.row, o.col),
    }
    return {k: right[k] for k, on in named.items() if on}


def _primary(spec: CaptionSpec, objects: list[DetectedObject]) -> DetectedObject | None:
    """The detected object that matches the most named attributes (then the largest)."""
    if not objects:
        return None
    return max(objects, key=lambda d: (sum(_object_attributes(spec, d).values()), d.area))


def judge(image: Image.Image, caption: str, *, world_background: str | None = None) -> Verdict:
    """Score ``image`` against ``caption`` (which must be in the ``shapes`` grammar)."""
    small = to_base_resolution(image.convert("RGB"))
    spec = parse_caption(caption)
    objects, background = parse_image(small), parse_background(small)
    results = check(spec, objects, background)
    score = sum(results) / len(results) if results else 1.0
    matched = all(results)
    if not _single(spec):
        names = [f"object {i + 1}" for i in range(len(spec.objects))]
        names += [r.relation for r in spec.relations]
        names += ["background"] if spec.background is not None else []
        failed = next((n for n, ok in zip(names, results, strict=True) if not ok), None)
        return Verdict(matched, score, False, {}, failed)
    attrs = _object_attributes(spec, _primary(spec, objects))
    wanted_bg = spec.background or world_background
    if wanted_bg is not None:
        attrs["background"] = background == wanted_bg
    failed = next((a for a in ATTRIBUTES if not attrs.get(a, True)), None)
    if failed is None and not matched:  # e.g. the right object, but a second copy of it
        failed = "count"
    return Verdict(matched, score, True, attrs, failed)


@dataclass(frozen=True)
class CaptionAccuracy:
    """Oracle results for a set of images: exact-match accuracies, per-attribute accuracies on
    single-object captions, mean constraint score, and each image's verdict."""

    accuracy: float
    single_object_accuracy: float | None
    mean_score: float
    n: int
    n_single_object: int
    verdicts: tuple[Verdict, ...] = ()

    def attribute_counts(self) -> dict[str, tuple[int, int]]:
        """``{attribute: (right, scored)}`` over single-object captions."""
        counts: dict[str, tuple[int, int]] = {}
        for v in self.verdicts:
            for name, ok in v.attributes.items():
                hits, n = counts.get(name, (0, 0))
                counts[name] = (hits + ok, n + 1)
        return {a: counts[a] for a in ATTRIBUTES if a in counts}

    def attributes_single(self) -> dict[str, float]:
        """Accuracy of each attribute over the single-object captions that score it."""
        return {a: hits / n for a, (hits, n) in self.attribute_counts().items()}

    def as_dict(self) -> dict[str, object]:
        """Metrics for ``metrics/evaluate.json``: accuracies, their ``*_ci95`` intervals and
        ``attributes_single`` (with ``attributes_single_ci95``) when there are single-object
        captions."""
        hits = round(self.accuracy * self.n)
        out: dict[str, object] = {
            "caption_accuracy": self.accuracy,
            "caption_accuracy_ci95": list(wilson_interval(hits, self.n)),
            "oracle_score": self.mean_score,
        }
        if self.single_object_accuracy is not None:
            single_hits = round(self.single_object_accuracy * self.n_single_object)
            out["caption_accuracy_single"] = self.single_object_accuracy
            out["caption_accuracy_single_ci95"] = list(
                wilson_interval(single_hits, self.n_single_object)
            )
            counts = self.attribute_counts()
            out["attributes_single"] = {a: h / n for a, (h, n) in counts.items()}
            out["attributes_single_ci95"] = {
                a: list(wilson_interval(h, n)) for a, (h, n) in counts.items()
            }
        return out


def caption_accuracy(
    images: Sequence[Image.Image],
    captions: Sequence[str],
    *,
    world_background: str | None = None,
) -> CaptionAccuracy:
    """Score each image against its caption (all captions must be in the oracle's grammar)."""
    if len(images) != len(captions) or not captions:
        raise ValueError("need one caption per image and at least one image")
    verdicts = tuple(
        judge(img, caption, world_background=world_background)
        for img, caption in zip(images, captions, strict=True)
    )
    return accuracy_from_verdicts(verdicts)


def accuracy_from_verdicts(verdicts: Sequence[Verdict]) -> CaptionAccuracy:
    """Aggregate per-image verdicts (e.g. gathered from several processes, in caption order)."""
    if not verdicts:
        raise ValueError("need at least one verdict")
    verdicts = tuple(verdicts)
    single = [v for v in verdicts if v.single]
    return CaptionAccuracy(
        accuracy=sum(v.matched for v in verdicts) / len(verdicts),
        single_object_accuracy=sum(v.matched for v in single) / len(single) if single else None,
        mean_score=sum(v.score for v in verdicts) / len(verdicts),
        n=len(verdicts),
        n_single_object=len(single),
        verdicts=verdicts,
    )
