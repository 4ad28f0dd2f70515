"""Which timesteps a training batch sees: uniform (GLIDE) or loss-second-moment importance sampling.

A sampler draws ``t`` [B] and importance weights ``w`` [B] with ``E_t[w(t) L(t)]`` equal to the
uniform average of ``L`` over all timesteps, so any sampler optimises the same objective; what
changes is the variance of its estimate. :class:`LossSecondMomentSampler` follows Nichol &
Dhariwal (2021): ``p(t)`` proportional to ``sqrt(E[L(t)^2])`` over a history of recent losses,
mixed with a little uniform mass, and uniform until every timestep has a full history. For short
runs the timesteps can share histories in ``num_bins`` contiguous bins (1000 bins of one step,
improved-diffusion's choice, need ~10^4 batches before they ever leave the uniform warm-up).

Randomness comes from torch's global RNG (the training module reseeds it every step), and the
history is a ``state_dict`` so a resumed run draws the same timesteps.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "TIMESTEP_SAMPLERS",
    "LossSecondMomentSampler",
    "TimestepSampler",
    "UniformSampler",
    "build_timestep_sampler",
]

TIMESTEP_SAMPLERS = ("uniform", "loss_second_moment")


class TimestepSampler:
    """Uniform over ``0..T-1``; subclasses reweight. ``probabilities()`` is ``p(t)``, [T]."""

    def __init__(self, num_timesteps: int) -> None:
        if num_timesteps < 1:
            raise ValueError("num_timesteps must be >= 1")
        self.num_timesteps = num_timesteps

    def probabilities(self) -> Tensor:
        return torch.full((self.num_timesteps,), 1.0 / self.num_timesteps, dtype=torch.float64)

    def sample(self, batch_size: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        """``(t [B] int64, weights [B] float32)`` with ``weights = 1 / (T p(t))``."""
        p = self.probabilities()
        t = torch.multinomial(p, batch_size, replacement=True)
        weights = 1.0 / (self.num_timesteps * p[t])
        return t.to(device), weights.to(device=device, dtype=torch.float32)

    def update(self, t: Tensor, losses: Tensor) -> None:
        """Record per-example losses [B] at timesteps ``t`` [B] (nothing for a fixed sampler)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class UniformSampler(TimestepSampler):
    """GLIDE's (and the paper's) choice: every timestep equally often, all weights 1."""

    def sample(self, batch_size: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        t = torch.randint(0, self.num_timesteps, (batch_size,), device=device)
        return t, torch.ones(batch_size, device=device)


class LossSecondMomentSampler(TimestepSampler):
    """Importance sampling by the root mean square of recent losses per timestep bin.

    Args:
        num_timesteps: ``T``.
        history: losses kept per bin.
        uniform_prob: mass spread uniformly over all timesteps (keeps every weight finite).
        num_bins: contiguous timestep bins sharing a history (``T``: one per timestep).
    """

    def __init__(
        self,
        num_timesteps: int,
        *,
        history: int = 10,
        uniform_prob: float = 0.001,
        num_bins: int | None = None,
    ) -> None:
        super().__init__(num_timesteps)
        bins = num_bins or num_timesteps
        if not 1 <= bins <= num_timesteps:
            raise ValueError(f"num_bins must be in [1, {num_timesteps}], got {bins}")
        if not 0.0 < uniform_prob <= 1.0:
            raise ValueError("uniform_prob must be in (0, 1]")
        self.history = history
        self.uniform_prob = uniform_prob
        self.num_bins = bins
        # Timestep -> bin; bins are as equal as integer division allows.
        self.bin_of = torch.arange(num_timesteps) * bins // num_timesteps
        self.bin_sizes = torch.bincount(self.bin_of, minlength=bins).to(torch.float64)
        self.losses = torch.zeros(bins, history, dtype=torch.float64)
        self.counts = torch.zeros(bins, dtype=torch.long)

    def warmed_up(self) -> bool:
        return bool((self.counts == self.history).all())

    def probabilities(self) -> Tensor:
        if not self.warmed_up():
            return super().probabilities()
        rms = self.losses.pow(2).mean(dim=1).sqrt()
        per_bin = rms / rms.sum() if float(rms.sum()) > 0 else self.bin_sizes / self.num_timesteps
        p = per_bin[self.bin_of] / self.bin_sizes[self.bin_of]  # spread each bin over its steps
        return p * (1.0 - self.uniform_prob) + self.uniform_prob / self.num_timesteps

    def update(self, t: Tensor, losses: Tensor) -> None:
        for ti, loss in zip(t.detach().cpu().tolist(), losses.detach().cpu().tolist(), strict=True):
            if not math.isfinite(loss):
                continue  # a diverged example must not poison the sampler
            b = int(self.bin_of[ti])
            n = int(self.counts[b])
            if n == self.history:  # a FIFO of the latest losses
                self.losses[b, :-1] = self.losses[b, 1:].clone()
                self.losses[b, -1] = loss
            else:
                self.losses[b, n] = loss
                self.counts[b] = n + 1

    def state_dict(self) -> dict[str, Any]:
        return {"losses": self.losses.clone(), "counts": self.counts.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:  # a checkpoint written with another sampler: start the history afresh
            return
        losses, counts = state["losses"], state["counts"]
        if tuple(losses.shape) != tuple(self.losses.shape):
            raise ValueError(
                f"timestep sampler history {tuple(losses.shape)} does not match "
                f"{tuple(self.losses.shape)} (num_bins x history changed?)"
            )
        self.losses.copy_(losses)
        self.counts.copy_(counts)


def build_timestep_sampler(
    name: str, num_timesteps: int, *, num_bins: int | None = None
) -> TimestepSampler:
    """``"uniform"`` or ``"loss_second_moment"`` (optionally with shared-history bins)."""
    if name == "uniform":
        return UniformSampler(num_timesteps)
    if name == "loss_second_moment":
        return LossSecondMomentSampler(num_timesteps, num_bins=num_bins)
    raise ValueError(f"unknown timestep sampler {name!r}; expected one of {TIMESTEP_SAMPLERS}")
