"""Per-record filters of the data stage: decode, normalise, check, and re-encode one record.

Everything here is a pure function of one record and the config, so it runs in worker processes.
Cross-record checks (duplicates) need the stream order and live in :mod:`glide.data.prepare`.
A filter never raises on bad input: it returns the reason the record is dropped.
"""

from __future__ import annotations

import io
import re
import unicodedata
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from glide.data.blocklist import load_blocklist
from glide.data.dedup import phash, pixel_digest, thumbnail
from glide.data.records import RawRecord

_WS = re.compile(r"\s+")
_FORMATS = {"jpg": "JPEG", "png": "PNG"}
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class FilterConfig:
    """Thresholds of the per-record filters and of deduplication."""

    min_side: int = 64
    max_aspect: float = 2.0  # max(w, h) / min(w, h)
    max_pixels: int = 64_000_000  # refuse decompression bombs before decoding
    min_caption_chars: int = 1
    max_caption_chars: int = 512
    blocklist_files: tuple[str, ...] = ()  # empty: the packaged default lists
    extra_blocklist: tuple[str, ...] = ()
    exact_dedup: bool = True
    near_dedup: bool = True
    near_dup_radius: int = 6
    near_dup_max_thumb_diff: float = 4.0
    max_side: int | None = 512  # larger images are downscaled (aspect kept) before encoding
    image_format: str = "jpg"  # "jpg" (fast, default) or "png" (lossless)
    jpeg_quality: int = 95

    def __post_init__(self) -> None:
        if self.image_format not in ("png", "jpg"):
            raise ValueError(f"image_format must be 'png' or 'jpg', got {self.image_format!r}")
        if self.max_aspect < 1:
            raise ValueError(f"max_aspect must be >= 1, got {self.max_aspect}")


@dataclass
class Checked:
    """The outcome for one record: ``reason is None`` means kept (so far: dedup comes later)."""

    key: str
    source: str
    reason: str | None
    defect: str | None
    caption: str = ""
    image_bytes: bytes = b""
    width: int = 0
    height: int = 0
    original_size: tuple[int, int] = (0, 0)
    original_mode: str = ""
    checks: list[str] = field(default_factory=list)
    digest: bytes = b""
    phash: int = 0
    thumb: np.ndarray | None = None
    meta: dict = field(default_factory=dict)


def normalize_caption(text: str | None) -> str:
    """Unicode NFC, every whitespace run collapsed to one space, ends stripped."""
    if text is None:
        return ""
    return _WS.sub(" ", unicodedata.normalize("NFC", text)).strip()


def compile_blocklist(terms: list[str]) -> re.Pattern[str] | None:
    """One case-insensitive, word-boundary regex matching any term (``None`` for no terms)."""
    cleaned = sorted({normalize_caption(t).lower() for t in terms if t.strip()}, key=len)
    if not cleaned:
        return None
    # Longest first so multi-word phrases win over their prefixes; spaces match any whitespace.
    alts = [re.escape(t).replace(r"\ ", r"\s+") for t in reversed(cleaned)]
    return re.compile(r"(?<!\w)(?:" + "|".join(alts) + r")(?!\w)", re.IGNORECASE)


class RecordFilter:
    """Callable applying every per-record check; picklable, so it can be shipped to workers."""

    def __init__(self, cfg: FilterConfig) -> None:
        self.cfg = cfg
        paths = [Path(p) for p in cfg.blocklist_files] or None
        self.blocklist = compile_blocklist([*load_blocklist(paths), *cfg.extra_blocklist])

    def __call__(self, rec: RawRecord) -> Checked:
        try:
            return self._check(rec)
        except Exception as exc:  # a filter must never take the stage down
            out = Checked(key=rec.key, source=rec.source, reason="filter_error", defect=rec.defect)
            out.meta = {"error": f"{type(exc).__name__}: {exc}"}
            return out

    def caption_reason(self, caption: str) -> str | None:
        if len(caption) < max(self.cfg.min_caption_chars, 1):
            return "empty_caption"
        if len(caption) > self.cfg.max_caption_chars:
            return "caption_too_long"
        if self.blocklist is not None and self.blocklist.search(caption):
            return "blocklist"
        return None

    def _check(self, rec: RawRecord) -> Checked:
        cfg = self.cfg
        out = Checked(key=rec.key, source=rec.source, reason=None, defect=rec.defect)
        out.meta = dict(rec.meta)
        if "load_error" in rec.meta:
            out.reason = "missing_file"
            return out
        # Captions first: they are cheap, and a bad one saves a decode.
        out.caption = normalize_caption(rec.caption)
        out.reason = self.caption_reason(out.caption)
        if out.reason:
            return out
        out.checks.append("caption")

        img, out.reason = decode_image(rec.image_bytes, max_pixels=cfg.max_pixels)
        if img is None:
            return out
        out.original_size, out.original_mode = img.size, img.mode
        out.checks.append("decode")
        source_format = img.format
        decoded = img
        if img.getexif().get(_EXIF_ORIENTATION, 1) not in (0, 1):
            img = ImageOps.exif_transpose(img)
        img = to_rgb(img)
        out.checks.append("rgb")
        w, h = img.size
        if min(w, h) < cfg.min_side:
            out.reason = "too_small"
            return out
        if max(w, h) / min(w, h) > cfg.max_aspect:
            out.reason = "bad_aspect"
            return out
        out.checks += ["size", "aspect"]
        out.digest = pixel_digest(img)
        out.phash = phash(img)
        out.thumb = thumbnail(img)
        if cfg.max_side and max(w, h) > cfg.max_side:
            scale = cfg.max_side / max(w, h)
            img = img.resize((round(w * scale), round(h * scale)), Image.Resampling.LANCZOS)
        out.width, out.height = img.size
        if img is decoded and source_format == _FORMATS[cfg.image_format]:
            # Already an RGB file of the target format, unrotated and unresized: keep its bytes,
            # which saves an encode and, for JPEG, a second generation of compression loss.
            out.image_bytes = rec.image_bytes
        else:
            out.image_bytes = encode_image(img, cfg.image_format, cfg.jpeg_quality)
        return out


def decode_image(data: bytes, *, max_pixels: int) -> tuple[Image.Image | None, str | None]:
    """Fully decode ``data`` (not only the header): ``(image, None)`` or ``(None, reason)``."""
    try:
        img = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, ValueError, TypeError):
        return None, "not_image"
    except Exception:  # damaged headers of an otherwise recognised format
        return None, "corrupt_image"
    if img.width * img.height > max_pixels:
        return None, "too_large"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns on odd EXIF; the decode result decides
            img.load()
    except Exception:  # truncated streams raise OSError, broken ones SyntaxError/ValueError
        return None, "corrupt_image"
    return img, None


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; transparency is composited onto white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")


def encode_image(img: Image.Image, fmt: str, quality: int = 95) -> bytes:
    """Deterministic encoding: no metadata, fixed settings, so equal pixels give equal bytes."""
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG", compress_level=6)
    else:
        img.save(buf, format="JPEG", quality=quality, subsampling=0 if quality >= 90 else 2)
    return buf.getvalue()
