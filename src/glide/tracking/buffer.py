"""Keep training when the MLflow tracking server stops answering.

:class:`BufferingClient` wraps an ``MlflowClient``: the calls that write to a run (metrics,
params, tags, artifacts, the run's end) go through, and when one fails (server down, network
gone) it is queued instead of raised. Queued calls are replayed, in order, before the next write
once the server answers again; between failures the client waits :attr:`retry_every` seconds
before it tries, so a dead server costs a training step nothing. At the end of a stage,
:meth:`BufferingClient.flush` tries once more; what still cannot be written is saved by
:meth:`BufferingClient.save_pending` to a JSON file that ``glide replay FILE`` writes into the
store later (:func:`replay`). Reads are not buffered.

The MLflow HTTP client's own retries (7, with exponential backoff: minutes per call) are cut to
a few seconds for a stage that buffers (:func:`quick_http_failures`): the buffer is the retry.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from glide.io import is_disk_full
from glide.stage import StageError
from glide.tracking.store import RetryLocked, retry_locked

PENDING_DIR = "mlflow-pending"  # beside the project's store; ignored by git and DVC
WRITE_METHODS = (
    "log_batch",
    "log_metric",
    "log_param",
    "set_tag",
    "log_artifact",
    "log_artifacts",
    "set_terminated",
)


class TrackingPendingError(StageError):
    """The stage finished its outputs but some MLflow writes wait in a file for ``glide replay``."""


@contextmanager
def quick_http_failures() -> Iterator[None]:
    """Inside the block, unless the user set them: 2 retries, backoff factor 1, 10 s timeout per
    MLflow request (MLflow's defaults wait minutes on a dead server). Restored afterwards."""
    wanted = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    }
    added = [k for k in wanted if k not in os.environ]
    os.environ.update({k: wanted[k] for k in added})
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def _encode(method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """One write call as JSON (MLflow entities as plain lists)."""
    call: dict[str, Any] = {"op": method, "args": list(args), "kwargs": dict(kwargs)}
    for key in ("metrics", "params", "tags"):
        items = kwargs.get(key)
        if items:
            call["kwargs"][key] = [
                [m.key, m.value, m.timestamp, m.step] if key == "metrics" else [m.key, m.value]
                for m in items
            ]
    return call


def _decode(call: dict[str, Any]) -> tuple[str, list[Any], dict[str, Any]]:
    from mlflow.entities import Metric, Param, RunTag

    kwargs = dict(call["kwargs"])
    if kwargs.get("metrics"):
        kwargs["metrics"] = [Metric(k, v, ts, step) for k, v, ts, step in kwargs["metrics"]]
    if kwargs.get("params"):
        kwargs["params"] = [Param(k, v) for k, v in kwargs["params"]]
    if kwargs.get("tags"):
        kwargs["tags"] = [RunTag(k, v) for k, v in kwargs["tags"]]
    return call["op"], list(call["args"]), kwargs


class BufferingClient:
    """An ``MlflowClient`` whose run writes survive a tracking server that stops answering."""

    def __init__(
        self, client: Any, *, retry_every: float = 15.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._client = client
        self.retry_every = retry_every
        self._clock = clock
        # (method, args, kwargs) as called; JSON only when saved for replay
        self.pending: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self._down_since: float | None = None
        self._last_try = 0.0
        self.last_error: str | None = None

    @property
    def tracking_uri(self) -> str:
        return str(self._client.tracking_uri)

    def __getattr__(self, name: str) -> Any:
        if name not in WRITE_METHODS:
            return getattr(RetryLocked(self._client), name)
        return lambda *args, **kwargs: self._write(name, args, kwargs)

    def _write(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self.pending.append((method, args, kwargs))
        if self._down_since is not None and self._clock() - self._last_try < self.retry_every:
            return None
        self.flush()
        return None

    def flush(self) -> bool:
        """Write every queued call, oldest first; ``True`` when none is left."""
        self._last_try = self._clock()
        while self.pending:
            op, args, kwargs = self.pending[0]
            try:
                retry_locked(getattr(self._client, op), *args, **kwargs)
            except Exception as exc:  # any failure of the store: keep the call for later
                if is_disk_full(exc):  # a full local disk is not an outage: the stage says so
                    self._raise_disk_full(exc, op, args, kwargs)
                if self._down_since is None:
                    self._down_since = self._clock()
                self.last_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                return False
            self.pending.pop(0)
        self._down_since = None
        return True

    def _raise_disk_full(
        self, exc: OSError, op: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        if op != "log_artifact" or len(args) < 2:
            raise exc
        from glide.tracking.runs import upload_disk_full

        run_id, local_path = args[0], args[1]
        sub = args[2] if len(args) > 2 else kwargs.get("artifact_path")
        root = self._client.get_run(run_id).info.artifact_uri
        raise upload_disk_full(f"{root}/{sub}" if sub else root, local_path) from exc

    def describe_pending(self) -> str:
        values = sum(len(kwargs.get("metrics") or []) for _, _, kwargs in self.pending)
        values += sum(1 for op, _, _ in self.pending if op == "log_metric")
        files = sum(1 for op, _, _ in self.pending if op in ("log_artifact", "log_artifacts"))
        return f"{values} metric values, {files} artifact uploads, {len(self.pending)} calls"

    def save_pending(self, path: str | Path, extra: Sequence[dict[str, Any]] = ()) -> Path:
        """Write the queued calls (and ``extra`` ones, already in the file's form) for
        :func:`replay`; atomic."""
        from glide.io import atomic_write_text

        document = {
            "tracking_uri": self.tracking_uri,
            "error": self.last_error,
            "calls": [*(_encode(*call) for call in self.pending), *extra],
        }
        return atomic_write_text(path, json.dumps(document, indent=1) + "\n")


def replay(path: str | Path, client: Any) -> int:
    """Write the calls saved in ``path`` with ``client``; returns how many. The file is removed
    once every call went through; on a failure the rest is kept for the next try."""
    path = Path(path)
    document = json.loads(path.read_text())
    calls = document["calls"]
    done = 0
    try:
        for call in calls:
            if call["op"] == "log_model":
                _log_model(client, call)
            else:
                op, args, kwargs = _decode(call)
                getattr(client, op)(*args, **kwargs)
            done += 1
    finally:
        if done == len(calls):
            path.unlink()
        else:
            from glide.io import atomic_write_text

            document["calls"] = calls[done:]
            atomic_write_text(path, json.dumps(document, indent=1) + "\n")
    return done


def _log_model(client: Any, call: dict[str, Any]) -> None:
    """The deferred logged model ``model`` of a training run: its export file."""
    from glide.tracking.mlflow_model import log_export_model

    log_export_model(client, run_id=call["run_id"], model_file=call["model_file"])
