"""A full disk at the write call: :func:`install` makes ``open``/``io.open`` return, for paths
matching a pattern and a writing mode, a file whose ``write`` raises ``OSError(ENOSPC)`` once
``after`` bytes were written. ``fileno()`` is refused so that copies (``shutil``, ``sendfile``)
go through ``write`` too."""

from __future__ import annotations

import builtins
import errno
import fnmatch
import io
import os
import tarfile
from collections.abc import Callable
from typing import Any

_real_open: Callable[..., Any] = builtins.open
_real_fdopen: Callable[..., Any] = os.fdopen


class FullDiskFile:
    def __init__(self, f: Any, after: int) -> None:
        self._f = f
        self._left = after

    def write(self, data: Any) -> int:
        size = len(data)
        if size > self._left:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._left -= size
        return int(self._f.write(data))

    def fileno(self) -> int:
        raise io.UnsupportedOperation("fileno")

    def __enter__(self) -> FullDiskFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def install(pattern: str, after: int = 0) -> Callable[[], None]:
    """Patch ``open``; returns the function that restores it."""

    def faulty_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        f = _real_open(file, mode, *args, **kwargs)
        writing = any(c in mode for c in "wax")
        named = isinstance(file, (str, os.PathLike))
        if writing and named and fnmatch.fnmatch(os.path.abspath(file), pattern):
            return FullDiskFile(f, after)
        return f

    def faulty_fdopen(fd: int, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        # MLflow's local artifact store writes a mkstemp descriptor: its path is in /proc.
        f = _real_fdopen(fd, mode, *args, **kwargs)
        path = os.readlink(f"/proc/self/fd/{fd}") if os.path.isdir("/proc/self/fd") else ""
        if any(c in mode for c in "wax") and fnmatch.fnmatch(path, pattern):
            return FullDiskFile(f, after)
        return f

    builtins.open = faulty_open
    io.open = faulty_open
    tarfile.bltn_open = faulty_open  # type: ignore[attr-defined]  (bound at import)
    os.fdopen = faulty_fdopen

    def restore() -> None:
        builtins.open = _real_open
        io.open = _real_open
        tarfile.bltn_open = _real_open  # type: ignore[attr-defined]
        os.fdopen = _real_fdopen

    return restore
