"""Sampler names and step counts mapped onto the diffusion library's loops.

=============  ======================================================  ==================
name           what runs                                               steps
=============  ======================================================  ==================
``ancestral``  :meth:`GaussianDiffusion.p_sample_loop`, evenly respaced  ``steps`` (100 in the release)
``fast27``     ``p_sample_loop`` on the release's 27-step schedule       27 (fixed)
``ddim``       :meth:`GaussianDiffusion.ddim_sample_loop` (``eta``)      ``steps`` (DDIM stride)
``dpm++``      :func:`dpm_solver_pp_2m_sample` on the full process       ``steps``
``pd``         DDIM on :func:`distillation_grid`, the grid a            ``steps`` (default 4)
               progressively distilled student learned (from ``T-1``)
=============  ======================================================  ==================

CLIP guidance (a ``cond_fn``) works with every sampler but ``dpm++``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from glide.diffusion import (
    GaussianDiffusion,
    NoiseGenerator,
    create_gaussian_diffusion,
    dpm_solver_pp_2m_sample,
    space_timesteps,
)
from glide.diffusion.gaussian_diffusion import CondFn, DenoisedFn, Model

__all__ = [
    "SAMPLERS",
    "DiffusionSpec",
    "SamplerSpec",
    "parse_sampler",
    "run_sampler",
    "sampler_diffusion",
]

SAMPLERS = ("ancestral", "fast27", "ddim", "dpm++", "pd")
_DEFAULT_STEPS = {"ancestral": 100, "fast27": 27, "ddim": 50, "dpm++": 20, "pd": 4}


@dataclass(frozen=True)
class DiffusionSpec:
    """The trained process a model expects: its length, beta schedule and what it predicts."""

    steps: int = 1000
    noise_schedule: str = "squaredcos_cap_v2"
    parametrization: str = "eps"  # eps (GLIDE, every released model) | x0 | v


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler name (one of :data:`SAMPLERS`), its step count and DDIM's ``eta``."""

    name: str = "ancestral"
    steps: int = 100
    eta: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.name!r}; expected one of {SAMPLERS}")
        if self.steps < 1:
            raise ValueError(f"sampler steps must be >= 1, got {self.steps}")
        if self.name == "fast27" and self.steps != 27:
            object.__setattr__(self, "steps", 27)

    @property
    def label(self) -> str:
        """``"ancestral-100"``, ``"fast27"``, ``"ddim-50"``, ``"dpm++-15"``."""
        return "fast27" if self.name == "fast27" else f"{self.name}-{self.steps}"


def parse_sampler(text: str, steps: int | None = None) -> SamplerSpec:
    """``"ddim"``, ``"ddim-25"``, ``"ddim25"``, ``"dpm++-10"``, ``"fast27"``; ``steps`` overrides
    a count in the name; without either, the sampler's default (ancestral 100, DDIM 50, dpm++ 20)."""
    m = re.fullmatch(r"(ancestral|fast27|ddim|dpm\+\+|pd)(?:[-_:]?(\d+))?", text.strip().lower())
    if not m or (m.group(1) == "fast27" and m.group(2)):
        raise ValueError(f"unknown sampler {text!r}; expected one of {SAMPLERS}, e.g. 'ddim-50'")
    name = m.group(1)
    count = steps if steps is not None else int(m.group(2) or _DEFAULT_STEPS[name])
    return SamplerSpec(name=name, steps=count)


def _respacing(spec: DiffusionSpec, sampler: SamplerSpec) -> str:
    if sampler.name == "fast27":
        return "fast27"
    if sampler.name == "ddim":
        try:  # the DDIM paper's integer stride when one gives exactly ``steps`` steps
            space_timesteps(spec.steps, f"ddim{sampler.steps}")
            return f"ddim{sampler.steps}"
        except ValueError:
            return str(sampler.steps)
    if sampler.name == "ancestral":
        return str(sampler.steps)
    if sampler.name == "pd":
        return f"pd{sampler.steps}"
    return ""  # dpm++ picks its grid on the full process


def sampler_diffusion(spec: DiffusionSpec, sampler: SamplerSpec) -> GaussianDiffusion:
    """The (respaced) process a sampler runs on."""
    if sampler.steps > spec.steps:
        raise ValueError(f"{sampler.label} needs more steps than the {spec.steps}-step process")
    return create_gaussian_diffusion(
        steps=spec.steps,
        noise_schedule=spec.noise_schedule,
        timestep_respacing=_respacing(spec, sampler),
        parametrization=spec.parametrization,
    )


def run_sampler(
    model: Model,
    shape: tuple[int, ...],
    *,
    diffusion: DiffusionSpec,
    sampler: SamplerSpec,
    model_kwargs: dict[str, Any] | None = None,
    cond_fn: CondFn | None = None,
    denoised_fn: DenoisedFn | None = None,
    noise_temperature: float = 1.0,
    generator: NoiseGenerator | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> Tensor:
    """Draw samples [B, C, H, W] in [-1, 1] with ``sampler`` from a model trained on ``diffusion``."""
    process = sampler_diffusion(diffusion, sampler)
    common: dict[str, Any] = {
        "noise_temperature": noise_temperature,
        "denoised_fn": denoised_fn,
        "model_kwargs": model_kwargs,
        "device": device,
        "progress": progress,
        "generator": generator,
        "clip_denoised": True,
    }
    if sampler.name == "dpm++":
        if cond_fn is not None:
            raise ValueError(
                "CLIP guidance needs a sampler that takes a cond_fn: ancestral, fast27 or ddim "
                "(not dpm++)"
            )
        return dpm_solver_pp_2m_sample(process, model, shape, steps=sampler.steps, **common)
    if sampler.name in ("ddim", "pd"):
        return process.ddim_sample_loop(model, shape, eta=sampler.eta, cond_fn=cond_fn, **common)
    return process.p_sample_loop(model, shape, cond_fn=cond_fn, **common)
