"""Shared test fixtures: seeded RNGs, the reference-tensor directory, a tiny composed config."""

from __future__ import annotations

import os
import random
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
