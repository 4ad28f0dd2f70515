"""The Gaussian diffusion of GLIDE: forward process q, learned reverse process p, samplers, loss.

Notation follows Ho et al. (2020) and Nichol & Dhariwal (2021): ``alpha_t = 1 - beta_t``,
``abar_t = prod_{s<=t} alpha_s``, ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``. Timesteps are
integer indices ``t`` in ``0..T-1`` into this object's betas (index 0 is one noising step).

The model is any callable ``model(x_t, t, **model_kwargs) -> [B, 2C, H, W]``: the first C channels
are its *prediction*, the last C the learned-range variance values in [-1, 1] that interpolate, in
log space, between the posterior variance ``beta~_t`` (-1) and ``beta_t`` (+1). What the
prediction means is the process's ``parametrization``:

- ``"eps"``: the noise ``eps`` (GLIDE, and every released checkpoint);
- ``"x0"``: the clean image ``x_0`` (ADM's ``predict_xstart``);
- ``"v"``: the velocity ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0`` (Salimans & Ho, 2022),
  x0-like at high noise and eps-like at low noise.

With ``alpha_t = sqrt(abar_t)`` and ``sigma_t = sqrt(1 - abar_t)`` (so ``alpha^2 + sigma^2 = 1``):
``x_0 = alpha x_t - sigma v`` and ``eps = sigma x_t + alpha v``. Every prediction is affine in the
others for fixed ``(x_t, t)``, so guidance that extrapolates raw outputs (classifier-free) means
the same thing in each. A respaced process (see :mod:`glide.diffusion.respace`) keeps a
``timestep_map`` and hands the model the original timesteps it was trained on.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor

from glide.diffusion.losses import discretized_gaussian_log_likelihood, mean_flat, normal_kl
from glide.diffusion.noise import NoiseGenerator, draw_noise

__all__ = ["PARAMETRIZATIONS", "CondFn", "DenoisedFn", "GaussianDiffusion", "Model"]

PARAMETRIZATIONS = ("eps", "x0", "v")

Model = Callable[..., Tensor]
"""``model(x_t [B,C,H,W], t [B] int64, **model_kwargs) -> [B, 2C, H, W]``."""
CondFn = Callable[..., Tensor]
"""``cond_fn(x_t, t, **model_kwargs) -> grad_x log p(y | x_t)``, shaped like ``x_t``."""
DenoisedFn = Callable[[Tensor], Tensor]
"""Applied to every (clipped) ``x_0`` prediction before it is used, e.g. to paste known pixels."""


def _gather(values: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """``values[t]`` shaped [B, 1, ..., 1] to broadcast against ``like``, on ``t``'s device.

    float32 (what the release computes in), or float64 when ``like`` is float64, so that the
    parametrization conversions can be checked exactly in double precision.
    """
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    out = values[t.cpu()].to(device=t.device, dtype=dtype)
    return out.reshape(-1, *([1] * (like.ndim - 1)))


class _TimestepMappedModel:
    """Calls ``model`` with ``timestep_map[t]`` in place of the respaced index ``t``."""

    def __init__(self, model: Model, timestep_map: Tensor) -> None:
        self.model = model
        self.timestep_map = timestep_map

    def __call__(self, x: Tensor, t: Tensor, **kwargs: Any) -> Tensor:
        return self.model(x, self.timestep_map.to(t.device)[t], **kwargs)


class GaussianDiffusion:
    """A T-step Gaussian diffusion with float64 coefficient tables (indexed by ``t``).

    Args:
        betas: [T] noise schedule, each in (0, 1].
        timestep_map: [T] original timesteps fed to the model for each index; ``None`` means the
            identity (an unspaced process).
        parametrization: what the model's prediction channels are: ``"eps"`` (GLIDE), ``"x0"``
            or ``"v"`` (see the module docstring).
    """

    def __init__(
        self,
        betas: Sequence[float] | np.ndarray | Tensor,
        *,
        timestep_map: Sequence[int] | None = None,
        parametrization: str = "eps",
    ) -> None:
        if parametrization not in PARAMETRIZATIONS:
            raise ValueError(
                f"unknown parametrization {parametrization!r}; expected one of {PARAMETRIZATIONS}"
            )
        self.parametrization = parametrization
        b = torch.as_tensor(np.asarray(betas, dtype=np.float64))
        if b.ndim != 1 or not bool(((b > 0) & (b <= 1)).all()):
            raise ValueError("betas must be a 1-D array with values in (0, 1]")
        self.num_timesteps = int(b.shape[0])
        self.timestep_map = torch.as_tensor(
            list(range(self.num_timesteps)) if timestep_map is None else list(timestep_map),
            dtype=torch.long,
        )
        if self.timestep_map.shape != (self.num_timesteps,):
            raise ValueError("timestep_map must hold one original timestep per beta")

        self.betas = b
        self.alphas_cumprod = torch.cumprod(1.0 - b, dim=0)
        self.alphas_cumprod_prev = torch.cat([b.new_ones(1), self.alphas_cumprod[:-1]])
        abar, abar_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        self.sqrt_alphas_cumprod = abar.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - abar).sqrt()
        self.log_one_minus_alphas_cumprod = torch.log(1.0 - abar)
        self.sqrt_recip_alphas_cumprod = (1.0 / abar).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / abar - 1.0).sqrt()
        # q(x_{t-1} | x_t, x_0) = N(c1 x_0 + c2 x_t, beta~_t); beta~_0 = 0, so its log borrows beta~_1.
        self.posterior_variance = b * (1.0 - abar_prev) / (1.0 - abar)
        fill = self.posterior_variance[1:2] if self.num_timesteps > 1 else b[:1]
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([fill, self.posterior_variance[1:]])
        )
        self.posterior_mean_coef1 = b * abar_prev.sqrt() / (1.0 - abar)
        self.posterior_mean_coef2 = (1.0 - abar_prev) * (1.0 - b).sqrt() / (1.0 - abar)
        self.log_betas = torch.log(b)

    # ----------------------------------------------------------------------------- model access
    def wrap_model(self, model: Callable[..., Tensor]) -> Callable[..., Tensor]:
        """``model`` (or a ``cond_fn``) as seen from this process: fed the original timesteps."""
        if isinstance(model, _TimestepMappedModel) or bool(
            (self.timestep_map == torch.arange(self.num_timesteps)).all()
        ):
            return model
        return _TimestepMappedModel(model, self.timestep_map)

    # -------------------------------------------------------------------------------- forward q
    def q_mean_variance(self, x_start: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and log-variance of ``q(x_t | x_0)``; mean [B,C,H,W], others [B,1,1,1]."""
        mean = _gather(self.sqrt_alphas_cumprod, t, x_start) * x_start
        return (
            mean,
            _gather(1.0 - self.alphas_cumprod, t, x_start),
            _gather(self.log_one_minus_alphas_cumprod, t, x_start),
        )

    def q_sample(self, x_start: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        """Draw ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``; x_start, noise: [B,C,H,W]; t: [B]."""
        if noise is None:
            noise = torch.randn_like(x_start)
        return (
            _gather(self.sqrt_alphas_cumprod, t, x_start) * x_start
            + _gather(self.sqrt_one_minus_alphas_cumprod, t, x_start) * noise
        )

    def q_posterior_mean_variance(
        self, x_start: Tensor, x_t: Tensor, t: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Mean [B,C,H,W], variance and clipped log-variance [B,1,1,1] of ``q(x_{t-1} | x_t, x_0)``."""
        mean = (
            _gather(self.posterior_mean_coef1, t, x_t) * x_start
            + _gather(self.posterior_mean_coef2, t, x_t) * x_t
        )
        return (
            mean,
            _gather(self.posterior_variance, t, x_t),
            _gather(self.posterior_log_variance_clipped, t, x_t),
        )

    def predict_xstart_from_eps(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """``x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``."""
        return (
            _gather(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - _gather(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
        )

    def predict_eps_from_xstart(self, x_t: Tensor, t: Tensor, pred_xstart: Tensor) -> Tensor:
        """The ``eps`` that maps ``x_0`` to ``x_t`` (inverse of :meth:`predict_xstart_from_eps`)."""
        return (_gather(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - pred_xstart) / _gather(
            self.sqrt_recipm1_alphas_cumprod, t, x_t
        )

    def predict_v(self, x_start: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0``, the v-parametrization's target."""
        return (
            _gather(self.sqrt_alphas_cumprod, t, x_start) * noise
            - _gather(self.sqrt_one_minus_alphas_cumprod, t, x_start) * x_start
        )

    def predict_xstart_from_v(self, x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
        """``x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v``."""
        return (
            _gather(self.sqrt_alphas_cumprod, t, x_t) * x_t
            - _gather(self.sqrt_one_minus_alphas_cumprod, t, x_t) * v
        )

    def predict_xstart(self, x_t: Tensor, t: Tensor, prediction: Tensor) -> Tensor:
        """The (unclipped) ``x_0`` implied by a model prediction under this parametrization."""
        if self.parametrization == "eps":
            return self.predict_xstart_from_eps(x_t, t, prediction)
        if self.parametrization == "x0":
            return prediction
        return self.predict_xstart_from_v(x_t, t, prediction)

    def prediction_target(self, x_start: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """What the model should predict for ``x_t = q_sample(x_start, t, noise)``."""
        if self.parametrization == "eps":
            return noise
        if self.parametrization == "x0":
            return x_start
        return self.predict_v(x_start, t, noise)

    def convert_prediction(
        self, x_t: Tensor, t: Tensor, prediction: Tensor, *, source: str, target: str
    ) -> Tensor:
        """Re-express a ``source``-parametrized prediction at ``(x_t, t)`` as a ``target`` one."""
        for name in (source, target):
            if name not in PARAMETRIZATIONS:
                raise ValueError(f"unknown parametrization {name!r}")
        if source == target:
            return prediction
        alpha = _gather(self.sqrt_alphas_cumprod, t, x_t)
        sigma = _gather(self.sqrt_one_minus_alphas_cumprod, t, x_t)
        if source == "eps":
            eps, x0 = prediction, (x_t - sigma * prediction) / alpha
        elif source == "x0":
            eps, x0 = (x_t - alpha * prediction) / sigma, prediction
        else:
            eps, x0 = sigma * x_t + alpha * prediction, alpha * x_t - sigma * prediction
        return {"eps": eps, "x0": x0, "v": alpha * eps - sigma * x0}[target]

    def snr(self, t: Tensor) -> Tensor:
        """Signal-to-noise ratio ``abar_t / (1 - abar_t)`` per index, float64 [B]."""
        abar = self.alphas_cumprod[t.cpu()]
        return (abar / (1.0 - abar)).to(t.device)

    # ------------------------------------------------------------------------------- reverse p
    def p_mean_variance_from_output(
        self,
        model_output: Tensor,
        x: Tensor,
        t: Tensor,
        *,
        clip_denoised: bool = True,
        denoised_fn: DenoisedFn | None = None,
    ) -> dict[str, Tensor]:
        """``p(x_{t-1} | x_t)`` from a raw model output [B, 2C, H, W] (prediction, variance values).

        ``pred_xstart`` is clipped to [-1, 1] when ``clip_denoised``, then passed through
        ``denoised_fn``. Returns ``mean``, ``variance``, ``log_variance``, ``pred_xstart``
        (all [B, C, H, W]) and ``prediction`` (the model's raw prediction channels).
        """
        c = x.shape[1]
        if model_output.shape != (x.shape[0], 2 * c, *x.shape[2:]):
            raise ValueError(
                f"model output {tuple(model_output.shape)} is not [B, 2C, ...] for x {tuple(x.shape)}"
            )
        prediction, var_values = model_output[:, :c], model_output[:, c:]
        min_log = _gather(self.posterior_log_variance_clipped, t, x)
        max_log = _gather(self.log_betas, t, x)
        frac = (var_values + 1) / 2
        log_variance = frac * max_log + (1 - frac) * min_log

        pred_xstart = self.predict_xstart(x, t, prediction)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        if denoised_fn is not None:
            pred_xstart = denoised_fn(pred_xstart)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return {
            "mean": mean,
            "variance": torch.exp(log_variance),
            "log_variance": log_variance,
            "pred_xstart": pred_xstart,
            "prediction": prediction,
        }

    def p_mean_variance(
        self,
        model: Model,
        x: Tensor,
        t: Tensor,
        *,
        clip_denoised: bool = True,
        denoised_fn: DenoisedFn | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, Tensor]:
        """Run the model at ``(x_t [B,C,H,W], t [B])`` and return ``p(x_{t-1} | x_t)``.

        See :meth:`p_mean_variance_from_output` for the keys.
        """
        output = self.wrap_model(model)(x, t, **(model_kwargs or {}))
        return self.p_mean_variance_from_output(
            output, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn
        )

    def condition_mean(
        self,
        cond_fn: CondFn,
        out: dict[str, Tensor],
        x: Tensor,
        t: Tensor,
        model_kwargs: dict[str, Any],
    ) -> Tensor:
        """Sohl-Dickstein et al.'s guided mean ``mu + Sigma * grad_x log p(y | x_t)``."""
        grad = self.wrap_model(cond_fn)(x, t, **model_kwargs)
        dtype = torch.promote_types(out["mean"].dtype, torch.float32)  # float32 at least
        return out["mean"].to(dtype) + out["variance"] * grad.to(dtype)

    def condition_score(
        self,
        cond_fn: CondFn,
        out: dict[str, Tensor],
        x: Tensor,
        t: Tensor,
        model_kwargs: dict[str, Any],
    ) -> dict[str, Tensor]:
        """Song et al.'s score shift ``eps - sqrt(1 - abar_t) grad``, for the deterministic sampler."""
        grad = self.wrap_model(cond_fn)(x, t, **model_kwargs)
        eps = self.predict_eps_from_xstart(x, t, out["pred_xstart"])
        eps = eps - _gather(self.sqrt_one_minus_alphas_cumprod, t, x) * grad
        new = dict(out)
        new["pred_xstart"] = self.predict_xstart_from_eps(x, t, eps)
        new["mean"], _, _ = self.q_posterior_mean_variance(new["pred_xstart"], x, t)
        return new

    def p_sample(
        self,
        model: Model,
        x: Tensor,
        t: Tensor,
        *,
        clip_denoised: bool = True,
        denoised_fn: DenoisedFn | None = None,
        cond_fn: CondFn | None = None,
        model_kwargs: dict[str, Any] | None = None,
        noise: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """One ancestral step ``x_{t-1} ~ p(x_{t-1} | x_t)``; no noise where ``t == 0``.

        Returns ``sample`` and ``pred_xstart``, both [B, C, H, W].
        """
        model_kwargs = model_kwargs or {}
        out = self.p_mean_variance(
            model,
            x,
            t,
            clip_denoised=clip_denoised,
            denoised_fn=denoised_fn,
            model_kwargs=model_kwargs,
        )
        if cond_fn is not None:
            out["mean"] = self.condition_mean(cond_fn, out, x, t, model_kwargs)
        if noise is None:
            noise = torch.randn_like(x)
        nonzero = (t != 0).float().reshape(-1, *([1] * (x.ndim - 1)))
        sample = out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def ddim_sample(
        self,
        model: Model,
        x: Tensor,
        t: Tensor,
        *,
        eta: float = 0.0,
        clip_denoised: bool = True,
        denoised_fn: DenoisedFn | None = None,
        cond_fn: CondFn | None = None,
        model_kwargs: dict[str, Any] | None = None,
        noise: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """One DDIM step (Song et al. 2021, eq. 12) from index ``t`` to ``t - 1``.

        ``x_{t-1} = sqrt(abar_{t-1}) x_0 + sqrt(1 - abar_{t-1} - sigma^2) eps + sigma z`` with
        ``sigma = eta sqrt((1 - abar_{t-1}) / (1 - abar_t)) sqrt(1 - abar_t / abar_{t-1})``;
        ``eta = 0`` is deterministic, ``eta = 1`` matches the ancestral variance ``beta~_t``.
        """
        model_kwargs = model_kwargs or {}
        out = self.p_mean_variance(
            model,
            x,
            t,
            clip_denoised=clip_denoised,
            denoised_fn=denoised_fn,
            model_kwargs=model_kwargs,
        )
        if cond_fn is not None:
            out = self.condition_score(cond_fn, out, x, t, model_kwargs)
        eps = self.predict_eps_from_xstart(x, t, out["pred_xstart"])
        abar = _gather(self.alphas_cumprod, t, x)
        abar_prev = _gather(self.alphas_cumprod_prev, t, x)
        sigma = eta * torch.sqrt((1 - abar_prev) / (1 - abar)) * torch.sqrt(1 - abar / abar_prev)
        mean = (
            out["pred_xstart"] * torch.sqrt(abar_prev) + torch.sqrt(1 - abar_prev - sigma**2) * eps
        )
        if eta == 0.0:
            return {"sample": mean, "pred_xstart": out["pred_xstart"]}
        if noise is None:
            noise = torch.randn_like(x)
        nonzero = (t != 0).float().reshape(-1, *([1] * (x.ndim - 1)))
        return {"sample": mean + nonzero * sigma * noise, "pred_xstart": out["pred_xstart"]}

    def ddim_reverse_sample(
        self,
        model: Model,
        x: Tensor,
        t: Tensor,
        *,
        clip_denoised: bool = True,
        denoised_fn: DenoisedFn | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, Tensor]:
        """Deterministic DDIM step *up* the chain, from ``x`` at index ``t`` to index ``t + 1``."""
        out = self.p_mean_variance(
            model,
            x,
            t,
            clip_denoised=clip_denoised,
            denoised_fn=denoised_fn,
            model_kwargs=model_kwargs,
        )
        eps = self.predict_eps_from_xstart(x, t, out["pred_xstart"])
        abar_next = torch.cat([self.alphas_cumprod[1:], self.alphas_cumprod.new_zeros(1)])
        a = _gather(abar_next, t, x)
        return {
            "sample": out["pred_xstart"] * torch.sqrt(a) + torch.sqrt(1 - a) * eps,
            "pred_xstart": out["pred_xstart"],
        }

    # ------------------------------------------------------------------------------- sampling loops
    def _initial_noise(
        self,
        model: Model,
        shape: Sequence[int],
        noise: Tensor | None,
        noise_temperature: float,
        device: torch.device | str | None,
        generator: NoiseGenerator | None,
    ) -> Tensor:
        """``x_T`` (given or drawn on ``device``, else the model's device) times the temperature."""
        if device is None and isinstance(model, torch.nn.Module):
            device = next(model.parameters(), torch.empty(0)).device
        if noise is None:
            noise = draw_noise(shape, generator, device=device)
        elif tuple(noise.shape) != tuple(shape):
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {tuple(shape)}")
        return noise * noise_temperature

    def _indices(self, progress: bool) -> Iterable[int]:
        """``T-1, ..., 0``, behind a tqdm progress bar when asked."""
        indices = range(self.num_timesteps - 1, -1, -1)
        if progress:
            from tqdm.auto import tqdm

            return tqdm(indices)
        return indices

    def _loop(
        self,
        step: Callable[..., dict[str, Tensor]],
        x: Tensor,
        *,
        step_noise: bool,
        progress: bool,
        generator: NoiseGenerator | None,
    ) -> Iterator[dict[str, Tensor]]:
        """Run ``step(x, t, noise=...)`` from index T-1 down to 0, yielding each step's output."""
        for i in self._indices(progress):
            t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
            noise = None
            if step_noise:
                noise = draw_noise(x.shape, generator, device=x.device, dtype=x.dtype)
            with torch.no_grad():
                out = step(x, t, noise=noise)
            yield out
            x = out["sample"]

    def p_sample_loop_progressive(
        self,
        model: Model,
        shape: Sequence[int],
        *,
        noise: Tensor | None = None,
        noise_temperature: float = 1.0,
        clip_denoised: bool = True,
        denoised_fn: DenoisedFn | None = None,
        cond_fn: CondFn | None = None,
        model_kwargs: dict[str, Any] | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
        generator: NoiseGenerator | None = None,
    ) -> Iterator[dict[str, Tensor]]:
        """Ancestral sampling from ``x_T`` down to ``x_0``, yielding each :meth:`p_sample` output.

        ``noise_temperature`` multiplies the initial ``x_T`` (the release sampled its upsampler
        with 0.997 this way); the per-step noise is left at unit scale, as in the release.
        ``generator`` seeds the initial and per-step noise.
        """
        step = partial(
            self.p_sample,
            model,
            clip_denoised=clip_denoised,
            denoised_fn=denoised_fn,
            cond_fn=cond_fn,
            model_kwargs=model_kwargs,
        )
        x = self._initial_noise(model, shape, noise, noise_temperature, device, generator)
        yield from self._loop(step, x, step_noise=True, progress=progress, generator=generator)

    def p_sample_loop(self, model: Model, shape: Sequence[int], **kwargs: Any) -> Tensor:
        """The final sample [B, C, H, W] of :meth:`p_sample_loop_progressive` (same arguments)."""
        (last,) = deque(self.p_sample_loop_progressive(model, shape, **kwargs), maxlen=1)
        return last["sample"]

    def ddim_sample_loop_progressive(
        self,
        model: Model,
        shape: Sequence[int],
        *,
        eta: float = 0.0,
        noise: Tensor | None = None,
        noise_temperature: float = 1.0,
        clip_denoised: bool = True,
        denoised_fn: DenoisedFn | None = None,
        cond_fn: CondFn | None = None,
        model_kwargs: dict[str, Any] | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
        generator: NoiseGenerator | None = None,
    ) -> Iterator[dict[str, Tensor]]:
        """DDIM sampling over every index of this process, yielding each :meth:`ddim_sample` output."""
        step = partial(
            self.ddim_sample,
            model,
            eta=eta,
            clip_denoised=clip_denoised,
            denoised_fn=denoised_fn,
            cond_fn=cond_fn,
            model_kwargs=model_kwargs,
        )
        x = self._initial_noise(model, shape, noise, noise_temperature, device, generator)
        # eta = 0 is deterministic: no per-step noise is drawn (the generator state is untouched).
        yield from self._loop(
            step, x, step_noise=eta != 0.0, progress=progress, generator=generator
        )

    def ddim_sample_loop(self, model: Model, shape: Sequence[int], **kwargs: Any) -> Tensor:
        """The final sample [B, C, H, W] of :meth:`ddim_sample_loop_progressive` (same arguments)."""
        (last,) = deque(self.ddim_sample_loop_progressive(model, shape, **kwargs), maxlen=1)
        return last["sample"]

    # ---------------------------------------------------------------------------------- training
    def vb_terms_bpd(
        self,
        model_output: Tensor,
        x_start: Tensor,
        x_t: Tensor,
        t: Tensor,
        *,
        clip_denoised: bool = False,
    ) -> dict[str, Tensor]:
        """One term of the variational bound in bits per dimension, [B].

        ``KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))`` for ``t > 0`` and the discretised
        Gaussian decoder NLL ``-log p(x_0 | x_1)`` at ``t == 0``. Also returns ``pred_xstart``.
        """
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance_from_output(model_output, x_t, t, clip_denoised=clip_denoised)
        kl = mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"]))
        nll = -discretized_gaussian_log_likelihood(
            x_start, means=out["mean"], log_scales=0.5 * out["log_variance"]
        )
        nll = mean_flat(nll)
        bits = torch.where(t == 0, nll, kl) / math.log(2.0)
        return {"output": bits, "pred_xstart": out["pred_xstart"]}

    def training_losses(
        self,
        model: Model,
        x_start: Tensor,
        t: Tensor,
        *,
        model_kwargs: dict[str, Any] | None = None,
        noise: Tensor | None = None,
        mse_weight: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """The hybrid loss ``L_simple + L_vb`` of Nichol & Dhariwal for learned-range models.

        ``mse`` is the regression error of the prediction against :meth:`prediction_target`
        (eps for GLIDE; mean over non-batch dims); ``vb`` is the bound term in bits/dim with the
        prediction detached, so it trains only the variance, scaled by ``T / 1000``;
        ``loss = mse_weight * mse + vb`` (``mse_weight`` [B], e.g. min-SNR, defaults to 1). All
        are [B]; x_start: [B, C, H, W], t: [B].
        """
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise=noise)
        output = self.wrap_model(model)(x_t, t, **(model_kwargs or {}))
        c = x_t.shape[1]
        prediction = output[:, :c]
        frozen = torch.cat([prediction.detach(), output[:, c:]], dim=1)
        vb = self.vb_terms_bpd(frozen, x_start, x_t, t, clip_denoised=False)["output"]
        vb = vb * (self.num_timesteps / 1000.0)
        target = self.prediction_target(x_start, t, noise)
        mse = mean_flat((target - prediction) ** 2)
        weighted = mse if mse_weight is None else mse * mse_weight.to(mse)
        return {"mse": mse, "vb": vb, "loss": weighted + vb}
