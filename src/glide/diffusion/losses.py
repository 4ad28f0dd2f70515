"""Likelihood terms of the variational bound: Gaussian KL and the discretised decoder NLL."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "LOSS_WEIGHTINGS",
    "approx_standard_normal_cdf",
    "discretized_gaussian_log_likelihood",
    "mean_flat",
    "min_snr_weight",
    "normal_kl",
]

LOSS_WEIGHTINGS = ("none", "min_snr")


def mean_flat(x: Tensor) -> Tensor:
    """Mean over every dimension but the first: [B, ...] -> [B]."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """Elementwise ``KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2)))`` in nats (broadcasts)."""
    return 0.5 * (
        logvar2
        - logvar1
        - 1.0
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def approx_standard_normal_cdf(x: Tensor) -> Tensor:
    """The tanh approximation of the standard normal CDF ``Phi(x)`` used by Ho et al. (2020)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: Tensor, *, means: Tensor, log_scales: Tensor) -> Tensor:
    """Log-probability (nats) of 8-bit data ``x`` in [-1, 1] under a Gaussian binned to 256 levels.

    Each pixel value owns the bin ``[x - 1/255, x + 1/255]``; the two extreme bins extend to
    -inf and +inf. ``x``, ``means`` and ``log_scales`` (log standard deviations) share a shape;
    the result has that shape too.
    """
    inv_std = torch.exp(-log_scales)
    centred = x - means
    cdf_upper = approx_standard_normal_cdf(inv_std * (centred + 1.0 / 255.0))
    cdf_lower = approx_standard_normal_cdf(inv_std * (centred - 1.0 / 255.0))
    log_below_upper = torch.log(cdf_upper.clamp(min=1e-12))
    log_above_lower = torch.log((1.0 - cdf_lower).clamp(min=1e-12))
    log_bin = torch.log((cdf_upper - cdf_lower).clamp(min=1e-12))
    return torch.where(
        x < -0.999, log_below_upper, torch.where(x > 0.999, log_above_lower, log_bin)
    )


def min_snr_weight(snr: Tensor, gamma: float, parametrization: str) -> Tensor:
    """Min-SNR-gamma weights (Hang et al., 2023) for a prediction MSE, [B] from SNRs [B].

    The weight makes the loss equal ``min(SNR, gamma) * ||x_0 - x0_hat||^2`` whatever the model
    predicts: ``min(SNR, gamma) / SNR`` for eps, ``min(SNR, gamma)`` for x0 and
    ``min(SNR, gamma) / (SNR + 1)`` for v. Timesteps with little noise (huge SNR) stop dominating.
    """
    if gamma <= 0:
        raise ValueError(f"min_snr gamma must be > 0, got {gamma}")
    clipped = snr.clamp(max=gamma)
    if parametrization == "eps":
        return clipped / snr
    if parametrization == "x0":
        return clipped
    if parametrization == "v":
        return clipped / (snr + 1.0)
    raise ValueError(f"unknown parametrization {parametrization!r}")
