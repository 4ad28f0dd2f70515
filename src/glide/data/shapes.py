"""``shapes``: a procedural captioned dataset of coloured shapes on a 3x3 grid.

Every example is a pure function of ``(seed, index)``: the scene, its caption and the per-sample
render jitter each come from their own ``np.random.default_rng([seed, index, stream])``, so
examples can be generated in any order, in any process, and the global RNG state is never touched.

The jitter (sub-cell offset, slight rotation, tiny colour variation and a faint low-frequency
background shading) exists so that two indices never yield identical or perceptually identical
pixels; the data stage deduplicates by pixel hash and perceptual hash, and a naturally repeated
scene would otherwise be a false duplicate. It is small enough for :mod:`glide.data.oracle` to
parse every clean render back into its scene.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 60, 220),
    "yellow": (245, 215, 30),
    "purple": (140, 40, 170),
    "orange": (245, 130, 20),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (250, 250, 250),
    "gray": (128, 128, 128),
    "black": (10, 10, 10),
    "light blue": (135, 185, 235),
}
SIZES: tuple[str, ...] = ("small", "large")
ROWS: tuple[str, ...] = ("top", "middle", "bottom")
COLS: tuple[str, ...] = ("left", "center", "right")

BASE_RESOLUTION = 64
# Object "radius" as a fraction of a grid cell; every shape's extent stays within ~1.05 radius, so
# two large objects in adjacent cells keep a gap of >= ~0.1 cell even with maximal jitter.
SIZE_FRACTION: dict[str, float] = {"small": 0.25, "large": 0.40}
# Per-shape scale relative to the size radius, chosen so the shapes look about equally big.
SHAPE_SCALE: dict[str, float] = {
    "circle": 0.92,
    "square": 0.78,
    "triangle": 1.05,
    "star": 1.05,
    "hexagon": 1.0,
}
MAX_OFFSET = 0.025  # sub-cell centre jitter, fraction of a cell
MAX_ROTATION = 3.0  # degrees
COLOR_JITTER = 6  # per channel
SHADING = 40  # background shading amplitude (peak to peak), per channel
TINT = 10  # background tint, per channel
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class ShapeObject:
    """One object of a scene: what it is and which grid cell it occupies."""

    shape: str
    color: str
    size: str
    row: int
    col: int


@dataclass(frozen=True)
class Scene:
    """A background colour and 1-3 objects in distinct grid cells."""

    objects: tuple[ShapeObject, ...]
    background: str


SeedLike = int | Sequence[int]
# The oracle's small/large boundary (radius as a fraction of a cell): geometric mean of the two.
_SMALL_LARGE_SPLIT = math.sqrt(SIZE_FRACTION["small"] * SIZE_FRACTION["large"])


@dataclass(frozen=True)
class World:
    """Which scenes the world draws: the full world by default, or an easier mix.

    Objects per scene are uniform in ``[min_objects, max_objects]``; shapes, colours (never the
    background's), sizes, backgrounds and grid cells (``row * 3 + col``) are drawn uniformly from
    the given subsets. ``object_scale`` draws every object that much bigger (more pixels per
    shape at a low resolution); beyond what keeps sizes apart and objects inside their cells it
    needs ``sizes=[large]`` and single objects in the centre cell, where the oracle still reads
    the scene right (bigger than large is large, the centroid stays in its cell). The default
    draws exactly what the world always drew, so a default ``(seed, index)`` gives the same
    example as before the options existed.
    """

    max_objects: int = 3
    min_objects: int = 1
    shapes: tuple[str, ...] = SHAPES
    colors: tuple[str, ...] = tuple(COLORS)
    sizes: tuple[str, ...] = SIZES
    backgrounds: tuple[str, ...] = tuple(BACKGROUNDS)
    cells: tuple[int, ...] = tuple(range(9))
    object_scale: float = 1.0

    def __post_init__(self) -> None:
        for name, values, known in (
            ("shapes", self.shapes, SHAPES),
            ("colors", self.colors, tuple(COLORS)),
            ("sizes", self.sizes, SIZES),
            ("backgrounds", self.backgrounds, tuple(BACKGROUNDS)),
            ("cells", self.cells, tuple(range(9))),
        ):
            object.__setattr__(self, name, tuple(values))
            unknown = [v for v in values if v not in known]
            if not values or unknown:
                raise ValueError(f"world {name} must be a non-empty subset of {known}: {unknown}")
        if not 1 <= self.min_objects <= self.max_objects <= len(self.cells):
            raise ValueError(
                f"need 1 <= min_objects <= max_objects <= {len(self.cells)} cells, got "
                f"{self.min_objects}..{self.max_objects}"
            )
        for bg in self.backgrounds:
            if all(c == bg for c in self.colors):
                raise ValueError(f"no object colour differs from the {bg} background")
        s = self.object_scale
        # Objects reach ~1.05 radius; a "large" radius is 0.4 cell, a "small" one 0.25.
        if not 0.5 <= s <= 3.5:
            raise ValueError(f"object_scale must be in [0.5, 3.5], got {s}")
        if s * SIZE_FRACTION["small"] >= _SMALL_LARGE_SPLIT and "small" in self.sizes:
            raise ValueError(f"at object_scale {s} small objects look large: use sizes=[large]")
        if s * SIZE_FRACTION["large"] * 1.05 > 0.5 and (self.cells != (4,) or self.max_objects > 1):
            raise ValueError(
                f"at object_scale {s} objects overflow their cell: use one object (max_objects=1) "
                "in the centre cell (cells=[4])"
            )

    @property
    def is_full(self) -> bool:
        return self == World()


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, index, stream])


def sample_scene(
    seed: int, index: int, *, max_objects: int | None = None, world: World | None = None
) -> Scene:
    """Sample the scene of example ``index`` (deterministic in ``(seed, index)``).

    ``world`` restricts what is drawn (default: the full world); ``max_objects`` overrides its
    object count bound.
    """
    world = world or World()
    if max_objects is not None:
        world = World(**{**world.__dict__, "max_objects": max_objects})
    rng = _rng(seed, index, 0)
    background = str(rng.choice(list(world.backgrounds)))
    colors = [c for c in world.colors if c != background]
    n = int(rng.integers(world.min_objects, world.max_objects + 1))
    cells = rng.choice(np.asarray(world.cells), size=n, replace=False)
    # Repeat the first object's shape+colour now and then so count captions ("two blue squares")
    # occur often enough to be learned.
    repeat = n > 1 and rng.random() < 0.3
    objects = []
    for i, cell in enumerate(cells):
        if repeat and i > 0 and rng.random() < 0.8:
            shape, color = objects[0].shape, objects[0].color
        else:
            shape, color = str(rng.choice(world.shapes)), str(rng.choice(colors))
        size = str(rng.choice(world.sizes))
        objects.append(ShapeObject(shape, color, size, int(cell) // 3, int(cell) % 3))
    return Scene(tuple(objects), background)


# ----------------------------------------------------------------------------------------------
# Captions


def position_name(row: int, col: int) -> str:
    """Canonical grid-cell name: "top left", "middle right", "bottom center", "center"."""
    if row == 1 and col == 1:
        return "center"
    return f"{ROWS[row]} {COLS[col]}"


_SIZE_WORDS = {"small": ("small", "small", "little", "tiny"), "large": ("large", "large", "big")}
_COUNT_WORDS = {2: "two", 3: "three"}
_RELATIONS = {
    "above": ("above",),
    "below": ("below", "under"),
    "left of": ("to the left of", "left of"),
    "right of": ("to the right of", "right of"),
}
_FRAMES = ("", "", "an image of ", "a picture of ", "a drawing of ")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _position_phrase(obj: ShapeObject, rng: np.random.Generator) -> str:
    name = position_name(obj.row, obj.col)
    if name == "center":
        name = str(rng.choice(["center", "middle"]))
    elif obj.row != 1 and obj.col != 1 and rng.random() < 0.3:
        name += " corner"
    return f"{rng.choice(['in the', 'at the'])} {name}"


def _object_phrase(
    obj: ShapeObject, rng: np.random.Generator, *, size: bool, position: bool, count: int = 1
) -> str:
    words = []
    if size:
        words.append(str(rng.choice(_SIZE_WORDS[obj.size])))
    words += [obj.color, obj.shape + ("s" if count > 1 else "")]
    head = _COUNT_WORDS[count] if count > 1 else _article(words[0])
    phrase = " ".join([head, *words])
    if position:
        phrase += " " + _position_phrase(obj, rng)
    return phrase


def _join(phrases: list[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _true_relations(a: ShapeObject, b: ShapeObject) -> list[str]:
    rels = []
    if a.row < b.row:
        rels.append("above")
    if a.row > b.row:
        rels.append("below")
    if a.col < b.col:
        rels.append("left of")
    if a.col > b.col:
        rels.append("right of")
    return rels


def caption_scene(scene: Scene, rng: np.random.Generator) -> str:
    """Describe ``scene`` with a randomly chosen template; :func:`oracle.parse_caption` inverts it."""
    objs = list(scene.objects)
    order = rng.permutation(len(objs))
    objs = [objs[i] for i in order]
    groups: dict[tuple[str, str], list[ShapeObject]] = {}
    for o in objs:
        groups.setdefault((o.shape, o.color), []).append(o)

    # Relations need two objects that are unambiguous by shape+colour.
    singles = [g[0] for g in groups.values() if len(g) == 1]
    pairs = [(a, b) for a in singles for b in singles if a is not b and _true_relations(a, b)]
    counted = any(len(g) > 1 for g in groups.values())
    choices = ["list"] + (["count"] * 2 if counted else []) + (["relation"] * 2 if pairs else [])
    template = str(rng.choice(choices))

    if template == "relation":
        a, b = pairs[int(rng.integers(len(pairs)))]
        rel = str(rng.choice(_RELATIONS[str(rng.choice(_true_relations(a, b)))]))
        text = (
            f"{_object_phrase(a, rng, size=rng.random() < 0.5, position=False)} {rel} "
            f"{_object_phrase(b, rng, size=rng.random() < 0.5, position=False)}"
        )
        rest = [o for o in objs if o is not a and o is not b]
        if rest:
            text += " and " + _join(
                [_object_phrase(o, rng, size=rng.random() < 0.5, position=False) for o in rest]
            )
    elif template == "count":
        phrases = []
        for group in groups.values():
            if len(group) > 1:
                phrases.append(
                    _object_phrase(group[0], rng, size=False, position=False, count=len(group))
                )
            else:
                phrases.append(
                    _object_phrase(
                        group[0], rng, size=rng.random() < 0.7, position=rng.random() < 0.5
                    )
                )
        text = _join(phrases)
    else:
        text = _join(
            [
                _object_phrase(o, rng, size=rng.random() < 0.8, position=rng.random() < 0.85)
                for o in objs
            ]
        )

    bg = rng.random()
    if bg < 0.35:
        text = f"{text} on {_article(scene.background)} {scene.background} background"
    elif bg < 0.5:
        text = f"{_article(scene.background)} {scene.background} background with {text}"
    else:
        text = str(rng.choice(_FRAMES)) + text
    return text


def describe_scene(scene: Scene) -> str:
    """One canonical caption naming every object's size, colour, shape and cell, and the
    background: "a large red circle in the top left and a small blue star in the center on a
    black background" (objects in reading order). The oracle parses it like any caption."""
    phrases = []
    for obj in sorted(scene.objects, key=lambda o: (o.row, o.col)):
        words = f"{obj.size} {obj.color} {obj.shape}"
        phrases.append(f"{_article(words)} {words} in the {position_name(obj.row, obj.col)}")
    return f"{_join(phrases)} on {_article(scene.background)} {scene.background} background"


# ----------------------------------------------------------------------------------------------
# Rendering


def _unit_polygon(shape: str) -> list[tuple[float, float]]:
    """Vertices of ``shape`` with circumradius 1, centred on its centroid, y pointing down."""
    if shape == "square":
        return [(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)]  # half-side 1
    if shape == "triangle":
        angles = [-90.0, 30.0, 150.0]
        return [(math.cos(math.radians(a)), math.sin(math.radians(a))) for a in angles]
    if shape == "hexagon":
        angles = [-90.0 + 60.0 * i for i in range(6)]
        return [(math.cos(math.radians(a)), math.sin(math.radians(a))) for a in angles]
    if shape == "star":
        pts = []
        for i in range(10):
            r = 1.0 if i % 2 == 0 else 0.45
            a = math.radians(-90.0 + 36.0 * i)
            pts.append((r * math.cos(a), r * math.sin(a)))
        return pts
    raise ValueError(f"no polygon for shape {shape!r}")


_POLYGONS = {s: _unit_polygon(s) for s in SHAPES if s != "circle"}


def shape_mask(
    shape: str,
    radius: float,
    center: tuple[float, float],
    box: tuple[int, int, int, int],
    rotation: float = 0.0,
) -> Image.Image:
    """Anti-aliased coverage mask (mode L) of one shape inside pixel ``box`` (x0, y0, x1, y1).

    ``radius`` is the shape's own scale in pixels (circle radius, square half-side, polygon
    circumradius); ``center`` is in image pixel coordinates. Drawn at 4x and box-averaged down.
    """
    x0, y0, x1, y1 = box
    f = _SUPERSAMPLE
    big = Image.new("L", ((x1 - x0) * f, (y1 - y0) * f), 0)
    draw = ImageDraw.Draw(big)
    cx, cy = (center[0] - x0) * f, (center[1] - y0) * f
    r = radius * f
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    else:
        c, s = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
        pts = [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in _POLYGONS[shape]]
        draw.polygon(pts, fill=255)
    return big.reduce(f)


def _jitter(rng: np.random.Generator | None, n: int) -> list[tuple[float, float, float, tuple]]:
    out = []
    for _ in range(n):
        if rng is None:
            out.append((0.0, 0.0, 0.0, (0, 0, 0)))
            continue
        dx, dy = rng.uniform(-MAX_OFFSET, MAX_OFFSET, size=2)
        rot = rng.uniform(-MAX_ROTATION, MAX_ROTATION)
        dc = tuple(int(v) for v in rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, size=3))
        out.append((float(dx), float(dy), float(rot), dc))
    return out


