"""An oracle for the ``shapes`` world: parse an image back into objects and check a caption.

``parse_image`` estimates the (shaded) background, segments the foreground, labels connected
components, and for each component reads its colour (nearest palette entry to its core pixels), its
shape (best soft-IoU against anti-aliased templates of every shape at the component's area and
centroid, over a few rotations), its size (template radius against the small/large midpoint) and
its grid cell (centroid). ``parse_caption`` inverts :func:`glide.data.shapes.caption_scene`, and
``score`` is the fraction of the caption's constraints the parsed image satisfies, so the same
oracle scores clean renders (a data check) and model samples (an evaluation metric).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import cache

import numpy as np
from PIL import Image

from glide.data.shapes import (
    BACKGROUNDS,
    COLORS,
    MAX_ROTATION,
    SHAPE_SCALE,
    SHAPES,
    SIZE_FRACTION,
    shape_mask,
)

FOREGROUND_DIST = 40.0  # RGB distance from the local background; palette contrast is >= ~90
MIN_AREA_FRACTION = 0.002  # smaller components are noise
_BLOCKS = 8  # background field resolution (blocks per side)
_SIZE_SPLIT = math.sqrt(SIZE_FRACTION["small"] * SIZE_FRACTION["large"])
_ROTATIONS = (-MAX_ROTATION, 0.0, MAX_ROTATION)


@dataclass(frozen=True)
class DetectedObject:
    """One object found in an image; ``cx``/``cy`` are the centroid in [0, 1] image units."""

    shape: str
    color: str
    size: str
    row: int
    col: int
    cx: float = 0.0
    cy: float = 0.0
    area: float = 0.0  # fraction of the image
    fit: float = 0.0  # soft IoU of the best shape template


@dataclass(frozen=True)
class ObjectSpec:
    """An object phrase: ``count`` objects with these attributes (``None``: unconstrained).

    ``exact`` (set for "two"/"three") requires exactly ``count`` matches, otherwise at least.
    """

    shape: str
    color: str
    size: str | None = None
    row: int | None = None
    col: int | None = None
    count: int = 1
    exact: bool = False


@dataclass(frozen=True)
class RelationSpec:
    """``objects[a]`` is ``relation`` (above, below, left of, right of) ``objects[b]``."""

    a: int
    b: int
    relation: str


@dataclass
class CaptionSpec:
    """The constraints of a caption: object phrases, pairwise relations, background."""

    objects: list[ObjectSpec] = field(default_factory=list)
    relations: list[RelationSpec] = field(default_factory=list)
    background: str | None = None

    @property
    def num_constraints(self) -> int:
        return len(self.objects) + len(self.relations) + (self.background is not None)


# ----------------------------------------------------------------------------------------------
# Image parsing


def _as_array(img: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(img, Image.Image):
        img = np.asarray(img.convert("RGB"))
    arr = np.asarray(img)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {arr.shape}")
    return arr.astype(np.float32)


def _border_color(arr: np.ndarray) -> np.ndarray:
    w = max(1, arr.shape[0] // 32)
    border = np.concatenate(
        [
            arr[:w].reshape(-1, 3),
            arr[-w:].reshape(-1, 3),
            arr[:, :w].reshape(-1, 3),
            arr[:, -w:].reshape(-1, 3),
        ]
    )
    return np.median(border, axis=0)


def _background_field(arr: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """Per-pixel background estimate: block medians of background-like pixels, upsampled.

    The renders' backgrounds are shaded by up to ~50 levels, so a single global colour would
    misjudge anti-aliased edges; a coarse field follows the shading closely enough.
    """
    h, w, _ = arr.shape
    ys = np.linspace(0, h, _BLOCKS + 1).astype(int)[:-1]
    xs = np.linspace(0, w, _BLOCKS + 1).astype(int)[:-1]

    def block_means(like: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        weights = like.astype(np.float32)
        sums = np.add.reduceat(np.add.reduceat(arr * weights[..., None], ys, 0), xs, 1)
        counts = np.add.reduceat(np.add.reduceat(weights, ys, 0), xs, 1)
        totals = np.add.reduceat(np.add.reduceat(np.ones_like(weights), ys, 0), xs, 1)
        return sums / np.maximum(counts, 1.0)[..., None], counts > 0.25 * totals

    # Two passes: a lenient one around the border colour, then a tight one around its result,
    # so that anti-aliased object edges barely bias the block means.
    field_, valid = block_means(np.linalg.norm(arr - bg, axis=2) < 80.0)
    if valid.any():
        coarse = _upsample(_fill(field_, valid), h, w)
        field_, valid = block_means(np.linalg.norm(arr - coarse, axis=2) < 25.0)
    if not valid.any():
        return np.broadcast_to(bg, arr.shape)
    return _upsample(_fill(field_, valid), h, w)


def _fill(field_: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Fill blocks covered by objects from their valid neighbours, growing outwards."""
    field_ = field_.copy()
    n = field_.shape[0]
    while not valid.all():
        grown = valid.copy()
        for i, j in zip(*np.nonzero(~valid), strict=True):
            nb = [
                field_[a, b]
                for a in range(max(0, i - 1), min(n, i + 2))
                for b in range(max(0, j - 1), min(n, j + 2))
                if valid[a, b]
            ]
            if nb:
                field_[i, j] = np.mean(nb, axis=0)
                grown[i, j] = True
        valid = grown
    return field_


