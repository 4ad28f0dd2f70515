"""eps / x0 / v parametrizations, the timestep samplers and min-SNR weighting.

The samplers must not care what a model predicts: an eps model and the same model re-expressed as
an x0 or v model give the same sample with every sampler, in float64 to round-off.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from glide.diffusion import (
    PARAMETRIZATIONS,
    GaussianDiffusion,
    LossSecondMomentSampler,
    TrainingObjective,
    UniformSampler,
    create_gaussian_diffusion,
    dpm_solver_pp_2m_sample,
    inpaint_denoised_fn,
    min_snr_weight,
)
from glide.guidance import ClassifierFreeGuidance

T = 100


def _eps_model(seed: int = 0):
    """A fixed float64 'network' [B,3,H,W] -> [B,6,H,W] (eps, variance values) depending on t."""
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn(6, 3, generator=gen) * 0.3).double()

    def model(x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        out = torch.einsum("oc,bchw->bohw", w, x) + (t.double() / T).reshape(-1, 1, 1, 1)
        if "tokens" in kwargs:  # classifier-free: the "caption" shifts the prediction
            out = out + 0.1 * kwargs["tokens"].double().reshape(-1, 1, 1, 1)
        return torch.tanh(out)

    return model


class Reparametrized:
    """An eps model re-expressed as a ``target`` model of the (unspaced) ``process``."""

    def __init__(self, model: Any, process: GaussianDiffusion, target: str) -> None:
        self.model, self.process, self.target = model, process, target

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        out = self.model(x, t, **kwargs)
        c = x.shape[1]
        pred = self.process.convert_prediction(x, t, out[:, :c], source="eps", target=self.target)
        return torch.cat([pred, out[:, c:]], dim=1)


def _x0_eps(shape=(3, 3, 4, 4), seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1
    return x0, torch.randn(shape, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("source", PARAMETRIZATIONS)
@pytest.mark.parametrize("target", PARAMETRIZATIONS)
def test_conversions_are_exact_in_float64(source: str, target: str) -> None:
    d = create_gaussian_diffusion(steps=T)
    x0, eps = _x0_eps()
    t = torch.tensor([0, T // 2, T - 1])
    x_t = d.q_sample(x0, t, eps)
    truth = {"eps": eps, "x0": x0, "v": d.predict_v(x0, t, eps)}
    converted = d.convert_prediction(x_t, t, truth[source], source=source, target=target)
    assert converted.dtype == torch.float64
    torch.testing.assert_close(converted, truth[target], rtol=0, atol=1e-10)
    # the process reads each parametrization back to the same x0 and regression target
    p = GaussianDiffusion(d.betas, parametrization=source)
    torch.testing.assert_close(p.predict_xstart(x_t, t, truth[source]), x0, rtol=0, atol=1e-10)
    torch.testing.assert_close(p.prediction_target(x0, t, eps), truth[source], rtol=0, atol=0)


def test_v_identities() -> None:
    d = create_gaussian_diffusion(steps=T)
    x0, eps = _x0_eps()
    t = torch.tensor([3, 40, 99])
    x_t, v = d.q_sample(x0, t, eps), d.predict_v(x0, t, eps)
    a = d.sqrt_alphas_cumprod[t].reshape(-1, 1, 1, 1)
    s = d.sqrt_one_minus_alphas_cumprod[t].reshape(-1, 1, 1, 1)
    # eps = sigma x_t + alpha v
    torch.testing.assert_close(s * x_t + a * v, eps, rtol=0, atol=1e-12)
    torch.testing.assert_close(d.predict_xstart_from_v(x_t, t, v), x0, rtol=0, atol=1e-12)


def test_unknown_parametrization_is_named() -> None:
    with pytest.raises(ValueError, match="'score'"):
        create_gaussian_diffusion(steps=10, parametrization="score")


def _sample(kind: str, parametrization: str) -> torch.Tensor:
    """One sampler run with the eps model re-expressed as ``parametrization``."""
    base = create_gaussian_diffusion(steps=T)  # the model's own process (original timesteps)
    model = Reparametrized(_eps_model(), base, parametrization)
    shape = (2, 3, 4, 4)
    gen = torch.Generator().manual_seed(5)
    noise = torch.randn(shape, generator=gen, dtype=torch.float64)
    known = torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1
    mask = (torch.rand(2, 1, 4, 4, generator=gen) > 0.5).double()
    common: dict[str, Any] = {"noise": noise, "generator": torch.Generator().manual_seed(9)}
    if kind == "dpm++":
        d = create_gaussian_diffusion(steps=T, parametrization=parametrization)
        return dpm_solver_pp_2m_sample(d, model, shape, steps=8, **common)
    respaced = create_gaussian_diffusion(
        steps=T, timestep_respacing="10", parametrization=parametrization
    )
    if kind == "ancestral":
        return respaced.p_sample_loop(model, shape, **common)
    if kind == "ddim":
        return respaced.ddim_sample_loop(model, shape, eta=0.0, **common)
    if kind == "ddim-eta1":
        return respaced.ddim_sample_loop(model, shape, eta=1.0, **common)
    if kind == "clip-ancestral":  # a cond_fn moves the mean by variance x gradient
        return respaced.p_sample_loop(model, shape, cond_fn=lambda x, t, **k: -0.3 * x, **common)
    if kind == "clip-ddim":  # ... and shifts eps in the deterministic sampler
        return respaced.ddim_sample_loop(model, shape, cond_fn=lambda x, t, **k: -0.3 * x, **common)
    if kind == "inpaint":
        paste = inpaint_denoised_fn(known, mask)
        return respaced.p_sample_loop(model, shape, denoised_fn=paste, **common)
    if kind == "cfg":
        guided = ClassifierFreeGuidance(model, 3.0)
        kwargs = {"tokens": torch.tensor([1, 2, 0, 0])}
        big = (4, *shape[1:])
        out = respaced.p_sample_loop(
            guided,
            big,
            model_kwargs=kwargs,
            noise=torch.cat([noise, noise]),
            generator=common["generator"],
        )
        return out[:2]  # the conditional half is the sample (the other only carries x_t)
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    ["ancestral", "ddim", "ddim-eta1", "dpm++", "clip-ancestral", "clip-ddim", "inpaint", "cfg"],
)
def test_every_sampler_ignores_the_parametrization(kind: str) -> None:
    eps = _sample(kind, "eps")
    assert eps.dtype == torch.float64 and eps.abs().sum() > 0
    for parametrization in ("x0", "v"):
        torch.testing.assert_close(_sample(kind, parametrization), eps, rtol=1e-9, atol=1e-9)


def test_training_loss_targets_the_parametrization() -> None:
    """An exact model of each kind has zero regression loss; the vb term does not depend on it."""
    x0, eps = _x0_eps(seed=3)
    t = torch.tensor([0, 50, 99])
    vbs = []
    for parametrization in PARAMETRIZATIONS:
        d = create_gaussian_diffusion(steps=T, parametrization=parametrization)
        x_t = d.q_sample(x0, t, eps)
        exact = d.prediction_target(x0, t, eps)

        def model(x, tt, exact=exact, x_t=x_t):
            assert torch.equal(x, x_t)
            return torch.cat([exact, torch.zeros_like(exact)], dim=1)

        out = d.training_losses(model, x0, t, noise=eps)
        assert float(out["mse"].abs().max()) < 1e-20
        vbs.append(out["vb"])
    torch.testing.assert_close(vbs[1], vbs[0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(vbs[2], vbs[0], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
def test_min_snr_weight_is_min_snr_times_x0_error(parametrization: str) -> None:
    """Weighted, every parametrization's MSE is ``min(SNR, gamma) * ||x0 - x0_hat||^2``."""
    d = create_gaussian_diffusion(steps=T, parametrization=parametrization)
    x0, eps = _x0_eps(seed=4)
    t = torch.tensor([1, 30, 90])
    x_t = d.q_sample(x0, t, eps)
    wrong = d.prediction_target(x0, t, eps) + 0.1 * torch.randn_like(x0)
    x0_hat = d.predict_xstart(x_t, t, wrong)
    mse = ((d.prediction_target(x0, t, eps) - wrong) ** 2).mean(dim=(1, 2, 3))
    weighted = mse * min_snr_weight(d.snr(t), 5.0, parametrization)
    expected = d.snr(t).clamp(max=5.0) * ((x0 - x0_hat) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(weighted, expected, rtol=1e-9, atol=0)


def _warm(sampler: LossSecondMomentSampler, seed: int = 0) -> torch.Tensor:
    """Fill every history with losses that grow with t; return the true per-step loss."""
    gen = torch.Generator().manual_seed(seed)
    true = torch.linspace(0.1, 2.0, sampler.num_timesteps, dtype=torch.float64)
    while not sampler.warmed_up():
        t = torch.randint(0, sampler.num_timesteps, (64,), generator=gen)
        sampler.update(t, true[t] * (1 + 0.1 * torch.randn(64, generator=gen, dtype=torch.float64)))
    return true


@pytest.mark.parametrize("bins", [None, 7])
def test_importance_weights_are_unbiased(bins: int | None) -> None:
    sampler = LossSecondMomentSampler(50, num_bins=bins)
    assert torch.allclose(sampler.probabilities(), torch.full((50,), 1 / 50, dtype=torch.float64))
    true = _warm(sampler)
    p = sampler.probabilities()
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-12)
    assert float(p[-1]) > 2 * float(p[0])  # high-loss steps drawn more often
    weights = 1.0 / (50 * p)
    # exactly: E_p[w(t) L(t)] is the uniform mean of L
    assert float((p * weights * true).sum()) == pytest.approx(float(true.mean()), rel=1e-12)
    # and by sampling: the weights the sampler hands out average L correctly
    torch.manual_seed(0)
    t, w = sampler.sample(200_000)
    assert float((w.double() * true[t]).mean()) == pytest.approx(float(true.mean()), rel=0.01)
    assert float(true[t].mean()) > 1.05 * float(true.mean())  # ... though t is not uniform


