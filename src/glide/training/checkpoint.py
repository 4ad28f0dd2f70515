"""Atomic, ``weights_only``-loadable Lightning checkpoints and the run's output folder layout.

A checkpoint (``<out_dir>/checkpoints/{last,step-N}.ckpt``) is Lightning's dict: model and EMA
weights (``state_dict``), optimizer and LR-scheduler states, loop progress (the step), callback
states and the datamodule's data position. It is written to a temporary file in the same folder,
fsynced and renamed, so a crash (even ``kill -9``) leaves either the old or the new file, never a
torn one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from glide.models.export import atomic_torch_save

LAST = "last.ckpt"


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


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint (``weights_only=True``) on the CPU."""
    return AtomicCheckpointIO().load_checkpoint(path, map_location="cpu")