def _background(name: str, size: int, rng: np.random.Generator | None) -> Image.Image:
    base = BACKGROUNDS[name]
    if rng is None:
        return Image.new("RGB", (size, size), base)
    # Low-frequency shading (a 4x4 grid upsampled bicubically) plus a slight global tint. They
    # make repeats of one scene differ in perceptual hash and colour thumbnail, which the dedup
    # stage compares; white/black are only shaded inwards so they are never clipped flat.
    grid = Image.fromarray(rng.integers(0, 256, size=(4, 4), dtype=np.uint8), "L")
    # Shade a small field with numpy, then upsample it in C: the field is smooth, and this is
    # several times faster than computing at full resolution.
    low = min(size, 32)
    t = np.asarray(grid.resize((low, low), Image.Resampling.BICUBIC), np.float32)[..., None]
    t *= SHADING / 255.0
    tint = rng.uniform(-TINT, TINT, size=3).astype(np.float32)
    if name == "white":
        delta = -t - np.abs(tint)
    elif name == "black":
        delta = t + np.abs(tint)
    else:
        delta = t - SHADING / 2 + tint
    arr = np.clip(np.asarray(base, np.float32) + delta + 0.5, 0, 255).astype(np.uint8)
    field_ = Image.fromarray(arr, "RGB")
    return field_ if low == size else field_.resize((size, size), Image.Resampling.BILINEAR)


