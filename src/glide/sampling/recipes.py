"""Sampling recipes: the release's, and the fast one ``glide sample`` uses by default.

A recipe is the samplers of both stages plus an :class:`Execution`, how the networks are run:

- ``release``: base ``ancestral-100`` with classifier-free guidance, upsampler ``fast27``, eager
  float32 with the release's einsum attention: numerically the public release;
- ``balanced`` (``glide sample``'s default): the fast recipe's base stage and execution levers
  with the release's ``fast27`` upsampler, because on the trained default models a 5-step
  upsampler costs quality (``benchmarks/recipe_quality.py``: backgrounds go wrong) while the
  10-step base costs none;
- ``distilled``: the distilled models of ``make distill`` (:mod:`glide.guidance.distilled`): a
  base that takes the guidance weight as an input (one row per image instead of the guided
  pair) sampled in 4 DDIM steps on the grid it learned (``pd-4``), and an upsampler distilled to
  2 (``pd-2``), with the fast execution levers; ``glide sample --recipe distilled`` reads
  :data:`DISTILLED_BASE` and :data:`DISTILLED_UPSAMPLER` unless ``--base`` / ``--upsampler``
  name others, and :func:`for_models` samples each model on the grid it was distilled for (a
  stage-one student, which learned no grid: ``dpm++-10``; a plain upsampler: ``fast27``);
- ``fast``: DPM-Solver++(2M) on both stages (the upsampler from noise scaled by the release's
  0.997), the caption encoded once per sample instead of once per step, channels_last,
  scaled-dot-product attention, ``torch.inference_mode`` and ``precision: auto`` (bf16 autocast
  only where timing shows it faster, see :mod:`glide.precision`).

Only the step counts and bf16 change what is computed: text caching is bit-identical, and
channels_last / sdpa agree with the release to float32 round-off (``benchmarks/sample.py``
measures each lever and its output difference).
"""

from __future__ import annotations

import dataclasses
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from glide.models import set_attention_impl
from glide.models.nn import ATTENTION_IMPLS
from glide.precision import PRECISIONS
from glide.sampling.samplers import SamplerSpec

__all__ = [
    "DEFAULT_RECIPE",
    "DISTILLED_BASE",
    "DISTILLED_BASE_STEPS",
    "DISTILLED_UPSAMPLER",
    "DISTILLED_UPSAMPLE_STEPS",
    "FAST_BASE_STEPS",
    "FAST_UPSAMPLE_STEPS",
    "RECIPES",
    "Execution",
    "Recipe",
    "for_models",
    "get_recipe",
    "grad_context",
    "prepare_model",
]

# Step counts of the fast recipe (docs/sampling.md, "Fast sampling": the measured trade-off).
FAST_BASE_STEPS = 10
FAST_UPSAMPLE_STEPS = 5
# ... and of the distilled one: what the last progressive rounds learned (pipelines/distill)
DISTILLED_BASE_STEPS = 4
DISTILLED_UPSAMPLE_STEPS = 2


@dataclass(frozen=True)
class Execution:
    """How the networks run. ``precision`` is ``fp32``, ``bf16`` or ``auto``
    (:func:`glide.precision.resolve_precision`); ``attention`` is ``einsum`` (the release's) or
    ``sdpa``; ``cache_text`` encodes the caption once per trajectory; ``inference_mode`` uses
    ``torch.inference_mode`` instead of ``torch.no_grad`` (not with CLIP guidance, which needs
    gradients)."""

    precision: str = "fp32"
    channels_last: bool = False
    attention: str = "einsum"
    cache_text: bool = False
    inference_mode: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; expected one of {PRECISIONS}")
        if self.attention not in ATTENTION_IMPLS:
            raise ValueError(f"unknown attention {self.attention!r}; expected {ATTENTION_IMPLS}")

    def levers(self) -> list[str]:
        """The non-release settings in use, e.g. ``["channels_last", "sdpa", "text cache"]``."""
        on = {
            "channels_last": self.channels_last,
            "sdpa": self.attention == "sdpa",
            "text cache": self.cache_text,
            "inference_mode": self.inference_mode,
        }
        return [name for name, used in on.items() if used]


