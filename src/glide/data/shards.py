"""Deterministic WebDataset shard writing, the train/val split, and the COCO-format val export.

Shards are plain tars whose header fields are fixed (mtime 0, uid/gid 0, no user names, mode 0644)
and whose members come in stream order, so identical input and config give identical bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glide.io import DiskFullError, atomic_write_bytes, atomic_write_text, is_disk_full


def split_of(key: str, val_fraction: float, salt: str = "glide-split") -> str:
    """``"val"`` or ``"train"`` from a hash of the key alone (stable under reordering/sharding)."""
    digest = hashlib.blake2b(f"{salt}:{key}".encode(), digest_size=8).digest()
    return "val" if int.from_bytes(digest, "big") / 2**64 < val_fraction else "train"


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass
class Sample:
    """One shard sample: ``key.<ext>``, ``key.txt``, ``key.json``."""

    key: str
    image: bytes
    ext: str
    caption: str
    meta: dict[str, Any]


class ShardWriter:
    """Writes samples into ``{prefix}{index:06d}.tar`` files of at most ``max_count`` samples.

    Each tar is written to a temporary name and renamed when complete, so a crash never leaves a
    half-written shard under a final name.
    """

    def __init__(self, directory: Path, *, prefix: str = "", max_count: int = 1000) -> None:
        if max_count < 1:
            raise ValueError(f"shard size must be >= 1, got {max_count}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.max_count = max_count
        self.paths: list[Path] = []
        self._tar: tarfile.TarFile | None = None
        self._tmp: Path | None = None
        self._count = 0
        self.total = 0

    def _open_next(self) -> None:
        self._close_current()
        path = self.directory / f"{self.prefix}{len(self.paths):06d}.tar"
        self.paths.append(path)
        self._tmp = path.with_name(path.name + ".tmp")
        # USTAR with fixed fields: no pax headers carrying timestamps.
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
        self._count = 0

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 0
        info.mode = 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        assert self._tar is not None
        self._tar.addfile(info, io.BytesIO(data))

    def write(self, sample: Sample) -> None:
        try:
            if self._tar is None or self._count >= self.max_count:
                self._open_next()
            self._add(f"{sample.key}.{sample.ext}", sample.image)
            self._add(f"{sample.key}.txt", sample.caption.encode("utf-8"))
            self._add(f"{sample.key}.json", canonical_json(sample.meta))
        except OSError as exc:
            self._raise_disk_full(exc, needed=len(sample.image) + 3 * 1024)
            raise
        self._count += 1
        self.total += 1

    def _raise_disk_full(self, exc: OSError, needed: int) -> None:
        """A full disk ends the shard being written (its temporary file removed) and names it."""
        if not is_disk_full(exc):
            return
        self.abort()
        raise DiskFullError(self.paths[-1] if self.paths else self.directory, needed) from exc

    def _close_current(self) -> None:
        if self._tar is not None:
            assert self._tmp is not None
            try:
                self._tar.close()
            except OSError as exc:
                self._raise_disk_full(exc, needed=self._tmp.stat().st_size)
                raise
            os.replace(self._tmp, self.paths[-1])
            self._tar = None

    def abort(self) -> None:
        """Drop the shard being written: no partial tar is left under any name."""
        if self._tar is not None:
            with contextlib.suppress(OSError):  # a full disk: the temporary file goes anyway
                self._tar.close()
            self._tar = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)

    def close(self) -> list[Path]:
        self._close_current()
        return self.paths

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:  # an error (or a signal) mid-shard: keep the complete shards only
            self.abort()


class CocoExporter:
    """Writes the val split as a COCO captions set: ``images/<key>.<ext>`` + ``captions.json``.

    Evaluation reads this exactly as it reads MS-COCO's ``captions_val2014.json``.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        (self.directory / "images").mkdir(parents=True, exist_ok=True)
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []

    def add(self, sample: Sample, width: int, height: int) -> None:
        file_name = f"{sample.key}.{sample.ext}"
        atomic_write_bytes(self.directory / "images" / file_name, sample.image, fsync=False)
        image_id = len(self.images) + 1
        self.images.append(
            {"id": image_id, "file_name": file_name, "width": width, "height": height}
        )
        captions = sample.meta.get("captions") or [sample.caption]
        for caption in captions:
            self.annotations.append(
                {"id": len(self.annotations) + 1, "image_id": image_id, "caption": caption}
            )

    def document(self, info: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "info": info or {},
            "images": self.images,
            "annotations": self.annotations,
        }


def write_json(path: Path, obj: Any, *, indent: int = 2) -> None:
    """Write ``obj`` as sorted, UTF-8 JSON through a temporary file (never a half-written file)."""
    atomic_write_text(
        path, json.dumps(obj, indent=indent, sort_keys=True, ensure_ascii=False) + "\n"
    )