def test_importance_sampler_state_round_trips_and_skips_non_finite() -> None:
    a = LossSecondMomentSampler(20, num_bins=5, history=3)
    _warm(a)
    b = LossSecondMomentSampler(20, num_bins=5, history=3)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.probabilities(), b.probabilities())
    before = b.probabilities().clone()
    b.update(torch.tensor([0, 1]), torch.tensor([float("nan"), float("inf")]))
    assert torch.equal(b.probabilities(), before)
    with pytest.raises(ValueError, match="num_bins"):
        LossSecondMomentSampler(20, num_bins=4, history=3).load_state_dict(a.state_dict())


def test_uniform_sampler_draws_every_step_with_unit_weights() -> None:
    torch.manual_seed(0)
    t, w = UniformSampler(10).sample(5000)
    assert set(t.tolist()) == set(range(10)) and bool((w == 1).all())


def test_training_objective_records_drawn_steps_only() -> None:
    d = create_gaussian_diffusion(steps=T, parametrization="v")
    objective = TrainingObjective(
        d, timestep_sampler="loss_second_moment", timestep_bins=4, loss_weighting="min_snr"
    )
    model = _eps_model()
    x0, _ = _x0_eps(seed=6)
    out = objective.losses(model, x0, t=torch.tensor([5, 6, 7]))
    assert int(objective.sampler.counts.sum()) == 0  # validation: fixed t, nothing recorded
    assert float(out["objective"]) == pytest.approx(float(out["loss"].mean()))
    torch.manual_seed(0)
    out = objective.losses(model, x0)
    assert int(objective.sampler.counts.sum()) == 3 and out["t"].shape == (3,)
    with pytest.raises(ValueError, match="loss_weighting"):
        TrainingObjective(d, loss_weighting="p2")
