"""How a pipeline stage process ends when it is stopped or the disk fills.

:func:`run_stage` wraps a stage's ``main``:

- **SIGTERM or Ctrl-C** (``dvc`` being stopped, ``kill``, a scheduler's preemption) raises
  :class:`StageStopped` in the main thread, so ``finally`` blocks and context managers run:
  temporary files are removed (:mod:`glide.io`), the MLflow run is marked ``KILLED``
  (:func:`glide.tracking.tracked_run`), and the process exits with ``128 + signal`` after one
  line on stderr. Code that must finish a unit of work first (a training step) runs inside
  :func:`deferred_signals`: the signal only calls its callback, which asks the work to stop at
  the next safe point (the trainer saves a checkpoint there and raises :class:`StageStopped`).
- **A full disk** (``ENOSPC``) ends the stage with the one line of
  :func:`glide.io.describe_disk_full` (the path and the space needed) and exit status 1.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import FrameType

from glide.io import describe_disk_full, is_disk_full

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_callbacks: list[Callable[[int], None]] = []
_owner = 0  # the process that installed the handlers


class StageError(Exception):
    """A stage ends with this one-line message (no traceback) and exit status 1."""


class StageStopped(BaseException):
    """The stage was asked to stop by ``signum``; work done so far is saved, none is torn."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def signal_name(self) -> str:
        return "Ctrl-C" if self.signum == signal.SIGINT else signal.Signals(self.signum).name


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if os.getpid() != _owner:
        # A forked worker (a data-loader or prepare pool process) inherited the handler: it
        # ends the default way, quietly; its parent does the cleaning up.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if _callbacks:
        _callbacks[-1](signum)
        return
    raise StageStopped(signum)


def install_signal_handlers() -> None:
    """SIGTERM and SIGINT raise :class:`StageStopped` (or call the innermost
    :func:`deferred_signals` callback). Main thread only; idempotent."""
    global _owner
    _owner = os.getpid()
    for sig in STOP_SIGNALS:
        signal.signal(sig, _on_signal)


@contextmanager
def deferred_signals(callback: Callable[[int], None]) -> Iterator[None]:
    """Inside the block a stop signal calls ``callback(signum)`` instead of raising."""
    _callbacks.append(callback)
    try:
        yield
    finally:
        _callbacks.remove(callback)


def run_stage(name: str, main: Callable[[list[str]], int], argv: Sequence[str]) -> int:
    """Run a stage's ``main(argv)`` and turn a stop signal or a full disk into one line and an
    exit status (see the module docstring)."""
    install_signal_handlers()
    try:
        return main(list(argv))
    except StageStopped as exc:
        print(
            f"{name}: stopped by {exc.signal_name}; temporary files removed, nothing partial "
            "kept (training keeps its checkpoint): run the same command (or dvc repro) to go on",
            file=sys.stderr,
            flush=True,
        )
        return 128 + exc.signum
    except StageError as exc:
        print(f"{name}: {exc}", file=sys.stderr, flush=True)
        return 1
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        print(describe_disk_full(exc, name), file=sys.stderr, flush=True)
        return 1
