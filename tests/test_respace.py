"""Respacing: kept timesteps, the shortened chain's betas and the timestep-mapping wrapper."""

from __future__ import annotations

import pytest
import torch

from glide.diffusion import (
    GaussianDiffusion,
    SpacedDiffusion,
    create_gaussian_diffusion,
    get_named_beta_schedule,
    space_timesteps,
)


def test_even_and_sectioned_spacing() -> None:
    assert sorted(space_timesteps(10, "5")) == [0, 2, 4, 7, 9]
    assert space_timesteps(1000, "1000") == set(range(1000))
    steps = sorted(space_timesteps(300, "10,15,20"))
    assert len(steps) == 45 and steps[0] == 0 and steps[-1] == 299
    assert sum(s < 100 for s in steps) == 10 and sum(s >= 200 for s in steps) == 20
    assert space_timesteps(300, [10, 15, 20]) == space_timesteps(300, "10,15,20")


def test_ddim_and_fast27() -> None:
    assert sorted(space_timesteps(1000, "ddim50")) == list(range(0, 1000, 20))
    fast = sorted(space_timesteps(1000, "fast27"))
    assert len(fast) == 27 and 997 in fast and 999 not in fast
    with pytest.raises(ValueError):
        space_timesteps(1000, "ddim999")
    with pytest.raises(ValueError):
        space_timesteps(10, "3,20")


def test_spaced_betas_reproduce_kept_alphas_cumprod() -> None:
    betas = get_named_beta_schedule("squaredcos_cap_v2", 1000)
    base = GaussianDiffusion(betas)
    kept = sorted(space_timesteps(1000, "fast27"))
    spaced = SpacedDiffusion(kept, betas)
    assert spaced.num_timesteps == 27 and spaced.original_num_steps == 1000
    assert torch.allclose(spaced.alphas_cumprod, base.alphas_cumprod[kept], rtol=1e-12)
    assert spaced.timestep_map.tolist() == kept


def test_model_sees_original_timesteps() -> None:
    diffusion = create_gaussian_diffusion(timestep_respacing="ddim50")
    seen: list[torch.Tensor] = []

    def model(x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        seen.append(t)
        return torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:])

    x = torch.randn(3, 3, 2, 2)
    diffusion.p_sample(
        model, x, torch.tensor([0, 1, 49]), cond_fn=lambda x_, t_: seen.append(t_) or x_ * 0
    )
    assert seen[0].tolist() == [0, 20, 980] and seen[1].tolist() == [0, 20, 980]
    wrapped = diffusion.wrap_model(model)
    assert diffusion.wrap_model(wrapped) is wrapped
    unspaced = create_gaussian_diffusion(steps=10)
    assert unspaced.wrap_model(model) is model


def test_spaced_equals_unspaced_when_keeping_all() -> None:
    betas = get_named_beta_schedule("linear", 100)
    full = GaussianDiffusion(betas)
    spaced = SpacedDiffusion(range(100), betas)
    assert torch.allclose(full.betas, spaced.betas, rtol=1e-10)


def test_invalid_use_timesteps() -> None:
    with pytest.raises(ValueError):
        SpacedDiffusion([5, 200], get_named_beta_schedule("linear", 100))