def render_scene(
    scene: Scene,
    size: int = 256,
    *,
    jitter_seed: SeedLike | None = None,
    object_scale: float = 1.0,
) -> Image.Image:
    """Render ``scene`` anti-aliased as a ``size`` x ``size`` RGB image.

    Without ``jitter_seed`` the render is canonical (no jitter); with one, the jitter is drawn
    from ``np.random.default_rng(jitter_seed)``. ``object_scale`` enlarges every object (see
    :class:`World`).
    """
    rng = None if jitter_seed is None else np.random.default_rng(jitter_seed)
    jit = _jitter(rng, len(scene.objects))
    img = _background(scene.background, size, rng)
    cell = size / 3.0
    for obj, (dx, dy, rot, dc) in zip(scene.objects, jit, strict=True):
        cx = (obj.col + 0.5 + dx) * cell
        cy = (obj.row + 0.5 + dy) * cell
        radius = SIZE_FRACTION[obj.size] * cell * SHAPE_SCALE[obj.shape] * object_scale
        ext = radius * 1.5 + 2  # square corners reach sqrt(2) * half-side
        box = (
            max(0, math.floor(cx - ext)),
            max(0, math.floor(cy - ext)),
            min(size, math.ceil(cx + ext)),
            min(size, math.ceil(cy + ext)),
        )
        mask = shape_mask(obj.shape, radius, (cx, cy), box, rot)
        color = tuple(min(255, max(0, c + d)) for c, d in zip(COLORS[obj.color], dc, strict=True))
        img.paste(color, box, mask)
    return img


def to_base_resolution(img: Image.Image, size: int = BASE_RESOLUTION) -> Image.Image:
    """Downsample to the base model's resolution exactly as the data stage does (PIL bicubic)."""
    if img.size == (size, size):
        return img
    return img.resize((size, size), Image.Resampling.BICUBIC)


def make_example(
    seed: int,
    index: int,
    *,
    size: int = 256,
    max_objects: int | None = None,
    world: World | None = None,
) -> tuple[Image.Image, str, Scene]:
    """Example ``index`` of the ``shapes`` dataset: (jittered render, caption, scene)."""
    world = world or World()
    scene = sample_scene(seed, index, max_objects=max_objects, world=world)
    caption = caption_scene(scene, _rng(seed, index, 1))
    img = render_scene(scene, size, jitter_seed=[seed, index, 2], object_scale=world.object_scale)
    return img, caption, scene
