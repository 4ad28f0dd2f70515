"""Guided distillation (Meng et al., "On Distillation of Guided Diffusion Models", CVPR 2023,
stage one): a student that takes the guidance weight ``w`` as an input learns to give, in one
forward of one row, what classifier-free guidance gives from the teacher's two rows.

- :func:`student_from_teacher`: the teacher's weights in a network with a zero-initialised
  guidance embedding, so the student starts as the teacher's conditional model;
- :func:`guided_distillation_loss`: ``|| student(x_t, t, w) - (u + w (c - u)) ||^2`` per example,
  with ``c`` / ``u`` the teacher's conditional / unconditional outputs on the same ``x_t``
  (every output channel: a learned variance follows the conditional row, as guidance leaves it);
- :func:`progressive_distillation_loss` (stage two; Salimans & Ho 2022): a student learns in one
  deterministic DDIM step of :func:`~glide.diffusion.distillation_grid` (``N`` steps) what its
  teacher does in two steps of the ``2N`` grid, both taking ``w`` as an input (or neither: the
  upsampler, sampled unguided as the release does, is distilled the same way);
- :class:`WeightConditioned`: the student as a sampler's model callable at a fixed ``w``.

Guidance is an affine combination with weights summing to one, so matching it in the model's own
parametrization (eps, x0 or v) is matching it in any of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from glide.diffusion.gaussian_diffusion import GaussianDiffusion, Model
from glide.diffusion.losses import mean_flat
from glide.diffusion.respace import distillation_grid
from glide.guidance.classifier_free import ClassifierFreeGuidance, classifier_free_batch
from glide.models import Text2ImUNet
from glide.models.options import from_openai_options

__all__ = [
    "WeightConditioned",
    "ddim_step",
    "guided_distillation_loss",
    "load_teacher_weights",
    "progressive_distillation_loss",
    "student_from_teacher",
]


def student_from_teacher(teacher: Text2ImUNet, options: Mapping[str, Any]) -> Text2ImUNet:
    """A guidance-conditioned copy of ``teacher`` (built from its release-style ``options``)."""
    student = from_openai_options({**options, "guidance_embed": True})
    load_teacher_weights(student, teacher)
    return student.to(next(teacher.parameters()).device)


def load_teacher_weights(student: nn.Module, teacher: nn.Module) -> None:
    """Copy ``teacher``'s weights into ``student``; only a guidance embedding the teacher lacks
    may stay as the student has it (zero: the student starts as the teacher)."""
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    if unexpected or any(not k.startswith("guidance_embed.") for k in missing):
        raise ValueError(
            f"the teacher does not fit the student: missing {missing}, unexpected {unexpected}"
        )


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


def _abar(diffusion: GaussianDiffusion, t: Tensor, like: Tensor) -> Tensor:
    """``abar_t`` per row as [B, 1, 1, 1] in ``like``'s dtype; index ``-1`` is clean (1)."""
    abar = diffusion.alphas_cumprod.double().cpu()
    table = torch.cat([abar, torch.ones(1, dtype=torch.float64)])
    return table[t.cpu()].to(like.device, like.dtype).view(-1, *([1] * (like.ndim - 1)))


def ddim_step(
    diffusion: GaussianDiffusion, x_t: Tensor, t: Tensor, s: Tensor, x0: Tensor
) -> Tensor:
    """Deterministic DDIM from index ``t`` to ``s`` [B] (``-1``: to ``x_0``) given ``x0``:
    ``x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s) eps``, ``eps`` implied by ``x_t`` and ``x0``."""
    a_t, a_s = _abar(diffusion, t, x_t), _abar(diffusion, s, x_t)
    eps = (x_t - a_t.sqrt() * x0) / (1 - a_t).sqrt()
    return a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps


def _x0(
    model: Model, diffusion: GaussianDiffusion, x: Tensor, t: Tensor, w: Tensor | None, cond: Any
) -> Tensor:
    # w None: an unguided network (the upsampler), which takes no guidance input
    extra = {} if w is None else {"guidance": w}
    out = model(x, t, **extra, **cond)[:, : x.shape[1]].float()
    return diffusion.predict_xstart(x, t, out)


def progressive_distillation_loss(
    student: Model,
    teacher: Model,
    diffusion: GaussianDiffusion,
    x_start: Tensor,
    step: Tensor,
    w: Tensor | None,
    *,
    steps: int,
    cond: Mapping[str, Tensor],
    noise: Tensor | None = None,
) -> Tensor:
    """Per-example loss [B] of a student sampling in ``steps`` DDIM steps against its teacher's
    two steps each (the ``2 * steps`` grid), at grid position ``step`` [B] (0: the noisiest).
    ``w`` [B]: the guidance weight both take as an input (None for an unguided network such as
    the upsampler, whose ``cond`` then carries ``low_res``).

    ``x_t`` is ``x_start`` noised to the student's grid point; the teacher's two clipped DDIM
    steps give ``x_s``; the student's target is the ``x0`` whose single DDIM step from ``x_t``
    lands on ``x_s`` (``x_s`` itself on the last step, to ``x_0``). Squared error in ``x0``,
    weighted by ``max(SNR_t, 1)`` (Salimans & Ho's truncated SNR weighting).
    """
    n = diffusion.num_timesteps
    fine = torch.tensor([*distillation_grid(n, 2 * steps), -1], device=x_start.device)
    i = 2 * step.to(x_start.device).long()
    t, mid, s = fine[i], fine[i + 1], fine[i + 2]
    x_t = diffusion.q_sample(x_start, t, noise=noise)
    with torch.no_grad():
        x_mid = ddim_step(
            diffusion, x_t, t, mid, _x0(teacher, diffusion, x_t, t, w, cond).clamp(-1, 1)
        )
        # on the last step s is x_0 itself (-1): the ratio below is then 0 and x_s the target
        x0_mid = _x0(teacher, diffusion, x_mid, mid, w, cond).clamp(-1, 1)
        x_s = ddim_step(diffusion, x_mid, mid, s, x0_mid)
        a_t, a_s = _abar(diffusion, t, x_t), _abar(diffusion, s, x_t)
        ratio = ((1 - a_s) / (1 - a_t)).sqrt()  # sigma_s / sigma_t (0 when s is x_0)
        target = (x_s - ratio * x_t) / (a_s.sqrt() - ratio * a_t.sqrt())
        weight = (a_t / (1 - a_t)).clamp(min=1.0).view(-1)
    pred = _x0(student, diffusion, x_t, t, w, cond)
    return weight * mean_flat((pred - target) ** 2)


class WeightConditioned:
    """``model(x, t, **kwargs)`` of a guidance-distilled network sampling at weight ``w``."""

    def __init__(self, model: Model, w: float) -> None:
        self.model = model
        self.w = float(w)

    def __call__(self, x: Tensor, t: Tensor, **model_kwargs: Any) -> Tensor:
        guidance = torch.full((x.shape[0],), self.w, device=x.device)
        return self.model(x, t, guidance=guidance, **model_kwargs)
