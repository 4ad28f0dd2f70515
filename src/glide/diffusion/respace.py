"""Sampling with fewer steps: keep a subset of a trained process's timesteps.

Keeping timesteps ``S = {s_0 < s_1 < ...}`` of a T-step process gives a shorter Markov chain with
the same marginals: ``abar'_i = abar_{s_i}`` and so ``beta'_i = 1 - abar_{s_i} / abar_{s_{i-1}}``.
The model still expects the original ``s_i``, which the process's ``timestep_map`` supplies.
GLIDE feeds raw integer timesteps (no rescaling to [0, 1000)).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from glide.diffusion.gaussian_diffusion import GaussianDiffusion
from glide.diffusion.schedules import get_named_beta_schedule

__all__ = ["SpacedDiffusion", "create_gaussian_diffusion", "space_timesteps"]


def _even_sections(num_timesteps: int, section_counts: Sequence[int]) -> set[int]:
    """Split ``0..T-1`` into equal sections (earlier ones one longer when T does not divide) and
    take ``count`` evenly strided, rounded steps from each, both section ends included."""
    base, extra = divmod(num_timesteps, len(section_counts))
    steps: set[int] = set()
    start = 0
    for i, count in enumerate(section_counts):
        size = base + (1 if i < extra else 0)
        if count > size:
            raise ValueError(f"cannot take {count} steps from a section of {size}")
        stride = (size - 1) / (count - 1) if count > 1 else 1.0
        steps.update(start + round(k * stride) for k in range(count))
        start += size
    return steps


def distillation_grid(num_timesteps: int, steps: int) -> list[int]:
    """The ``steps`` model calls of a progressively distilled sampler, highest first:
    ``round((T - 1) k / steps)`` for ``k = steps .. 1`` (then the step to ``x_0``).

    It starts at ``T - 1`` (pure noise, unlike the DDIM stride) and halving nests: the grid of
    ``N`` steps is every other point of the grid of ``2N``, so a student's one step spans exactly
    two of its teacher's.
    """
    if not 1 <= steps < num_timesteps:
        raise ValueError(f"a distillation grid needs 1 <= steps < {num_timesteps}, got {steps}")
    return [round((num_timesteps - 1) * k / steps) for k in range(steps, 0, -1)]


def space_timesteps(num_timesteps: int, section_counts: str | Sequence[int]) -> set[int]:
    """Timesteps of a ``num_timesteps`` process to keep.

    ``section_counts`` is a list of per-section step counts or a string: ``"N"`` or ``"a,b,c"``
    (evenly strided within equal sections), ``"ddimN"`` (the integer stride of the DDIM paper
    that gives exactly N steps, starting at 0) or ``"fast27"`` (the release's 27-step schedule:
    sections ``10,10,3,2,2`` with the last step ``T-1`` moved to ``T-3`` to tame the noisiest step)
    or ``"pdN"`` (:func:`distillation_grid`).
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("pd"):
            return set(distillation_grid(num_timesteps, int(section_counts[len("pd") :])))
        if section_counts.startswith("ddim"):
            wanted = int(section_counts[len("ddim") :])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == wanted:
                    return set(range(0, num_timesteps, stride))
            raise ValueError(f"no integer stride gives exactly {wanted} of {num_timesteps} steps")
        if section_counts == "fast27":
            steps = _even_sections(num_timesteps, [10, 10, 3, 2, 2])
            steps.discard(num_timesteps - 1)
            steps.add(num_timesteps - 3)
            return steps
        section_counts = [int(part) for part in section_counts.split(",")]
    return _even_sections(num_timesteps, list(section_counts))


class SpacedDiffusion(GaussianDiffusion):
    """The process restricted to ``use_timesteps`` of the one defined by ``betas``.

    Indices ``t`` of this object run over the kept steps in increasing order; models and
    ``cond_fn``\\s are called with ``timestep_map[t]``, the original timesteps.
    """

    def __init__(
        self,
        use_timesteps: Iterable[int],
        betas: Sequence[float] | np.ndarray,
        *,
        parametrization: str = "eps",
    ) -> None:
        original = GaussianDiffusion(betas)
        kept = sorted(set(use_timesteps))
        if not kept or kept[0] < 0 or kept[-1] >= original.num_timesteps:
            raise ValueError("use_timesteps must be a non-empty subset of the original indices")
        abar = original.alphas_cumprod.numpy()[kept]
        abar_prev = np.concatenate([[1.0], abar[:-1]])
        self.original_num_steps = original.num_timesteps
        super().__init__(1.0 - abar / abar_prev, timestep_map=kept, parametrization=parametrization)


def create_gaussian_diffusion(
    *,
    steps: int = 1000,
    noise_schedule: str = "squaredcos_cap_v2",
    timestep_respacing: str | Sequence[int] = "",
    parametrization: str = "eps",
) -> GaussianDiffusion:
    """The release's process: ``steps`` betas of ``noise_schedule``, respaced when asked, for a
    model with the given ``parametrization`` (``"eps"``: GLIDE's)."""
    betas = get_named_beta_schedule(noise_schedule, steps)
    if not timestep_respacing:
        return GaussianDiffusion(betas, parametrization=parametrization)
    return SpacedDiffusion(
        space_timesteps(steps, timestep_respacing), betas, parametrization=parametrization
    )
