"""MLflow run helpers shared by every pipeline stage.

Default store: an SQLite file ``mlflow.db`` at the repository root (the project's root also for
a queued DVC experiment's temporary workspace: :mod:`glide.tracking.store`); ``MLFLOW_TRACKING_URI``
overrides it (e.g. ``http://127.0.0.1:5000`` for a shared ``mlflow server``). A remote store is
checked before any work starts, so a stage never computes for an hour and then loses its run.
"""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from glide.io import DiskFullError, is_disk_full
from glide.stage import StageStopped
from glide.tracking.store import (
    RetryLocked,
    dvc_experiment_tags,
    prepare_store,
    retry_locked,
    store_root,
)

MAX_PARAM_CHARS = 6000  # MLflow's limit on one parameter value


class TrackingUnavailableError(RuntimeError):
    """The configured tracking server cannot be reached."""


def resolve_tracking_uri(root: Path, uri: str | None = None) -> str:
    """``uri`` if given, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<project>/mlflow.db``
    where ``<project>`` is ``root``, or the project a DVC experiment's temporary workspace
    ``root`` was copied from (:func:`glide.tracking.store.store_root`)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{store_root(root) / 'mlflow.db'}"


def ensure_reachable(uri: str, timeout: float = 5.0) -> None:
    """Raise :class:`TrackingUnavailableError` with one clear line if an HTTP store is down."""
    if not uri.startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            if resp.status >= 400:
                raise TrackingUnavailableError(f"MLflow server {uri} answered HTTP {resp.status}")
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingUnavailableError(
            f"MLflow tracking server {uri} is unreachable ({reason}); start it (make ui) or "
            "unset MLFLOW_TRACKING_URI to use the local SQLite store"
        ) from None


def flatten_params(obj: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"a.b.c": "value"}`` with values cut to MLflow's length limit."""
    flat: dict[str, str] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, prefix=f"{name}."))
        else:
            flat[name] = str(value)[:MAX_PARAM_CHARS]
    return flat


class _TrackedRun(RetryLocked):
    """The ``mlflow`` module as :func:`tracked_run` yields it: the same functions, retried while
    another process holds an SQLite store's write lock, and an artifact upload that fills the
    disk names its destination (:class:`DiskFullError`)."""

    def log_artifact(self, local_path: str, artifact_path: str | None = None, **kw: Any) -> None:
        try:
            retry_locked(self._obj.log_artifact, local_path, artifact_path, **kw)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            artifact_uri = self._obj.get_artifact_uri(artifact_path)
            raise upload_disk_full(artifact_uri, local_path) from exc


def upload_disk_full(artifact_uri: str, local_path: str) -> DiskFullError:
    """The error for an upload of ``local_path`` to ``artifact_uri`` that filled the disk,
    naming where the file was going (a local path for a ``file:`` store) and its size."""
    name = Path(local_path).name
    if artifact_uri.startswith("file:"):
        folder = urllib.request.url2pathname(urllib.parse.urlparse(artifact_uri).path)
        dest = str(Path(folder) / name)
    else:
        dest = f"{artifact_uri.rstrip('/')}/{name}"
    return DiskFullError(dest, Path(local_path).stat().st_size)


@contextmanager
def tracked_run(
    *,
    root: Path,
    experiment: str,
    run_name: str,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    uri: str | None = None,
) -> Iterator[Any]:
    """Start an MLflow run (after checking the store) and yield the ``mlflow`` module."""
    import mlflow

    tracking_uri = resolve_tracking_uri(root, uri)
    ensure_reachable(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    experiment_id = prepare_store(tracking_uri, experiment, root=root)
    run_tags = {**dvc_experiment_tags(), **(tags or {})}
    tracker = _TrackedRun(mlflow)
    tracker.start_run(experiment_id=experiment_id, run_name=run_name, tags=run_tags)
    status = "FAILED"
    try:
        if params:
            flat = flatten_params(params)
            items = list(flat.items())
            for i in range(0, len(items), 100):  # MLflow caps one batch at 100 params
                tracker.log_params(dict(items[i : i + 100]))
        yield tracker
        status = "FINISHED"
    except (StageStopped, KeyboardInterrupt):
        status = "KILLED"  # stopped on request: not a failure, not finished
        raise
    finally:
        tracker.end_run(status)


class DropMessage(logging.Filter):
    """Drops the records whose message starts with one exact text."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)
