"""Unit tests of the schedules, the forward/reverse process, the samplers and the hybrid loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from glide.diffusion import (
    GaussianDiffusion,
    create_gaussian_diffusion,
    get_named_beta_schedule,
    inpaint_denoised_fn,
)
from glide.diffusion.losses import discretized_gaussian_log_likelihood, mean_flat, normal_kl


def _constant_model(eps: torch.Tensor, var_values: torch.Tensor):
    def model(x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.cat([eps.expand_as(x), var_values.expand_as(x)], dim=1)

    return model


def _random_model(seed: int = 0):
    """A fixed random linear 'network' [B,C,H,W] -> [B,2C,H,W] that depends on t."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(6, 3, generator=gen) * 0.3

    def model(x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        out = torch.einsum("oc,bchw->bohw", w, x)
        return torch.tanh(out + (t.float() / 1000.0).reshape(-1, 1, 1, 1))

    return model


# ------------------------------------------------------------------------------------ schedules
def test_cosine_schedule_follows_alpha_bar() -> None:
    betas = get_named_beta_schedule("squaredcos_cap_v2", 1000)
    assert betas.dtype == np.float64 and betas.shape == (1000,)
    abar = np.cumprod(1 - betas)
    f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for i in (0, 10, 500, 900):
        assert abar[i] == pytest.approx(f((i + 1) / 1000) / f(0), rel=1e-10)
    assert betas.max() == pytest.approx(0.999)  # capped at the end


def test_linear_schedule_endpoints_and_scaling() -> None:
    betas = get_named_beta_schedule("linear", 1000)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    short = get_named_beta_schedule("linear", 250)
    assert short[0] == pytest.approx(4e-4) and short[-1] == pytest.approx(0.08)
    with pytest.raises(ValueError):
        get_named_beta_schedule("quadratic", 10)


def test_invalid_betas_rejected() -> None:
    with pytest.raises(ValueError):
        GaussianDiffusion([0.1, 0.0, 0.2])


# ------------------------------------------------------------------------------------- forward q
def test_q_sample_statistics() -> None:
    diffusion = create_gaussian_diffusion(steps=100)
    x0 = torch.full((4000, 1, 2, 2), 0.7)
    t = torch.full((4000,), 60)
    xt = diffusion.q_sample(x0, t)
    abar = float(diffusion.alphas_cumprod[60])
    assert xt.mean().item() == pytest.approx(math.sqrt(abar) * 0.7, abs=0.02)
    assert xt.var().item() == pytest.approx(1 - abar, rel=0.05)
    mean, var, log_var = diffusion.q_mean_variance(x0[:2], t[:2])
    assert torch.allclose(mean, torch.full_like(mean, math.sqrt(abar) * 0.7))
    assert torch.allclose(var.squeeze(), torch.full((2,), 1 - abar))
    assert torch.allclose(log_var.exp(), var)


def test_q_posterior_matches_bayes_closed_form() -> None:
    diffusion = create_gaussian_diffusion(steps=50, noise_schedule="linear")
    x0, xt = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    t = torch.tensor([1, 20, 49])
    mean, var, log_var = diffusion.q_posterior_mean_variance(x0, xt, t)
    b = diffusion.betas[t].reshape(-1, 1, 1, 1)
    abar_prev = diffusion.alphas_cumprod_prev[t].reshape(-1, 1, 1, 1)
    # product of N(x_t; sqrt(1-b) x, b) and N(x; sqrt(abar_prev) x0, 1 - abar_prev) in x
    precision = (1 - b) / b + 1 / (1 - abar_prev)
    expected_var = 1 / precision
    expected_mean = expected_var * (
        (1 - b).sqrt() * xt / b + abar_prev.sqrt() * x0 / (1 - abar_prev)
    )
    assert torch.allclose(var, expected_var.float(), rtol=1e-5)
    assert torch.allclose(mean, expected_mean.float(), atol=1e-5)
    assert torch.allclose(log_var, expected_var.log().float(), atol=1e-5)


def test_posterior_at_t0_returns_x0() -> None:
    diffusion = create_gaussian_diffusion(steps=20)
    x0, xt = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    mean, _, _ = diffusion.q_posterior_mean_variance(x0, xt, torch.zeros(2, dtype=torch.long))
    assert torch.equal(mean, x0)


def test_xstart_eps_round_trip() -> None:
    diffusion = create_gaussian_diffusion(steps=100)
    x0, eps = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    t = torch.tensor([3, 70])
    xt = diffusion.q_sample(x0, t, noise=eps)
    assert torch.allclose(diffusion.predict_xstart_from_eps(xt, t, eps), x0, atol=1e-4)
    assert torch.allclose(diffusion.predict_eps_from_xstart(xt, t, x0), eps, atol=1e-3)


# ------------------------------------------------------------------------------------- reverse p
def test_learned_range_variance_endpoints() -> None:
    diffusion = create_gaussian_diffusion(steps=100)
    x = torch.randn(2, 3, 4, 4)
    t = torch.tensor([5, 80])
    lo = diffusion.p_mean_variance(_constant_model(torch.zeros(1), -torch.ones(1)), x, t)
    hi = diffusion.p_mean_variance(_constant_model(torch.zeros(1), torch.ones(1)), x, t)
    mid = diffusion.p_mean_variance(_constant_model(torch.zeros(1), torch.zeros(1)), x, t)
    post = diffusion.posterior_variance[t].float().reshape(-1, 1, 1, 1)
    beta = diffusion.betas[t].float().reshape(-1, 1, 1, 1)
    assert torch.allclose(lo["variance"], post.expand_as(x), rtol=1e-5)
    assert torch.allclose(hi["variance"], beta.expand_as(x), rtol=1e-5)
    assert torch.allclose(mid["variance"], (post * beta).sqrt().expand_as(x), rtol=1e-5)


def test_p_mean_variance_clips_then_applies_denoised_fn() -> None:
    diffusion = create_gaussian_diffusion(steps=10)
    x = torch.full((1, 3, 2, 2), 5.0)
    t = torch.tensor([9])
    model = _constant_model(torch.full((1,), -5.0), torch.zeros(1))
    assert diffusion.p_mean_variance(model, x, t)["pred_xstart"].max() == 1.0
    unclipped = diffusion.p_mean_variance(model, x, t, clip_denoised=False)["pred_xstart"]
    assert unclipped.min() > 1.0
    out = diffusion.p_mean_variance(model, x, t, denoised_fn=lambda x0: x0 * 3)
    assert torch.allclose(out["pred_xstart"], torch.full_like(x, 3.0))


def test_wrong_model_output_shape_raises() -> None:
    diffusion = create_gaussian_diffusion(steps=10)
    with pytest.raises(ValueError, match="2C"):
        diffusion.p_mean_variance(lambda x, t: x, torch.zeros(1, 3, 2, 2), torch.tensor([1]))


def test_p_sample_noise_and_cond_fn_shift() -> None:
    diffusion = create_gaussian_diffusion(steps=10)
    model = _random_model()
    x = torch.randn(2, 3, 4, 4)
    noise = torch.randn_like(x)
    t = torch.tensor([0, 5])
    out = diffusion.p_mean_variance(model, x, t)
    sample = diffusion.p_sample(model, x, t, noise=noise)["sample"]
    assert torch.equal(sample[0], out["mean"][0])  # no noise at t == 0
    expected = out["mean"][1] + torch.exp(0.5 * out["log_variance"][1]) * noise[1]
    assert torch.allclose(sample[1], expected)

    grad = torch.randn_like(x)
    seen: list[torch.Tensor] = []

    def cond_fn(x_t: torch.Tensor, t_: torch.Tensor, **kwargs) -> torch.Tensor:
        seen.append(t_)
        return grad

    guided = diffusion.p_sample(model, x, t, noise=noise, cond_fn=cond_fn)["sample"]
    assert torch.allclose(guided - sample, out["variance"] * grad, atol=1e-6)
    assert torch.equal(seen[0], t)


def test_ddim_eta0_deterministic_and_reversible() -> None:
    diffusion = create_gaussian_diffusion(steps=50)
    model = _random_model(1)
    x = torch.randn(2, 3, 4, 4) * 0.5
    t = torch.tensor([20, 20])
    a = diffusion.ddim_sample(model, x, t, clip_denoised=False)["sample"]
    b = diffusion.ddim_sample(model, x, t, clip_denoised=False)["sample"]
    assert torch.equal(a, b)
    # the model hardly changes between neighbouring steps, so reversing recovers x closely
    back = diffusion.ddim_reverse_sample(model, a, t - 1, clip_denoised=False)["sample"]
    assert torch.allclose(back, x, atol=5e-3)


def test_ddim_eta1_variance_is_posterior_variance() -> None:
    diffusion = create_gaussian_diffusion(steps=20)
    model = _random_model(2)
    x = torch.zeros(1, 3, 1, 1).expand(4000, 3, 1, 1).contiguous()
    t = torch.full((4000,), 10)
    samples = diffusion.ddim_sample(model, x, t, eta=1.0)["sample"]
    assert samples.var(0).mean().item() == pytest.approx(
        float(diffusion.posterior_variance[10]), rel=0.08
    )


def test_sampling_loops_shapes_generator_and_temperature() -> None:
    diffusion = create_gaussian_diffusion(steps=8)
    model = _random_model(3)
    shape = (2, 3, 4, 4)
    run = lambda **kw: diffusion.p_sample_loop(  # noqa: E731
        model, shape, generator=torch.Generator().manual_seed(7), **kw
    )
    a, b = run(), run()
    assert a.shape == shape and torch.equal(a, b)
    assert a.abs().max() <= 1.0  # the last step returns the clipped x0 prediction
    steps = list(diffusion.p_sample_loop_progressive(model, shape, progress=True))
    assert len(steps) == 8

    noise = torch.randn(shape)
    d1 = diffusion.ddim_sample_loop(model, shape, noise=noise * 0.5, clip_denoised=False)
    d2 = diffusion.ddim_sample_loop(
        model, shape, noise=noise, noise_temperature=0.5, clip_denoised=False
    )
    assert torch.equal(d1, d2)
    with pytest.raises(ValueError):
        diffusion.ddim_sample_loop(model, shape, noise=torch.randn(1, 3, 4, 4))


def test_inpainting_keeps_known_region_exactly() -> None:
    diffusion = create_gaussian_diffusion(steps=10, timestep_respacing="5")
    known = torch.rand(2, 3, 8, 8) * 2 - 1
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., :4] = 1
    paste = inpaint_denoised_fn(known, mask)
    for loop in (diffusion.p_sample_loop, diffusion.ddim_sample_loop):
        sample = loop(_random_model(4), known.shape, denoised_fn=paste)
        assert torch.equal(sample[..., :4], known[..., :4])
        assert not torch.allclose(sample[..., 4:], known[..., 4:])


