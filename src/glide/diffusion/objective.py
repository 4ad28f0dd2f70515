"""The training objective of a diffusion model: which ``t`` to draw and how to weight each loss.

GLIDE's recipe is uniform ``t`` and the unweighted hybrid loss; :class:`TrainingObjective` also
offers loss-second-moment importance sampling and min-SNR-gamma weighting of the prediction MSE.
It is a plain object over a :class:`~glide.diffusion.GaussianDiffusion` and the model callable,
used alike by the Lightning modules and by ``benchmarks/learning.py``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from glide.diffusion.gaussian_diffusion import GaussianDiffusion, Model
from glide.diffusion.losses import LOSS_WEIGHTINGS, min_snr_weight
from glide.diffusion.timesteps import TimestepSampler, build_timestep_sampler

__all__ = ["TrainingObjective"]


class TrainingObjective:
    """Per-example losses of a batch, with the timesteps, their importance weights and ``objective``.

    Args:
        diffusion: the process (its ``parametrization`` decides the regression target).
        timestep_sampler: ``"uniform"`` (GLIDE) or ``"loss_second_moment"``.
        timestep_bins: bins sharing a loss history (``None``: one per timestep).
        loss_weighting: ``"none"`` (GLIDE) or ``"min_snr"``.
        min_snr_gamma: ``gamma`` of min-SNR weighting.
    """

    def __init__(
        self,
        diffusion: GaussianDiffusion,
        *,
        timestep_sampler: str = "uniform",
        timestep_bins: int | None = None,
        loss_weighting: str = "none",
        min_snr_gamma: float = 5.0,
    ) -> None:
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"unknown loss_weighting {loss_weighting!r}; one of {LOSS_WEIGHTINGS}")
        self.diffusion = diffusion
        self.sampler: TimestepSampler = build_timestep_sampler(
            timestep_sampler, diffusion.num_timesteps, num_bins=timestep_bins
        )
        self.loss_weighting = loss_weighting
        self.min_snr_gamma = min_snr_gamma

    @classmethod
    def from_recipe(cls, diffusion: GaussianDiffusion, recipe: Any) -> TrainingObjective:
        """Build from any config with ``timestep_sampler``, ``timestep_bins`` (0: one bin per
        timestep), ``loss_weighting`` and ``min_snr_gamma`` attributes (``TrainConfig``, the
        learning benchmark's recipes)."""
        return cls(
            diffusion,
            timestep_sampler=recipe.timestep_sampler,
            timestep_bins=recipe.timestep_bins or None,
            loss_weighting=recipe.loss_weighting,
            min_snr_gamma=recipe.min_snr_gamma,
        )

    def losses(
        self,
        model: Model,
        x_start: Tensor,
        *,
        model_kwargs: dict[str, Any] | None = None,
        t: Tensor | None = None,
        noise: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """``mse``, ``vb``, ``loss`` (all [B]), ``t`` and ``objective``: the scalar to minimise.

        Without ``t`` the timesteps are drawn by the sampler, ``objective`` is the importance-
        weighted mean, and the sampler records the losses; with ``t`` (validation) nothing is
        recorded and the weights are 1.
        """
        drawn = t is None
        if t is None:
            t, weights = self.sampler.sample(x_start.shape[0], x_start.device)
        else:
            weights = None
        mse_weight = None
        if self.loss_weighting == "min_snr":
            snr = self.diffusion.snr(t)
            mse_weight = min_snr_weight(snr, self.min_snr_gamma, self.diffusion.parametrization)
        out = self.diffusion.training_losses(
            model, x_start, t, model_kwargs=model_kwargs, noise=noise, mse_weight=mse_weight
        )
        out["t"] = t
        loss = out["loss"]
        out["objective"] = (loss * weights.to(loss)).mean() if weights is not None else loss.mean()
        if drawn:
            self.sampler.update(t, loss)
        return out
