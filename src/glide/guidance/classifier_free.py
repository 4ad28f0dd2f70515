"""Classifier-free guidance (Ho & Salimans, 2021) as a wrapper around the model callable.

The batch holds ``B`` conditional rows followed by ``B`` unconditional rows (e.g. the caption's
tokens, then the empty caption's). Both halves are evaluated in one forward pass on the same
``x_t`` (the first half, repeated), and the eps prediction is extrapolated away from the
unconditional one: ``eps = eps_u + s (eps_c - eps_u)``, written to both halves so that the two
halves stay identical through sampling. Channels after the eps (the learned variance) pass
through per row. ``s = 1`` is the conditional model, ``s = 0`` the unconditional one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from glide.diffusion.gaussian_diffusion import Model

__all__ = ["ClassifierFreeGuidance", "classifier_free_batch"]


class ClassifierFreeGuidance:
    """``model(x [2B,C,H,W], t [2B], **kwargs) -> [2B, 2C, H, W]`` with guided eps channels.

    Args:
        model: the conditional model; its kwargs (tokens, mask, ...) carry both halves.
        guidance_scale: ``s``.
        eps_channels: how many leading output channels are eps; default ``C`` of ``x``.
    """

    def __init__(
        self, model: Model, guidance_scale: float, *, eps_channels: int | None = None
    ) -> None:
        self.model = model
        self.guidance_scale = guidance_scale
        self.eps_channels = eps_channels

    def __call__(self, x: Tensor, t: Tensor, **model_kwargs: Any) -> Tensor:
        if x.shape[0] % 2:
            raise ValueError("classifier-free guidance needs a batch of [cond rows; uncond rows]")
        half = x[: x.shape[0] // 2]
        output = self.model(torch.cat([half, half]), t, **model_kwargs)
        c = self.eps_channels if self.eps_channels is not None else x.shape[1]
        eps_cond, eps_uncond = output[:, :c].chunk(2)
        guided = eps_uncond + self.guidance_scale * (eps_cond - eps_uncond)
        return torch.cat([torch.cat([guided, guided]), output[:, c:]], dim=1)


def classifier_free_batch(
    cond: Mapping[str, Tensor], uncond: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Model kwargs for :class:`ClassifierFreeGuidance`: each of ``cond``'s tensors [B, ...]
    followed by ``uncond``'s (broadcast to B rows when it has one), giving [2B, ...]."""
    batch: dict[str, Tensor] = {}
    for key, c in cond.items():
        u = uncond[key]
        if u.shape[0] == 1 and c.shape[0] != 1:
            u = u.expand(c.shape[0], *u.shape[1:])
        batch[key] = torch.cat([c, u.to(c.device)])
    return batch