@dataclass(frozen=True)
class Recipe:
    """Samplers of both stages, the upsampler's noise temperature and the execution settings."""

    name: str
    sampler: SamplerSpec
    upsample_sampler: SamplerSpec
    upsample_temperature: float = 0.997
    execution: Execution = dataclasses.field(default_factory=Execution)

    def generation_kwargs(self) -> dict[str, Any]:
        """The :class:`~glide.sampling.GenerationConfig` fields this recipe sets."""
        return {
            "sampler": self.sampler,
            "upsample_sampler": self.upsample_sampler,
            "upsample_temperature": self.upsample_temperature,
            "execution": self.execution,
        }


_FAST_EXECUTION = Execution(
    precision="auto", channels_last=True, attention="sdpa", cache_text=True, inference_mode=True
)

RECIPES: dict[str, Recipe] = {
    "release": Recipe(
        "release", SamplerSpec("ancestral", 100), SamplerSpec("fast27", 27), 0.997, Execution()
    ),
    "fast": Recipe(
        "fast",
        SamplerSpec("dpm++", FAST_BASE_STEPS),
        SamplerSpec("dpm++", FAST_UPSAMPLE_STEPS),
        0.997,
        _FAST_EXECUTION,
    ),
    "balanced": Recipe(
        "balanced",
        SamplerSpec("dpm++", FAST_BASE_STEPS),
        SamplerSpec("fast27", 27),
        0.997,
        _FAST_EXECUTION,
    ),
    "distilled": Recipe(
        "distilled",
        SamplerSpec("pd", DISTILLED_BASE_STEPS),
        SamplerSpec("pd", DISTILLED_UPSAMPLE_STEPS),
        1.0,  # the students learned their jumps from unscaled noise
        _FAST_EXECUTION,
    ),
}
# The last rounds of pipelines/distill/dvc.yaml (recipe "distilled")
DISTILLED_BASE = "models/base-distilled-pd4"
DISTILLED_UPSAMPLER = "models/upsampler-distilled-pd2"
DEFAULT_RECIPE = "balanced"  # glide sample's; see the module docstring for why not "fast"


def for_models(recipe: Recipe, base: Any, upsampler: Any | None = None) -> Recipe:
    """``recipe`` for these models (:class:`~glide.sampling.LoadedModel` s): the ``distilled``
    recipe samples a progressive student on the grid it learned (its export's ``sampler``, e.g.
    ``pd-4``), a stage-one student with ``dpm++-10`` and an upsampler that was not distilled with
    ``fast27`` (at the release's 0.997); other recipes are returned unchanged."""
    from glide.sampling.samplers import parse_sampler

    if recipe.name != "distilled":
        return recipe
    plain = RECIPES["balanced"]  # what a model that learned no grid samples with
    hint = getattr(base, "sampler", None)
    base_spec = parse_sampler(hint) if hint else plain.sampler
    up_hint = getattr(upsampler, "sampler", None)
    if up_hint or upsampler is None:
        up_spec = parse_sampler(up_hint) if up_hint else recipe.upsample_sampler
        temperature = recipe.upsample_temperature
    else:
        up_spec, temperature = plain.upsample_sampler, plain.upsample_temperature
    return dataclasses.replace(
        recipe, sampler=base_spec, upsample_sampler=up_spec, upsample_temperature=temperature
    )


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name`` (one of :data:`RECIPES`)."""
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; expected one of {sorted(RECIPES)}") from None


def prepare_model(model: nn.Module, execution: Execution) -> nn.Module:
    """Put ``model`` (in place) in the memory format and attention implementation asked for.

    Both are set explicitly every time, so a model switches back to the release's layout when a
    release-recipe sample follows a fast one.
    """
    fmt = torch.channels_last if execution.channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    set_attention_impl(model, execution.attention)
    return model


def grad_context(execution: Execution, *, needs_grad: bool) -> AbstractContextManager:
    """``torch.inference_mode`` when asked and nothing needs gradients, else ``torch.no_grad``."""
    if execution.inference_mode and not needs_grad:
        return torch.inference_mode()
    return torch.no_grad()
