"""DPM-Solver++(2M) on Gaussian data, where the exact eps predictor and ODE solution are known."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from glide.diffusion import (
    create_gaussian_diffusion,
    dpm_solver_pp_2m_sample,
    dpm_solver_timesteps,
    inpaint_denoised_fn,
)

MU, STD = 0.3, 0.5


def _gaussian_data_model(abar: torch.Tensor):
    """Exact ``E[eps | x_t]`` for data ~ N(MU, STD^2) per pixel; ``t`` are original timesteps."""

    def model(x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        a = abar[t].float().sqrt().reshape(-1, 1, 1, 1)
        s = (1 - abar[t].float()).sqrt().reshape(-1, 1, 1, 1)
        eps = s * (x - a * MU) / (a**2 * STD**2 + s**2)
        return torch.cat([eps, torch.zeros_like(eps)], dim=1)

    return model


def _ode_solution(noise: torch.Tensor, abar_last: float) -> torch.Tensor:
    """The probability-flow ODE keeps ``(x_t - a_t MU) / sqrt(a_t^2 STD^2 + s_t^2)`` fixed."""
    a, s2 = math.sqrt(abar_last), 1 - abar_last
    return MU + STD * (noise - a * MU) / math.sqrt(a * a * STD**2 + s2)


@pytest.fixture(scope="module")
def setup() -> tuple:
    base = create_gaussian_diffusion()
    model = _gaussian_data_model(base.alphas_cumprod)
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    exact = _ode_solution(noise, float(base.alphas_cumprod[-1]))
    return base, model, noise, exact


def test_timestep_grids() -> None:
    diffusion = create_gaussian_diffusion()
    for spacing in ("time_uniform", "time_quadratic"):
        grid = dpm_solver_timesteps(diffusion, 15, spacing)
        assert grid[0] == 999 and grid[-1] == 0 and len(grid) == 15
        assert all(a > b for a, b in itertools.pairwise(grid))
    short = create_gaussian_diffusion(steps=10)
    assert dpm_solver_timesteps(short, 50) == list(range(9, -1, -1))
    with pytest.raises(ValueError):
        dpm_solver_timesteps(diffusion, 10, "logsnr")  # type: ignore[arg-type]


def test_dpm_solver_converges_to_ode_solution(setup: tuple) -> None:
    base, model, noise, exact = setup
    ddim_1000 = base.ddim_sample_loop(model, noise.shape, noise=noise, clip_denoised=False)
    assert (ddim_1000 - exact).abs().max() < 5e-3

    dpm_20 = dpm_solver_pp_2m_sample(
        base, model, noise.shape, noise=noise, steps=20, clip_denoised=False
    )
    ddim_20 = create_gaussian_diffusion(timestep_respacing="20").ddim_sample_loop(
        model, noise.shape, noise=noise, clip_denoised=False
    )
    assert (dpm_20 - ddim_1000).abs().max() < 1e-2
    assert (dpm_20 - exact).abs().max() < 0.1 * (ddim_20 - exact).abs().max()

    dpm_10 = dpm_solver_pp_2m_sample(
        base,
        model,
        noise.shape,
        noise=noise,
        steps=10,
        spacing="time_quadratic",
        clip_denoised=False,
    )
    assert (dpm_10 - exact).abs().max() < 5e-2


def test_dpm_solver_on_respaced_process(setup: tuple) -> None:
    _, model, noise, exact = setup
    spaced = create_gaussian_diffusion(timestep_respacing="100")
    sample = dpm_solver_pp_2m_sample(
        spaced,
        model,
        noise.shape,
        noise=noise,
        steps=15,
        spacing="time_quadratic",
        clip_denoised=False,
    )
    assert (sample - exact).abs().max() < 3e-2


def test_dpm_solver_options(setup: tuple) -> None:
    base, model, noise, _ = setup
    a = dpm_solver_pp_2m_sample(base, model, noise.shape, noise=noise * 0.9, steps=6, progress=True)
    b = dpm_solver_pp_2m_sample(
        base, model, noise.shape, noise=noise, steps=6, noise_temperature=0.9
    )
    assert torch.equal(a, b) and a.abs().max() <= 1
    known = torch.zeros_like(noise)
    mask = torch.zeros(4, 1, 8, 8)
    mask[..., 2:5, :] = 1
    c = dpm_solver_pp_2m_sample(
        base, model, noise.shape, noise=noise, steps=6, denoised_fn=inpaint_denoised_fn(known, mask)
    )
    assert torch.equal(c[..., 2:5, :], known[..., 2:5, :])
    g = torch.Generator().manual_seed(3)
    d = dpm_solver_pp_2m_sample(base, model, noise.shape, steps=3, generator=g)
    assert d.shape == noise.shape
