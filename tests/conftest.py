"""Shared test fixtures: seeded RNGs, the reference-tensor directory, a tiny composed config."""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    random.seed(0)
    np.random.seed(0)
    try:
        import torch

        torch.manual_seed(0)
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass


@pytest.fixture(autouse=True)
def _private_cache_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``precision: auto`` caches its measurements under ``$GLIDE_CACHE_DIR``: never the user's."""
    monkeypatch.setenv("GLIDE_CACHE_DIR", str(tmp_path_factory.mktemp("glide-cache")))


@pytest.fixture(autouse=True)
def _reset_mlflow_state() -> Iterator[None]:
    """MLflow's fluent API caches the active run, experiment id and tracking URI per process;
    each test brings its own store, so nothing may leak from one test into the next."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID")}
    yield
    for key, value in saved.items():  # mlflow.set_experiment exports MLFLOW_EXPERIMENT_ID
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    mlflow = sys.modules.get("mlflow")
    if mlflow is None:
        return
    while mlflow.active_run() is not None:
        mlflow.end_run()
    from mlflow.tracking import fluent

    fluent._active_experiment_id = None
    mlflow.set_tracking_uri(None)  # back to the default resolution (env var or default)


def reference_dir() -> Path:
    """Directory of the public release's reference tensors (``GLIDE_REFERENCE_DIR`` overrides)."""
    env = os.environ.get("GLIDE_REFERENCE_DIR")
    if env:
        return Path(env)
    return (REPO_ROOT / ".." / "shared" / "reference" / "glide_text2im").resolve()


@pytest.fixture(scope="session")
def ref_dir() -> Path:
    path = reference_dir()
    if not path.is_dir():
        pytest.skip(f"reference tensors not found at {path} (set GLIDE_REFERENCE_DIR)")
    return path
