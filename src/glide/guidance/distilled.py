"""Guided distillation (Meng et al., "On Distillation of Guided Diffusion Models", CVPR 2023,
stage one): a student that takes the guidance weight ``w`` as an input learns to give, in one
forward of one row, what classifier-free guidance gives from the teacher's two rows.

- :func:`student_from_teacher`: the teacher's weights in a network with a zero-initialised
  guidance embedding, so the student starts as the teacher's conditional model;
- :func:`guided_distillation_loss`: ``|| student(x_t, t, w) - (u + w (c - u)) ||^2`` per example,
  with ``c`` / ``u`` the teacher's conditional / unconditional outputs on the same ``x_t``
  (every output channel: a learned variance follows the conditional row, as guidance leaves it);
- :class:`WeightConditioned`: the student as a sampler's model callable at a fixed ``w``.

Guidance is an affine combination with weights summing to one, so matching it in the model's own
parametrization (eps, x0 or v) is matching it in any of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from glide.diffusion.gaussian_diffusion import GaussianDiffusion, Model
from glide.diffusion.losses import mean_flat
from glide.guidance.classifier_free import ClassifierFreeGuidance, classifier_free_batch
from glide.models import Text2ImUNet
from glide.models.options import from_openai_options

__all__ = ["WeightConditioned", "guided_distillation_loss", "student_from_teacher"]


def student_from_teacher(teacher: Text2ImUNet, options: Mapping[str, Any]) -> Text2ImUNet:
    """A guidance-conditioned copy of ``teacher`` (built from its release-style ``options``)."""
    student = from_openai_options({**options, "guidance_embed": True})
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    if unexpected or any(not k.startswith("guidance_embed.") for k in missing):
        raise ValueError(
            f"the teacher does not match its options: missing {missing}, unexpected {unexpected}"
        )
    return student.to(next(teacher.parameters()).device)


def guided_distillation_loss(
    student: Model,
    teacher: Model,
    diffusion: GaussianDiffusion,
    x_start: Tensor,
    t: Tensor,
    w: Tensor,
    *,
    cond: Mapping[str, Tensor],
    uncond: Mapping[str, Tensor],
    noise: Tensor | None = None,
) -> Tensor:
    """Per-example squared error [B] of the student at weight ``w`` [B] against the teacher's
    classifier-free-guided output at ``w``, on ``x_t ~ q(x_t | x_start)`` at timesteps ``t`` [B].

    ``cond`` / ``uncond``: the model kwargs of the caption and of the empty caption (``uncond``
    may have one row, broadcast).
    """
    x_t = diffusion.q_sample(x_start, t, noise=noise)
    with torch.no_grad():
        guided = ClassifierFreeGuidance(teacher, w.float().view(-1, 1, 1, 1))
        both = classifier_free_batch(cond, uncond)
        target = guided(torch.cat([x_t, x_t]), torch.cat([t, t]), **both)[: x_t.shape[0]]
    out = student(x_t, t, guidance=w, **cond)
    return mean_flat((out.float() - target.float()) ** 2)


class WeightConditioned:
    """``model(x, t, **kwargs)`` of a guidance-distilled network sampling at weight ``w``."""

    def __init__(self, model: Model, w: float) -> None:
        self.model = model
        self.w = float(w)

    def __call__(self, x: Tensor, t: Tensor, **model_kwargs: Any) -> Tensor:
        guidance = torch.full((x.shape[0],), self.w, device=x.device)
        return self.model(x, t, guidance=guidance, **model_kwargs)
