"""The processes an evaluation runs in: one, or a ``torch.distributed`` group started by
``torchrun`` or ``srun``.

Work is split in *chunks* of consecutive items (``batch_size`` captions); rank ``r`` of ``W``
takes chunks ``r, r + W, r + 2W, ...``. A chunk holds the same items whatever ``W`` is, so every
batch a network sees, and therefore every image, is the same for one process or many.

Backends: gloo on CPU (so two local processes run the same code as two GPUs), NCCL on CUDA.
Under ``srun`` without ``torchrun``, the SLURM variables give rank and size; ``MASTER_ADDR`` and
``MASTER_PORT`` must then be exported by the job script (docs: "Evaluating at scale").
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["World", "chunks", "init_world", "shutdown_world"]


@dataclass(frozen=True)
class World:
    """This process's place in the group: ``rank`` of ``size``, and the device it computes on."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def owns(self, chunk: int) -> bool:
        """Whether chunk number ``chunk`` is this rank's."""
        return chunk % self.size == self.rank

    def all_reduce(self, tensor: Tensor) -> Tensor:
        """The element-wise sum of ``tensor`` over ranks (``tensor`` itself in one process)."""
        if not self.distributed:
            return tensor
        on = tensor.to(self._comm_device())
        dist.all_reduce(on, op=dist.ReduceOp.SUM)
        return on.to(tensor.device)

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (``[obj]`` in one process)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def _comm_device(self) -> torch.device:
        return torch.device(self.device) if dist.get_backend() == "nccl" else torch.device("cpu")


def _env_int(*names: str) -> int | None:
    for name in names:
        if os.environ.get(name, "").strip():
            return int(os.environ[name])
    return None


def init_world(device: str = "cpu", *, timeout_s: float = 1800.0) -> World:
    """Join the process group the launcher describes (``torchrun``: ``RANK``/``WORLD_SIZE``;
    ``srun``: ``SLURM_PROCID``/``SLURM_NTASKS``), or a one-process world without one.

    ``device`` ``cuda`` becomes ``cuda:<local rank>`` and selects NCCL; anything else uses gloo.
    """
    size = _env_int("WORLD_SIZE", "SLURM_NTASKS") or 1
    if size <= 1:
        return World(device=device)
    rank = _env_int("RANK", "SLURM_PROCID") or 0
    local = _env_int("LOCAL_RANK", "SLURM_LOCALID") or 0
    cuda = device.startswith("cuda")
    if cuda and device == "cuda":
        device = f"cuda:{local}"
    if not dist.is_initialized():
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
        if missing:
            raise RuntimeError(
                f"{size} processes but {' and '.join(missing)} not set: launch with torchrun, "
                "or export MASTER_ADDR (the first node) and MASTER_PORT in the srun job script"
            )
        os.environ.setdefault("RANK", str(rank))
        os.environ.setdefault("WORLD_SIZE", str(size))
        if cuda:
            torch.cuda.set_device(torch.device(device))
        dist.init_process_group(
            backend="nccl" if cuda else "gloo",
            rank=rank,
            world_size=size,
            timeout=timedelta(seconds=timeout_s),
        )
    return World(rank=rank, size=size, local_rank=local, device=device)


def shutdown_world(world: World) -> None:
    """Leave the process group (after a last barrier, so no rank exits while others wait)."""
    if world.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def chunks(n: int, size: int) -> Iterator[tuple[int, range]]:
    """``(chunk number, item indices)`` of ``n`` items in chunks of ``size``."""
    for number, start in enumerate(range(0, n, size)):
        yield number, range(start, min(start + size, n))
