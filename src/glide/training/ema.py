"""Exponential moving average of a model's weights (used for every sample, eval and export)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """A frozen copy of ``model`` whose parameters track ``decay``-weighted averages.

    The effective decay ramps up as ``min(decay, (1 + n) / (10 + n))`` over the first updates, so a
    short run is not dominated by the random initialisation. As a submodule of the
    LightningModule its weights (and the update count) are saved in every checkpoint.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        n = int(self.num_updates)
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """``ema <- ema + (1 - decay) * (param - ema)``; buffers are copied."""
        decay = self.current_decay()
        ema_params = list(self.model.parameters())
        params = [
            p.detach().to(e.dtype) for p, e in zip(model.parameters(), ema_params, strict=True)
        ]
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        for eb, b in zip(self.model.buffers(), model.buffers(), strict=True):
            eb.copy_(b)
        self.num_updates += 1

    def train(self, mode: bool = True) -> EMA:  # the copy never trains (dropout stays off)
        super().train(mode)
        self.model.eval()
        return self
