"""Experiment tracking (MLflow) helpers: resolve the store, fail fast, log runs."""

from glide.tracking.runs import (
    TrackingUnavailableError,
    ensure_reachable,
    flatten_params,
    resolve_tracking_uri,
    tracked_run,
)

__all__ = [
    "TrackingUnavailableError",
    "ensure_reachable",
    "flatten_params",
    "resolve_tracking_uri",
    "tracked_run",
]
