"""A fast ODE sampler beyond the release: DPM-Solver++(2M) (Lu et al., 2022).

The probability-flow ODE of ``x_t = alpha_t x_0 + sigma_t eps`` (``alpha_t = sqrt(abar_t)``,
``sigma_t = sqrt(1 - abar_t)``) is solved in the data-prediction form, stepping in the half
log-SNR ``lambda_t = log(alpha_t / sigma_t)``. From ``s`` to ``t`` with ``h = lambda_t - lambda_s``:

    x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) D,

where ``D = x0_s`` (first order) or, multistep, ``D = (1 + 1/(2r)) x0_s - 1/(2r) x0_prev`` with
``r = h_prev / h``. The discrete process is used as is: the grid is a descending subset of its
integer indices ending at 0, so the model is only queried at the timesteps it was trained on
(through the process's ``timestep_map`` when respaced), and the sample is the final ``x_0``
prediction at index 0, as the release's samplers return.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from glide.diffusion.gaussian_diffusion import DenoisedFn, GaussianDiffusion, Model
from glide.diffusion.noise import NoiseGenerator, draw_noise

__all__ = ["dpm_solver_pp_2m_sample", "dpm_solver_timesteps"]

Spacing = Literal["time_uniform", "time_quadratic"]


def dpm_solver_timesteps(
    diffusion: GaussianDiffusion, steps: int, spacing: Spacing = "time_uniform"
) -> list[int]:
    """A descending grid of at most ``steps`` distinct indices of ``diffusion``, from T-1 to 0.

    ``"time_uniform"`` spaces the indices evenly; ``"time_quadratic"`` evenly in their square
    root, which puts more steps near the data.
    """
    n = diffusion.num_timesteps
    if steps < 1:
        raise ValueError("steps must be >= 1")
    if spacing == "time_uniform":
        grid = np.rint(np.linspace(n - 1, 0, steps)).astype(np.int64)
    elif spacing == "time_quadratic":
        grid = np.rint(np.linspace(np.sqrt(n - 1), 0, steps) ** 2).astype(np.int64)
    else:
        raise ValueError(f"unknown spacing {spacing!r}")
    grid[0], grid[-1] = n - 1, 0
    return sorted({int(i) for i in grid}, reverse=True)


def _log_snr(diffusion: GaussianDiffusion) -> Tensor:
    """``lambda_t = 0.5 log(abar_t) - 0.5 log(1 - abar_t)`` per index, float64 [T]."""
    abar = diffusion.alphas_cumprod
    return 0.5 * torch.log(abar) - 0.5 * torch.log1p(-abar)


def dpm_solver_pp_2m_sample(
    diffusion: GaussianDiffusion,
    model: Model,
    shape: Sequence[int],
    *,
    steps: int = 20,
    spacing: Spacing = "time_uniform",
    lower_order_final: bool = True,
    noise: Tensor | None = None,
    noise_temperature: float = 1.0,
    clip_denoised: bool = True,
    denoised_fn: DenoisedFn | None = None,
    model_kwargs: dict[str, Any] | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    generator: NoiseGenerator | None = None,
) -> Tensor:
    """Sample [B, C, H, W] with DPM-Solver++(2M) in ``steps`` model evaluations.

    The model, ``clip_denoised`` and ``denoised_fn`` (e.g. inpainting) act as in
    :meth:`GaussianDiffusion.p_mean_variance`; guidance that wraps the model (classifier-free)
    works unchanged. ``lower_order_final`` takes the last step into index 0 with the first-order
    update, which steadies very short schedules. ``noise_temperature`` scales ``x_T``.
    """
    if device is None and isinstance(model, torch.nn.Module):
        device = next(model.parameters(), torch.empty(0)).device
    if noise is None:
        noise = draw_noise(shape, generator, device=device)
    x = noise * noise_temperature
    grid = dpm_solver_timesteps(diffusion, steps, spacing)
    lam = _log_snr(diffusion)
    alpha = diffusion.sqrt_alphas_cumprod
    sigma = diffusion.sqrt_one_minus_alphas_cumprod

    positions: Sequence[int] = range(len(grid))
    if progress:
        from tqdm.auto import tqdm

        positions = tqdm(positions)

    prev_x0: Tensor | None = None
    prev_h = 0.0
    for k in positions:
        s = grid[k]
        t_s = torch.full((x.shape[0],), s, device=x.device, dtype=torch.long)
        with torch.no_grad():
            x0 = diffusion.p_mean_variance(
                model,
                x,
                t_s,
                clip_denoised=clip_denoised,
                denoised_fn=denoised_fn,
                model_kwargs=model_kwargs,
            )["pred_xstart"]
        if k == len(grid) - 1:
            return x0
        t = grid[k + 1]
        h = float(lam[t] - lam[s])
        last = k == len(grid) - 2
        if prev_x0 is None or (lower_order_final and last):
            d = x0
        else:
            half_inv_r = 0.5 * h / prev_h
            d = (1.0 + half_inv_r) * x0 - half_inv_r * prev_x0
        x = float(sigma[t] / sigma[s]) * x - float(alpha[t] * np.expm1(-h)) * d
        prev_x0, prev_h = x0, h
    raise AssertionError("unreachable: the grid always ends at index 0")