def _upsample(field_: np.ndarray, h: int, w: int) -> np.ndarray:
    up = [
        np.asarray(Image.fromarray(field_[..., c], "F").resize((w, h), Image.Resampling.BILINEAR))
        for c in range(3)
    ]
    return np.stack(up, axis=2)


def _shift(a: np.ndarray, dy: int, dx: int, fill: float | bool) -> np.ndarray:
    out = np.full_like(a, fill)
    h, w = a.shape
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = a[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected component labels (0 = background), by union-find over row runs."""
    h, _ = mask.shape
    padded = np.zeros((h, mask.shape[1] + 2), np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    runs: list[tuple[int, int, int]] = []
    parent: list[int] = []

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    prev: list[int] = []
    for y in range(h):
        starts = np.flatnonzero(edges[y] == 1)
        ends = np.flatnonzero(edges[y] == -1)
        cur = []
        for x0, x1 in zip(starts.tolist(), ends.tolist(), strict=True):
            idx = len(runs)
            runs.append((y, x0, x1))
            parent.append(idx)
            for p in prev:
                _, p0, p1 = runs[p]
                if p0 < x1 and x0 < p1:
                    ra, rb = find(idx), find(p)
                    if ra != rb:
                        parent[max(ra, rb)] = min(ra, rb)
            cur.append(idx)
        prev = cur
    labels = np.zeros(mask.shape, np.int32)
    roots: dict[int, int] = {}
    for idx, (y, x0, x1) in enumerate(runs):
        labels[y, x0:x1] = roots.setdefault(find(idx), len(roots) + 1)
    return labels, len(roots)


def _dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            out |= _shift(mask, dy, dx, False)
    return out


@cache
def _unit_area(shape: str) -> float:
    """Area of ``shape`` at radius 1 (in its own radius convention, see ``shape_mask``)."""
    r = 200.0
    m = shape_mask(shape, r, (256.0, 256.0), (0, 0, 512, 512))
    return float(np.asarray(m, np.float64).sum() / 255.0) / r**2


def _classify_shape(alpha: np.ndarray, area: float, cx: float, cy: float) -> tuple[str, float]:
    """Best-fitting shape by soft IoU with a template of equal area at the same centroid."""
    h, w = alpha.shape

    def fit(shape: str, rot: float) -> float:
        radius = math.sqrt(area / _unit_area(shape))
        t = np.asarray(shape_mask(shape, radius, (cx, cy), (0, 0, w, h), rot), np.float32) / 255.0
        return float(np.minimum(alpha, t).sum() / max(np.maximum(alpha, t).sum(), 1e-6))

    fits = {s: fit(s, 0.0) for s in SHAPES}
    # Rotations only matter between close candidates; refine the top two.
    for s in sorted(fits, key=fits.get, reverse=True)[:2]:
        if s != "circle":
            fits[s] = max(fits[s], *(fit(s, r) for r in _ROTATIONS if r))
    best = max(fits, key=fits.get)
    return best, fits[best]


def _nearest(color: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    names = list(palette)
    d = np.linalg.norm(np.asarray([palette[n] for n in names], np.float32) - color, axis=1)
    return names[int(np.argmin(d))]


def parse_background(img: Image.Image | np.ndarray) -> str:
    """Name of the background colour (nearest palette entry to the border median)."""
    return _nearest(_border_color(_as_array(img)), BACKGROUNDS)


def foreground_mask(img: Image.Image | np.ndarray) -> np.ndarray:
    """``[H, W]`` bool: pixels the oracle counts as part of an object (off the local background)."""
    arr = _as_array(img)
    bgf = _background_field(arr, _border_color(arr))
    return np.linalg.norm(arr - bgf, axis=2) > FOREGROUND_DIST


def parse_image(img: Image.Image | np.ndarray) -> list[DetectedObject]:
    """Objects in a square ``shapes``-style image (PIL image or HxWx3 uint8), any resolution."""
    arr = _as_array(img)
    h, w, _ = arr.shape
    bg = _border_color(arr)
    bgf = _background_field(arr, bg)
    diff = arr - bgf
    dist = np.linalg.norm(diff, axis=2)
    mask = dist > FOREGROUND_DIST
    labels, n = label_components(mask)
    cell_w, cell_h = w / 3.0, h / 3.0
    min_area = MIN_AREA_FRACTION * h * w
    out = []
    for k in range(1, n + 1):
        comp = labels == k
        if comp.sum() < min_area:
            continue
        ys, xs = np.nonzero(comp)
        y0, y1 = max(0, ys.min() - 3), min(h, ys.max() + 4)
        x0, x1 = max(0, xs.min() - 3), min(w, xs.max() + 4)
        d = dist[y0:y1, x0:x1]
        c = comp[y0:y1, x0:x1]
        core = c & (d >= 0.8 * d[c].max())
        color = np.median(arr[y0:y1, x0:x1][core], axis=0)
        # Soft coverage: project each pixel onto the background->object colour segment, so
        # anti-aliased edges count fractionally (measured colour, robust to colour jitter).
        direction = color - bgf[y0:y1, x0:x1]
        denom = np.maximum((direction**2).sum(axis=2), 1.0)
        alpha = np.clip((diff[y0:y1, x0:x1] * direction).sum(axis=2) / denom, 0.0, 1.0)
        # Keep only this component's neighbourhood so a nearby object does not leak in.
        region = _dilate(_dilate(c)) & ~((labels[y0:y1, x0:x1] > 0) & ~c)
        alpha = np.where(region, alpha, 0.0).astype(np.float32)
        area = float(alpha.sum())
        if area < min_area:
            continue
        ay, ax = np.mgrid[y0:y1, x0:x1]
        cy = float((alpha * (ay + 0.5)).sum() / area)
        cx = float((alpha * (ax + 0.5)).sum() / area)
        shape, fit = _classify_shape(alpha, area, cx - x0, cy - y0)
        radius = math.sqrt(area / _unit_area(shape)) / SHAPE_SCALE[shape]
        size = "small" if radius / min(cell_w, cell_h) < _SIZE_SPLIT else "large"
        out.append(
            DetectedObject(
                shape=shape,
                color=_nearest(color, COLORS),
                size=size,
                row=min(2, int(cy // cell_h)),
                col=min(2, int(cx // cell_w)),
                cx=cx / w,
                cy=cy / h,
                area=area / (h * w),
                fit=fit,
            )
        )
    return out


# ----------------------------------------------------------------------------------------------
# Caption parsing


_SIZE_WORDS = {
    "small": "small",
    "little": "small",
    "tiny": "small",
    "large": "large",
    "big": "large",
}
_COUNTS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3}
_RELATION_WORDS = {
    "above": "above",
    "below": "below",
    "under": "below",
    "to the left of": "left of",
    "left of": "left of",
    "to the right of": "right of",
    "right of": "right of",
}
_ROW_WORDS = {"top": 0, "upper": 0, "middle": 1, "center": 1, "bottom": 2, "lower": 2}
_COL_WORDS = {"left": 0, "center": 1, "middle": 1, "right": 2}
_FRAME_RE = re.compile(r"^(?:an image|a picture|a drawing|a photo|a rendering|a render) of ")
_BG_PREFIX_RE = re.compile(r"^an? ([a-z ]+?) background with (.+)$")
_BG_SUFFIX_RE = re.compile(r"^(.+?) (?:on|against) an? ([a-z ]+?) background$")
_SPLIT_RE = re.compile(r",\s*(?:and\s+)?|\s+and\s+")
_RELATION_RE = re.compile(
    r"^(.+?)\s+(" + "|".join(re.escape(r) for r in _RELATION_WORDS) + r")\s+(.+)$"
)
_OBJECT_RE = re.compile(
    r"^(a|an|one|two|three)\s+(?:(" + "|".join(_SIZE_WORDS) + r")\s+)?([a-z]+)\s+([a-z]+)"
    r"(?:\s+(?:in|at)\s+the\s+([a-z -]+?))?$"
)


def _parse_position(text: str) -> tuple[int, int]:
    words = text.replace("-", " ").split()
    if words and words[-1] == "corner":
        words = words[:-1]
    if len(words) == 1 and words[0] in ("center", "middle"):
        return 1, 1
    if len(words) == 2 and words[0] in _ROW_WORDS and words[1] in _COL_WORDS:
        return _ROW_WORDS[words[0]], _COL_WORDS[words[1]]
    raise ValueError(f"unknown position {text!r}")


def _parse_object(text: str) -> ObjectSpec:
    m = _OBJECT_RE.match(text.strip())
    if not m:
        raise ValueError(f"cannot parse object phrase {text!r}")
    count_word, size_word, color, shape_word, position = m.groups()
    count = _COUNTS[count_word]
    shape = (
        shape_word[:-1] if shape_word.endswith("s") and shape_word[:-1] in SHAPES else shape_word
    )
    if color not in COLORS or shape not in SHAPES:
        raise ValueError(f"unknown colour or shape in {text!r}")
    row, col = _parse_position(position) if position else (None, None)
    return ObjectSpec(
        shape=shape,
        color=color,
        size=_SIZE_WORDS[size_word] if size_word else None,
        row=row,
        col=col,
        count=count,
        exact=count > 1,
    )


def parse_caption(caption: str) -> CaptionSpec:
    """Constraints of a ``shapes`` caption; raises ``ValueError`` if it is outside the grammar."""
    text = " ".join(caption.lower().replace(".", " ").split())
    spec = CaptionSpec()
    m = _BG_PREFIX_RE.match(text)
    if m:
        spec.background, text = m.group(1), m.group(2)
    else:
        m = _BG_SUFFIX_RE.match(text)
        if m:
            text, spec.background = m.group(1), m.group(2)
    if spec.background is not None and spec.background not in BACKGROUNDS:
        raise ValueError(f"unknown background {spec.background!r}")
    text = _FRAME_RE.sub("", text)
    for clause in _SPLIT_RE.split(text):
        rel = _RELATION_RE.match(clause)
        if rel:
            spec.objects.append(_parse_object(rel.group(1)))
            spec.objects.append(_parse_object(rel.group(3)))
            n = len(spec.objects)
            spec.relations.append(RelationSpec(n - 2, n - 1, _RELATION_WORDS[rel.group(2)]))
        else:
            spec.objects.append(_parse_object(clause))
    return spec


# ----------------------------------------------------------------------------------------------
# Scoring


def _matching(spec: ObjectSpec, objects: list[DetectedObject]) -> list[DetectedObject]:
    return [
        o
        for o in objects
        if o.shape == spec.shape
        and o.color == spec.color
        and (spec.size is None or o.size == spec.size)
        and (spec.row is None or o.row == spec.row)
        and (spec.col is None or o.col == spec.col)
    ]


def _related(a: DetectedObject, b: DetectedObject, relation: str) -> bool:
    return {
        "above": a.row < b.row,
        "below": a.row > b.row,
        "left of": a.col < b.col,
        "right of": a.col > b.col,
    }[relation]


def check(spec: CaptionSpec, objects: list[DetectedObject], background: str | None) -> list[bool]:
    """Satisfaction of each constraint of ``spec``: objects, then relations, then background."""
    results = []
    for o in spec.objects:
        n = len(_matching(o, objects))
        results.append(n == o.count if o.exact else n >= o.count)
    for r in spec.relations:
        cand_a = _matching(spec.objects[r.a], objects)
        cand_b = _matching(spec.objects[r.b], objects)
        results.append(
            any(a is not b and _related(a, b, r.relation) for a in cand_a for b in cand_b)
        )
    if spec.background is not None:
        results.append(background == spec.background)
    return results


def score(img: Image.Image | np.ndarray, caption: str) -> float:
    """Fraction of the caption's constraints that ``img`` satisfies, in [0, 1]."""
    spec = parse_caption(caption)
    results = check(spec, parse_image(img), parse_background(img))
    return sum(results) / len(results) if results else 1.0


def matches(img: Image.Image | np.ndarray, caption: str) -> bool:
    """Whether ``img`` satisfies every constraint of ``caption``."""
    return score(img, caption) == 1.0


__all__ = [
    "CaptionSpec",
    "DetectedObject",
    "ObjectSpec",
    "RelationSpec",
    "check",
    "matches",
    "parse_background",
    "parse_caption",
    "parse_image",
    "score",
]
