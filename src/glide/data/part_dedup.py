"""Duplicates across parts: each part keeps the hashes of what it kept, the merge compares them.

A part deduplicates only within its own slice, so a copy whose original fell into another part
survives it. With ``num_parts > 1`` every part writes ``stats/part-NNN.hashes.npy`` (one row per
kept record, in stream order: key, split, ground-truth defect, pixel digest, perceptual hash and
colour thumbnail); :func:`find_cross_part_duplicates` replays them part by part against an index
of the earlier parts, with the same exact/near criteria as within a part. :func:`remove_keys`
rewrites the shards that hold duplicates found, for the merge's
``prepare.drop_cross_part_duplicates`` option.

The hashes are a plain ``.npy`` structured array: ``np.save`` writes no timestamp, so re-running a
part gives the same bytes (it is a DVC output, like the shards).
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from glide.data.dedup import THUMB_SIZE, NearDupIndex
from glide.data.filters import FilterConfig
from glide.io import atomic_path

_THUMB = ("u1", (THUMB_SIZE, THUMB_SIZE, 3))


def hashes_dtype(key_chars: int, defect_chars: int) -> np.dtype:
    """Row type of a part's hash file (string widths fitted to the part's longest values)."""
    return np.dtype(
        [
            ("key", f"<U{max(1, key_chars)}"),
            ("split", "<U5"),
            ("defect", f"<U{max(1, defect_chars)}"),
            # Raw bytes as uint8: an ``S16`` field would drop trailing zero bytes of a digest.
            ("digest", "u1", (16,)),
            ("phash", "<u8"),
            ("thumb", *_THUMB),
        ]
    )


@dataclass
class HashRecorder:
    """Collects the hashes of a part's kept records, in the order they were written."""

    rows: list[tuple[str, str, str, bytes, int, np.ndarray | None]] = field(default_factory=list)

    def add(
        self, key: str, split: str, defect: str | None, digest: bytes, h: int, thumb: Any
    ) -> None:
        self.rows.append((key, split, defect or "", digest, h, thumb))

    def save(self, path: Path) -> None:
        """Write the rows as one ``.npy`` table (through a temporary file)."""
        columns = list(zip(*self.rows, strict=True)) or [()] * 6  # no rows: empty columns
        keys, splits, defects, digests, hashes, thumbs = columns
        table = np.zeros(
            len(self.rows),
            hashes_dtype(max(map(len, keys), default=1), max(map(len, defects), default=1)),
        )
        table["key"], table["split"], table["defect"] = keys, splits, defects
        table["digest"] = np.frombuffer(
            b"".join(d.ljust(16, b"\0")[:16] for d in digests), np.uint8
        ).reshape(-1, 16)
        table["phash"] = np.array(hashes, np.uint64)
        for i, thumb in enumerate(thumbs):
            if thumb is not None:  # always set for a kept record; zeros keep the table whole
                table["thumb"][i] = thumb
        buf = io.BytesIO()
        np.save(buf, table, allow_pickle=False)
        with atomic_path(path, needed=buf.tell(), fsync=False) as tmp:
            tmp.write_bytes(buf.getvalue())


def load_hashes(path: Path) -> np.ndarray:
    """A part's table as :meth:`HashRecorder.save` wrote it."""
    return np.load(path, allow_pickle=False)


def find_cross_part_duplicates(
    parts: Sequence[np.ndarray], filters: FilterConfig
) -> list[dict[str, Any]]:
    """Records of part ``j`` that duplicate a kept record of an earlier part ``i < j``.

    Each part is checked against the index of the earlier parts only (within a part, dedup has
    run already), then its non-duplicates join the index: the first occurrence in stream order
    wins, as in a single-part run. Returns one entry per duplicate, in stream order.
    """
    exact: dict[bytes, tuple[str, int]] = {}
    near = NearDupIndex(filters.near_dup_radius, filters.near_dup_max_thumb_diff)
    part_of: dict[str, int] = {}
    found: list[dict[str, Any]] = []
    for index, table in enumerate(parts):
        fresh = []
        for row in table:
            key, digest, h = str(row["key"]), row["digest"].tobytes(), int(row["phash"])
            match: tuple[str, str, int] | None = None
            if filters.exact_dedup and digest in exact:
                match = ("exact_duplicate", *exact[digest])
            if match is None and filters.near_dedup:
                of = near.query(h, row["thumb"])
                if of is not None:
                    match = ("near_duplicate", of, part_of[of])
            if match is None:
                fresh.append((key, digest, h, row["thumb"]))
                continue
            reason, of, of_part = match
            found.append(
                {
                    "key": key,
                    "part": index,
                    "split": str(row["split"]),
                    "defect": str(row["defect"]) or None,
                    "reason": reason,
                    "duplicate_of": of,
                    "duplicate_of_part": of_part,
                }
            )
        for key, digest, h, thumb in fresh:
            exact.setdefault(digest, (key, index))
            if filters.near_dedup:
                near.add(key, h, thumb)
            part_of[key] = index
    return found


def remove_keys(shards: Iterable[Path], keys: set[str]) -> int:
    """Rewrite each shard holding samples of ``keys`` without them; return samples removed.

    Only tar headers are read to find the shards concerned. A rewritten tar keeps the other
    members' headers and order, so it is what the part would have written without those
    samples; keys not found are skipped (a merge repeated after a crash removes nothing twice).
    """
    removed = 0
    for path in shards:
        with tarfile.open(path, "r:") as tf:
            names = tf.getnames()
        drop = {n for n in names if n.split(".", 1)[0] in keys}
        if not drop:
            continue
        removed += len({n.split(".", 1)[0] for n in drop})
        with (
            tarfile.open(path, "r:") as src,
            atomic_path(path, fsync=False) as tmp,
            # Closed (its end blocks written) before atomic_path renames it over the shard.
            tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as dst,
        ):
            for member in src:
                if member.name not in drop:
                    dst.addfile(member, src.extractfile(member))
    return removed


def read_removed(path: Path) -> dict[str, str]:
    """``{key: reason}`` of the samples an earlier merge removed from a part (``{}``: none)."""
    return json.loads(path.read_text()) if path.is_file() else {}
