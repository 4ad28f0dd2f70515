"""Record types shared by every data source, the filters and the shard writer.

A source yields cheap, picklable *tasks*; ``Source.load(task)`` turns one into a :class:`RawRecord`
inside a worker process, so expensive work (rendering, file reads) runs in parallel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Ground-truth defect kinds of the raw-scrape mode, each named after the filter reason that must
# drop it (one kind, one reason), so per-kind precision/recall is a direct comparison.
DROP_KINDS: tuple[str, ...] = (
    "corrupt_image",  # truncated or damaged bytes of a real image format
    "not_image",  # bytes of another kind (HTML, text) behind an image extension
    "too_small",  # shorter side below the minimum
    "bad_aspect",  # aspect ratio outside the bounds
    "empty_caption",  # empty or whitespace-only caption
    "caption_too_long",  # caption longer than the maximum
    "blocklist",  # caption hits the safety blocklist
    "exact_duplicate",  # same decoded pixels as an earlier record
    "near_duplicate",  # re-encoded/rescaled copy of an earlier record
)

# Ground-truth kinds that must be *kept*: the filter converts them to RGB (or un-rotates them).
CONVERT_KINDS: tuple[str, ...] = (
    "mode_L",
    "mode_LA",
    "mode_RGBA",
    "mode_P",
    "mode_CMYK",
    "mode_I16",
    "exif_rotated",
)


@dataclass
class RawRecord:
    """One image-text pair as a crawler or a folder would hand it to us.

    ``image_bytes`` is the encoded file exactly as found (possibly broken); ``defect`` is the
    ground-truth label when the source knows it (the synthetic scrape does), else ``None``.
    """

    key: str
    image_bytes: bytes
    caption: str | None
    source: str
    ext: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    defect: str | None = None
