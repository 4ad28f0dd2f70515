"""MLflow run helpers shared by every pipeline stage.

Default store: an SQLite file ``mlflow.db`` at the repository root; ``MLFLOW_TRACKING_URI``
overrides it (e.g. ``http://127.0.0.1:5000`` for a shared ``mlflow server``). A remote store is
checked before any work starts, so a stage never computes for an hour and then loses its run.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MAX_PARAM_CHARS = 6000  # MLflow's limit on one parameter value


class TrackingUnavailableError(RuntimeError):
    """The configured tracking server cannot be reached."""


def resolve_tracking_uri(root: Path, uri: str | None = None) -> str:
    """``uri`` if given, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<root>/mlflow.db``."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{(Path(root) / 'mlflow.db').resolve()}"


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
    if mlflow.get_experiment_by_name(experiment) is None:
        artifacts = None
        if tracking_uri.startswith("sqlite:"):
            # Keep artifacts beside the SQLite file, not wherever the command happened to run.
            artifacts = (Path(root) / "mlartifacts").resolve().as_uri()
        mlflow.create_experiment(experiment, artifact_location=artifacts)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name, tags=dict(tags or {})):
        if params:
            flat = flatten_params(params)
            items = list(flat.items())
            for i in range(0, len(items), 100):  # MLflow caps one batch at 100 params
                mlflow.log_params(dict(items[i : i + 100]))
        yield mlflow
