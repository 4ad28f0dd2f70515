"""Atomic, ``weights_only``-loadable Lightning checkpoints and the run's output folder layout.

A checkpoint (``<out_dir>/checkpoints/{last,step-N}.ckpt``) is Lightning's dict: model and EMA
weights (``state_dict``), optimizer and LR-scheduler states, loop progress (the step), callback
states and the datamodule's data position. It is written to a temporary file in the same folder,
fsynced and renamed, so a crash (even ``kill -9``) leaves either the old or the new file, never a
torn one.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from glide.models.export import atomic_torch_save

LAST = "last.ckpt"


class CheckpointError(RuntimeError):
    """No checkpoint a run can resume from (every one is damaged)."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes atomically and loads with ``weights_only=True``."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(
        self,
        path: str | Path,
        map_location: Any = lambda storage, loc: storage,
        weights_only: Any = None,
    ) -> dict[str, Any]:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} not found")
        return torch.load(path, map_location=map_location, weights_only=True)


def checkpoint_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def last_checkpoint(out_dir: str | Path) -> Path | None:
    """``<out_dir>/checkpoints/last.ckpt`` if it exists."""
    path = checkpoint_dir(out_dir) / LAST
    return path if path.is_file() else None


def checkpoint_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be resumed from (``None`` when it is intact): every member of the
    checkpoint's zip archive is read and its CRC checked, which catches a truncated file and
    flipped bytes alike without unpickling anything."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            if bad is not None:
                return f"member {bad} fails its CRC check"
            if not any(n.endswith("data.pkl") for n in archive.namelist()):
                return "not a torch checkpoint (no data.pkl)"
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        return str(exc) or type(exc).__name__
    return None


def step_of(path: Path) -> tuple[int, int]:
    """(step, version) of ``step-N.ckpt`` / ``step-N-vK.ckpt`` (Lightning's name for a rewrite);
    ``(-1, 0)`` for any other name."""
    match = re.fullmatch(r"step-(\d+)(?:-v(\d+))?\.ckpt", path.name)
    return (int(match.group(1)), int(match.group(2) or 0)) if match else (-1, 0)


def resume_checkpoint(out_dir: str | Path) -> tuple[Path | None, list[str]]:
    """The checkpoint a resume should start from, and one line per damaged one skipped.

    ``last.ckpt`` when intact, else the newest intact ``step-N.ckpt``: a run cut short while a
    file was written, or a disk that corrupted one, costs the steps since that checkpoint, never
    the whole run. A damaged file is moved aside to ``<name>.damaged`` (kept for inspection; the
    resumed run writes that step again under its own name). ``(None, [])`` when there is no
    checkpoint at all; ``(None, [...])`` when every one is damaged."""
    folder = checkpoint_dir(out_dir)
    if not folder.is_dir():
        return None, []
    steps = sorted(folder.glob("step-*.ckpt"), key=step_of, reverse=True)
    candidates = [p for p in (folder / LAST, *steps) if p.is_file()]
    skipped = []
    for path in candidates:
        problem = checkpoint_problem(path)
        if problem is None:
            return path, skipped
        aside = path.with_name(path.name + ".damaged")
        os.replace(path, aside)
        skipped.append(f"{path} is damaged ({problem}); moved to {aside.name}")
    return None, skipped


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint (``weights_only=True``) on the CPU."""
    return AtomicCheckpointIO().load_checkpoint(path, map_location="cpu")
