"""Inpainting by replacement: force the known pixels into every ``x_0`` prediction.

GLIDE's inpainting models also see the known image and mask as inputs; at sampling time the
release additionally pastes the known region into each (clipped) ``x_0`` prediction, so the
posterior mean, and hence the final sample, agrees with it there.
"""

from __future__ import annotations

from torch import Tensor

from glide.diffusion.gaussian_diffusion import DenoisedFn

__all__ = ["inpaint_denoised_fn"]


def inpaint_denoised_fn(known: Tensor, mask: Tensor) -> DenoisedFn:
    """``x0 -> x0 * (1 - mask) + known * mask``; known: [B,C,H,W] in [-1, 1], mask: [B,1,H,W]
    (1 = known pixel). Pass as ``denoised_fn`` to any sampler."""

    def paste(x0: Tensor) -> Tensor:
        return x0 * (1 - mask) + known * mask

    return paste
