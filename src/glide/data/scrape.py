"""Raw-scrape mode of the ``shapes`` world: records as a web crawl would return them.

Each record is a pure function of ``(cfg.seed, index)``. Most are clean; a ``defect_fraction`` carry
exactly one drop defect (:data:`DROP_KINDS`: broken bytes, tiny or extreme-aspect images, bad
captions, duplicates) and a ``convert_fraction`` one convert kind (:data:`CONVERT_KINDS`: unusual
modes, EXIF rotation) that filters must repair and keep. ``record.defect`` is the ground truth, so
the filter stage's per-kind precision and recall can be measured directly.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from glide.data.blocklist import DEFAULT_BLOCKLIST_DIR, load_blocklist
from glide.data.records import CONVERT_KINDS, DROP_KINDS, RawRecord
from glide.data.shapes import World, caption_scene, make_example, sample_scene

SOURCE = "shapes"
_DUPLICATE_KINDS = ("exact_duplicate", "near_duplicate")
# Stream ids of np.random.default_rng([seed, index, stream]); 0-2 are used by shapes.py.
_KIND_STREAM = 3
_DEFECT_STREAM = 4
_EXT = {"jpeg": ".jpg", "png": ".png"}
# How exif_transpose undoes each EXIF orientation, inverted: what we apply to the stored pixels.
_STORE_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}
_NOT_IMAGE_BODIES = (
    b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>"
    b"<h1>Not Found</h1><p>The requested URL %s was not found on this server.</p></body></html>\n",
    b"<html><head><meta http-equiv='refresh' content='0; url=/login'></head>"
    b"<body>Redirecting to %s ...</body></html>\n",
    b"Access denied: hotlinking of %s is not permitted.\n",
    b'{"error": "rate limited", "resource": "%s"}\n',
)
_BLOCKLIST_TEMPLATES = (
    "{caption} next to a {term}",
    "{term}: {caption}",
    "{caption}, with a {term} in the corner",
    "a {term} and {caption}",
)
_WHITESPACE_CAPTIONS = ("", " ", "  \t\n", "\n", "\t \t")

__all__ = [
    "DEFAULT_BLOCKLIST_DIR",
    "ScrapeConfig",
    "draw_kind",
    "find_original",
    "load_blocklist",
    "make_raw_record",
]


def _default_terms() -> tuple[str, ...]:
    return tuple(load_blocklist())


@dataclass(kw_only=True)
class ScrapeConfig:
    """Settings of the synthetic scrape.

    ``defect_weights`` maps kind names to relative weights: drop kinds are drawn by them within
    ``defect_fraction`` and convert kinds within ``convert_fraction``; a group none of whose kinds
    is named is uniform, a kind left out of a named group is never drawn. ``None``: uniform.
    """

    seed: int = 0
    num_records: int = 1000
    defect_fraction: float = 0.2
    convert_fraction: float = 0.1
    image_size: int = 256
    image_format: str = "jpeg"
    jpeg_quality: int = 90
    blocklist_terms: tuple[str, ...] = field(default_factory=_default_terms)
    defect_weights: dict[str, float] | None = None
    world: World = field(default_factory=World)  # which scenes (default: the full world)
    duplicate_window: int = 32

    def __post_init__(self) -> None:
        if min(self.defect_fraction, self.convert_fraction) < 0:
            raise ValueError("defect_fraction and convert_fraction must be >= 0")
        if self.defect_fraction + self.convert_fraction > 1:
            raise ValueError("defect_fraction + convert_fraction must be <= 1")
        if self.image_format not in _EXT:
            raise ValueError(
                f"image_format must be one of {sorted(_EXT)}, got {self.image_format!r}"
            )
        unknown = set(self.defect_weights or {}) - set(DROP_KINDS) - set(CONVERT_KINDS)
        if unknown:
            raise ValueError(f"unknown defect kinds in defect_weights: {sorted(unknown)}")
        self.blocklist_terms = tuple(self.blocklist_terms)
        if isinstance(self.world, Mapping):  # from a Hydra config section
            self.world = World(**self.world)


def _group_probs(cfg: ScrapeConfig, kinds: tuple[str, ...]) -> np.ndarray:
    weights = cfg.defect_weights or {}
    if not any(k in weights for k in kinds):
        return np.full(len(kinds), 1.0 / len(kinds))
    w = np.asarray([max(0.0, float(weights.get(k, 0.0))) for k in kinds])
    if w.sum() <= 0:
        raise ValueError(f"defect_weights give zero total weight to {kinds}")
    return w / w.sum()


def draw_kind(cfg: ScrapeConfig, index: int) -> str | None:
    """The ground-truth kind drawn for ``index`` (``None``: clean), before duplicate fallback."""
    rng = np.random.default_rng([cfg.seed, index, _KIND_STREAM])
    u = rng.random()
    if u < cfg.defect_fraction:
        return str(rng.choice(DROP_KINDS, p=_group_probs(cfg, DROP_KINDS)))
    if u < cfg.defect_fraction + cfg.convert_fraction:
        return str(rng.choice(CONVERT_KINDS, p=_group_probs(cfg, CONVERT_KINDS)))
    return None


def find_original(cfg: ScrapeConfig, index: int) -> int | None:
    """Nearest earlier index drawn clean within ``duplicate_window``, the source of a duplicate."""
    for j in range(index - 1, max(-1, index - 1 - cfg.duplicate_window), -1):
        if draw_kind(cfg, j) is None:
            return j
    return None


def _key(index: int) -> str:
    return f"{SOURCE}-{index:08d}"


def _encode(img: Image.Image, fmt: str, quality: int, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG", compress_level=1, **kwargs)
    else:
        img.save(buf, format="JPEG", quality=quality, **kwargs)
    return buf.getvalue()


def _long_caption(
    seed: int, index: int, caption: str, rng: np.random.Generator, world: World
) -> str:
    # Paraphrases of the same scene: long but otherwise clean (no blocklisted words).
    scene = sample_scene(seed, index, world=world)
    target = int(rng.integers(1001, 2500))
    parts = [caption]
    while len(". ".join(parts)) <= target:
        parts.append(caption_scene(scene, rng))
    return ". ".join(parts)


def make_raw_record(cfg: ScrapeConfig, index: int) -> RawRecord:
    """Record ``index`` of the scrape (deterministic in ``(cfg, index)``)."""
    kind = draw_kind(cfg, index)
    original = None
    if kind in _DUPLICATE_KINDS:
        original = find_original(cfg, index)
        if original is None:
            kind = None
    if kind == "blocklist" and not cfg.blocklist_terms:
        kind = None
    key = _key(index)
    rng = np.random.default_rng([cfg.seed, index, _DEFECT_STREAM])
    meta: dict[str, object] = {"index": index}
    fmt, ext = cfg.image_format, _EXT[cfg.image_format]

    if original is not None:
        orig = make_raw_record(cfg, original)
        meta["duplicate_of"] = orig.key
        caption = orig.caption
        if rng.random() < 0.5:
            scene = sample_scene(cfg.seed, original, world=cfg.world)
            caption = caption_scene(scene, rng)
        if kind == "exact_duplicate":
            return RawRecord(key, orig.image_bytes, caption, SOURCE, orig.ext, meta, kind)
        img = Image.open(io.BytesIO(orig.image_bytes)).convert("RGB")
        if rng.random() < 0.7:
            scale = rng.uniform(0.92, 0.98)
            img = img.resize(
                (round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS
            )
            meta["scale"] = round(float(scale), 4)
        quality = int(rng.integers(60, 86))
        meta["quality"] = quality
        data = _encode(img, "jpeg", quality)
        return RawRecord(key, data, caption, SOURCE, ".jpg", meta, kind)

    img, caption, _ = make_example(cfg.seed, index, size=cfg.image_size, world=cfg.world)

    if kind is None:
        data = _encode(img, fmt, cfg.jpeg_quality)
    elif kind == "corrupt_image":
        full = _encode(img, fmt, cfg.jpeg_quality)
        # Cut well into the entropy-coded data: PIL's lazy open still succeeds on the header,
        # only the full decode fails.
        frac = rng.uniform(0.2, 0.6)
        data = full[: int(len(full) * frac)]
        meta["truncated_from"] = len(full)
    elif kind == "not_image":
        body = _NOT_IMAGE_BODIES[int(rng.integers(len(_NOT_IMAGE_BODIES)))]
        data = body % f"/images/{key}.jpg".encode()
        ext = ".jpg"
    elif kind == "too_small":
        side = int(rng.integers(16, 41))
        other = int(np.clip(side + rng.integers(-4, 5), 12, 48))
        data = _encode(img.resize((side, other), Image.Resampling.LANCZOS), fmt, cfg.jpeg_quality)
    elif kind == "bad_aspect":
        # The short side stays >= 80 so only the aspect (>= 3:1) is wrong, not the size.
        short = int(rng.integers(80, 129))
        long = int(short * rng.uniform(3.0, 5.0))
        shape = (long, short) if rng.random() < 0.5 else (short, long)
        data = _encode(img.resize(shape, Image.Resampling.BILINEAR), fmt, cfg.jpeg_quality)
    elif kind == "empty_caption":
        data = _encode(img, fmt, cfg.jpeg_quality)
        caption = _WHITESPACE_CAPTIONS[int(rng.integers(len(_WHITESPACE_CAPTIONS)))]
    elif kind == "caption_too_long":
        data = _encode(img, fmt, cfg.jpeg_quality)
        caption = _long_caption(cfg.seed, index, caption, rng, cfg.world)
    elif kind == "blocklist":
        data = _encode(img, fmt, cfg.jpeg_quality)
        term = cfg.blocklist_terms[int(rng.integers(len(cfg.blocklist_terms)))]
        template = _BLOCKLIST_TEMPLATES[int(rng.integers(len(_BLOCKLIST_TEMPLATES)))]
        caption = template.format(caption=caption, term=term)
        meta["term"] = term
    elif kind == "mode_CMYK":
        data, ext = _encode(img.convert("CMYK"), "jpeg", cfg.jpeg_quality), ".jpg"
    elif kind == "exif_rotated":
        orientation = int(rng.choice(list(_STORE_TRANSPOSE)))
        exif = Image.Exif()
        exif[0x0112] = orientation
        stored = img.transpose(_STORE_TRANSPOSE[orientation])
        data = _encode(stored, "jpeg", cfg.jpeg_quality, exif=exif.tobytes())
        ext = ".jpg"
        meta["orientation"] = orientation
    else:
        data, ext = _encode(_convert(img, kind), "png", cfg.jpeg_quality), ".png"
    return RawRecord(key, data, caption, SOURCE, ext, meta, kind)


def _convert(img: Image.Image, kind: str) -> Image.Image:
    """The render in the PNG-stored mode of convert kind ``kind`` (fully opaque alpha)."""
    if kind == "mode_L":
        return img.convert("L")
    if kind == "mode_LA":
        return img.convert("LA")
    if kind == "mode_RGBA":
        return img.convert("RGBA")
    if kind == "mode_P":
        return img.quantize(256)
    if kind == "mode_I16":
        gray = np.asarray(img.convert("L"), np.uint16) * 257  # full 16-bit range
        return Image.fromarray(gray)
    raise ValueError(f"unknown convert kind {kind!r}")
