"""Noise schedules ``beta_1..beta_T`` of the forward process, computed in float64.

GLIDE uses two of them: the cosine schedule of Nichol & Dhariwal (2021), named
``squaredcos_cap_v2``, for the 64x64 base model and the noised CLIP, and the linear schedule of
Ho et al. (2020) for the 256x256 upsampler.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

__all__ = ["betas_for_alpha_bar", "get_named_beta_schedule"]


def betas_for_alpha_bar(
    num_timesteps: int, alpha_bar: Callable[[float], float], max_beta: float = 0.999
) -> np.ndarray:
    """Discretise a continuous ``alpha_bar(s)``, ``s`` in [0, 1], into ``num_timesteps`` betas.

    ``beta_i = min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta)``, so that the
    cumulative product of ``1 - beta`` follows ``alpha_bar`` on the grid ``s = i / T``; the cap
    keeps the last step away from the singularity at ``alpha_bar(1) = 0``.

    Returns a float64 array of shape [T].
    """
    grid = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    abar = np.array([alpha_bar(float(s)) for s in grid], dtype=np.float64)
    return np.minimum(1.0 - abar[1:] / abar[:-1], max_beta)


def _cosine_alpha_bar(s: float, offset: float = 0.008) -> float:
    return math.cos((s + offset) / (1 + offset) * math.pi / 2) ** 2


def get_named_beta_schedule(name: str, num_timesteps: int) -> np.ndarray:
    """Betas of a named schedule, float64 array of shape [T].

    ``"linear"``: evenly spaced from ``1e-4`` to ``0.02`` at T = 1000, both ends scaled by
    ``1000 / T`` so that other lengths describe the same process.
    ``"squaredcos_cap_v2"`` (alias ``"cosine"``): ``alpha_bar(s) = cos^2((s + 0.008) / 1.008 * pi/2)``.
    """
    if name == "linear":
        scale = 1000 / num_timesteps
        return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)
    if name in ("squaredcos_cap_v2", "cosine"):
        return betas_for_alpha_bar(num_timesteps, _cosine_alpha_bar)
    raise ValueError(f"unknown beta schedule {name!r} (expected 'linear' or 'squaredcos_cap_v2')")
