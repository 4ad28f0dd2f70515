"""Atomic file writes, and a full disk reported as one line.

Every stage output is written to a temporary file in the destination's folder and renamed over
the destination only once complete (``os.replace`` is atomic on one filesystem), so a crash, a
signal or a full disk leaves the previous file or none, never a torn one that a later stage or
``dvc commit`` could take for a finished output. Temporary names start with ``.`` and end with
``.tmp-<pid>``; a failed write removes its own.

A full disk (``ENOSPC``, or ``EDQUOT`` for a quota) while writing raises :class:`DiskFullError`,
which names the destination and the space the write needed; :func:`describe_disk_full` turns it
(or any ``ENOSPC`` ``OSError``) into the one line a stage prints before it exits.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """No space left while writing ``path``; ``needed`` bytes (when known) would have fit."""

    def __init__(self, path: str | Path, needed: int | None = None) -> None:
        super().__init__(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        self.path = Path(path)
        self.needed = needed


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def free_bytes(path: str | Path) -> int | None:
    """Free bytes on the filesystem holding ``path`` (its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def describe_disk_full(exc: OSError, stage: str) -> str:
    """``<stage>: no space left on device writing <path> (needs ~X, Y free); free space and run
    the same command again``."""
    path = getattr(exc, "path", None) or exc.filename
    where = f"writing {path}" if path else "writing its outputs"
    needed = getattr(exc, "needed", None)
    free = free_bytes(path or ".")
    sizes = []
    if needed:
        sizes.append(f"needs ~{human_bytes(needed)}")
    if free is not None:
        sizes.append(f"{human_bytes(free)} free")
    detail = f" ({', '.join(sizes)})" if sizes else ""
    return (
        f"{stage}: no space left on device {where}{detail}; nothing partial was kept: free "
        "space and run the same command again"
    )


def temporary_path(path: str | Path) -> Path:
    """The temporary sibling :func:`atomic_path` writes before the rename."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _fsync_dir(folder: Path) -> None:
    # Persist the rename itself (the directory entry), or a crash may still lose the file.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(
    path: str | Path, *, needed: int | None = None, fsync: bool = True
) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` when the block succeeds,
    remove it when the block fails. ``ENOSPC`` becomes :class:`DiskFullError` naming ``path``
    and ``needed`` bytes (else the size the temporary file had reached)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if fsync:
            _fsync_dir(path.parent)
    except OSError as exc:
        if not is_disk_full(exc) or isinstance(exc, DiskFullError):
            raise
        written = tmp.stat().st_size if tmp.exists() else None
        raise DiskFullError(path, needed or written) from exc
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes, *, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`; ``fsync=False`` for many
    small files, where a crash may lose the newest but still never leaves a torn one)."""
    with atomic_path(path, needed=len(data), fsync=fsync) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, *, fsync: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)
