"""CLIP guidance: the gradient of a noised CLIP's similarity, used to shift the sampling mean.

With normalised embeddings ``z_txt`` of the caption and ``z_img(x_t, t)`` of the noisy image,
the guidance objective is ``score(x_t) = scale * <z_txt, z_img(x_t, t)>`` (the release's CLIP
logit scale, 100, times the user's ``grad_scale``). Its gradient serves as
``grad_x log p(caption | x_t)``: :meth:`GaussianDiffusion.p_sample` moves the mean to
``mu + Sigma * grad`` and the deterministic sampler shifts eps instead. ``t`` reaching the
``cond_fn`` is the original timestep (a respaced process maps it), which the noised CLIP expects.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["CLIPGuidance", "normalize_embedding"]

ImageEmbedder = Callable[[Tensor, Tensor], Tensor]
"""``image_encoder(x_t in [-1, 1] [B,3,S,S], t [B]) -> unnormalised embedding [B, D]``."""


def normalize_embedding(z: Tensor) -> Tensor:
    """``z / (||z|| + 1e-12)`` along the last dimension."""
    return z / (torch.linalg.norm(z, dim=-1, keepdim=True) + 1e-12)


class CLIPGuidance:
    """A ``cond_fn(x_t, t, **model_kwargs) -> [B, 3, S, S]`` for the given caption embeddings.

    Args:
        image_encoder: the noised CLIP image tower (inputs in [-1, 1]).
        text_emb: [B, D] (or [1, D]) caption embedding, normalised here.
        grad_scale: the user's guidance strength.
        logit_scale: CLIP's temperature, 100 in the release.
    """

    def __init__(
        self,
        image_encoder: ImageEmbedder,
        text_emb: Tensor,
        *,
        grad_scale: float = 1.0,
        logit_scale: float = 100.0,
    ) -> None:
        self.image_encoder = image_encoder
        self.text_emb = normalize_embedding(text_emb.detach())
        self.scale = grad_scale * logit_scale

    def score(self, x: Tensor, t: Tensor) -> Tensor:
        """``scale * sum_b <z_txt_b, z_img(x_b, t_b)>``, a scalar."""
        z_img = normalize_embedding(self.image_encoder(x, t))
        return self.scale * (self.text_emb.to(z_img) * z_img).sum()

    def __call__(self, x: Tensor, t: Tensor, **model_kwargs: Any) -> Tensor:
        with torch.enable_grad():
            x_var = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.score(x_var, t), x_var)
        return grad.detach()
