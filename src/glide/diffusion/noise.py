"""Where sampling noise comes from: one generator for a batch, or one generator per image.

A single :class:`torch.Generator` draws a batch's noise in one call, so an image's noise depends on
its position in the batch and on every image drawn before it. :class:`ImageGenerators` gives each
image its own generator, seeded from ``(seed, caption index, image index)`` by
:func:`image_seed`: its starting noise and every step's noise are then the same whatever the
batch it lands in, the number of processes sharing the work, or the device (the noise is drawn on
the CPU and moved). The samplers accept either as ``generator``.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["ImageGenerators", "NoiseGenerator", "draw_noise", "image_seed"]


def image_seed(seed: int, caption_index: int, image_index: int = 0) -> int:
    """A 63-bit seed for image ``image_index`` of caption ``caption_index`` under ``seed``.

    Hashed rather than combined arithmetically, so no two triples share a stream by accident
    (``seed + caption`` would make caption 1 of seed 0 equal caption 0 of seed 1).
    """
    packed = struct.pack("<qqq", seed, caption_index, image_index)
    return int.from_bytes(hashlib.blake2b(packed, digest_size=8).digest(), "little") >> 1


class ImageGenerators:
    """One CPU generator per image of a batch of ``n`` images.

    A draw of shape ``[B, ...]`` takes row ``i`` from generator ``i % n``: with classifier-free
    guidance the batch is ``[cond rows; uncond rows]`` (``B = 2n``) and both halves get the same
    noise, which is what guidance makes of them anyway (it evaluates the first half twice).
    """

    def __init__(self, generators: Sequence[torch.Generator]) -> None:
        if not generators:
            raise ValueError("ImageGenerators needs at least one generator")
        self.generators = list(generators)

    @classmethod
    def seeded(cls, seeds: Sequence[int]) -> ImageGenerators:
        """Generators seeded with ``seeds`` (e.g. from :func:`image_seed`), one per image."""
        return cls([torch.Generator().manual_seed(int(s)) for s in seeds])

    def __len__(self) -> int:
        return len(self.generators)

    def randn(
        self,
        shape: Sequence[int],
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """Standard normal noise of ``shape``, one row per generator (repeated to ``shape[0]``)."""
        n, rows = len(self.generators), int(shape[0])
        if rows % n:
            raise ValueError(f"a batch of {rows} rows does not split over {n} images")
        row = (1, *(int(s) for s in shape[1:]))
        drawn = torch.cat([torch.randn(row, generator=g) for g in self.generators])
        if rows != n:
            drawn = drawn.repeat(rows // n, *([1] * (len(shape) - 1)))
        return drawn.to(device=device, dtype=dtype or torch.get_default_dtype())


NoiseGenerator = torch.Generator | ImageGenerators


def draw_noise(
    shape: Sequence[int],
    generator: NoiseGenerator | None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """``torch.randn(shape)`` from ``generator`` (a torch generator, per-image generators, or the
    global RNG when ``None``)."""
    if isinstance(generator, ImageGenerators):
        return generator.randn(shape, device=device, dtype=dtype)
    return torch.randn(*shape, device=device, dtype=dtype, generator=generator)