# ------------------------------------------------------------------------------------- losses
def test_normal_kl_and_discretized_likelihood() -> None:
    m, lv = torch.randn(5), torch.randn(5)
    assert torch.allclose(normal_kl(m, lv, m, lv), torch.zeros(5), atol=1e-6)
    kl = normal_kl(
        torch.tensor(0.0), torch.tensor(0.0), torch.tensor(1.0), torch.tensor(math.log(4.0))
    )
    assert kl.item() == pytest.approx(0.5 * (math.log(4) - 1 + 0.25 + 0.25))
    # the 256 bins cover the line: probabilities sum to ~1
    levels = torch.linspace(-1, 1, 256)
    logp = discretized_gaussian_log_likelihood(
        levels, means=torch.full((256,), 0.1), log_scales=torch.full((256,), math.log(0.3))
    )
    assert logp.exp().sum().item() == pytest.approx(1.0, abs=2e-3)
    assert torch.equal(mean_flat(torch.ones(2, 3, 4)), torch.ones(2))


def test_training_losses_terms_and_gradients() -> None:
    diffusion = create_gaussian_diffusion(steps=100)
    x0 = torch.rand(3, 3, 4, 4) * 2 - 1
    t = torch.tensor([0, 40, 99])
    noise = torch.randn_like(x0)
    output = torch.randn(3, 6, 4, 4, requires_grad=True)
    terms = diffusion.training_losses(lambda x, t_: output, x0, t, noise=noise)
    assert set(terms) == {"mse", "vb", "loss"} and terms["loss"].shape == (3,)
    assert torch.allclose(terms["mse"], mean_flat((noise - output[:, :3]) ** 2))
    assert torch.allclose(terms["loss"], terms["mse"] + terms["vb"])
    (grad_vb,) = torch.autograd.grad(terms["vb"].sum(), output, retain_graph=True)
    assert grad_vb[:, :3].abs().max() == 0 and grad_vb[:, 3:].abs().max() > 0
    (grad_mse,) = torch.autograd.grad(terms["mse"].sum(), output)
    assert grad_mse[:, 3:].abs().max() == 0


def test_training_loss_vb_vanishes_for_true_posterior() -> None:
    diffusion = create_gaussian_diffusion(steps=100)
    x0 = torch.rand(2, 3, 4, 4) * 2 - 1
    t = torch.tensor([30, 60])
    noise = torch.randn_like(x0)
    # the exact eps and the posterior variance (v = -1) make the KL term zero
    output = torch.cat([noise, -torch.ones_like(noise)], dim=1)
    terms = diffusion.training_losses(lambda x, t_: output, x0, t, noise=noise)
    assert terms["mse"].abs().max() == 0
    assert terms["vb"].abs().max() < 1e-3
