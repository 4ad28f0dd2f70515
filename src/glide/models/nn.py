"""Small building blocks shared by the U-Net, the text transformer and the noised CLIP.

Attention comes in two numerically equivalent implementations, selected per module through an
``attention_impl`` attribute (see :func:`set_attention_impl`):

- ``"einsum"``: the release's formulation (queries and keys each pre-scaled by ``d**-0.25``,
  softmax in float32), bit-for-bit what the reference tensors were produced with;
- ``"sdpa"``: :func:`torch.nn.functional.scaled_dot_product_attention`, faster and
  memory-efficient, equal to the former within float32 round-off.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

AttentionImpl = Literal["einsum", "sdpa"]
ATTENTION_IMPLS: tuple[str, ...] = ("einsum", "sdpa")


class GroupNorm32(nn.GroupNorm):
    """32-group GroupNorm that always normalises in float32 and returns the input's dtype."""

    def __init__(self, channels: int, groups: int = 32, eps: float = 1e-5) -> None:
        super().__init__(num_groups=groups, num_channels=channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).to(x.dtype)


class LayerNorm32(nn.LayerNorm):
    """LayerNorm that normalises in float32 and returns the input's dtype."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).to(x.dtype)


def zero_(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` in place and return it (for residual output layers)."""
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
    return module


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps: ``[cos(t*f), sin(t*f)]``, [N, dim]."""
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=t.device) / half
    freqs = torch.exp(-math.log(max_period) * exponent)
    angles = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def attention(
    q: Tensor, k: Tensor, v: Tensor, *, impl: str = "einsum", causal: bool = False
) -> Tensor:
    """Multi-head attention on [B, H, T, D] queries and [B, H, S, D] keys/values -> [B, H, T, D]."""
    if impl == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    if impl != "einsum":
        raise ValueError(f"unknown attention impl {impl!r}; expected one of {ATTENTION_IMPLS}")
    scale = q.shape[-1] ** -0.25  # split between q and k: better conditioned in half precision
    logits = torch.einsum("bhtd,bhsd->bhts", q * scale, k * scale)
    if causal:
        t, s = logits.shape[-2:]
        keep = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(s - t)
        logits = logits.masked_fill(~keep, float("-inf"))
    weights = torch.softmax(logits.float(), dim=-1).to(logits.dtype)
    return torch.einsum("bhts,bhsd->bhtd", weights, v)


def set_attention_impl(model: nn.Module, impl: str) -> nn.Module:
    """Switch every attention layer inside ``model`` to ``impl`` ("einsum" or "sdpa")."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"unknown attention impl {impl!r}; expected one of {ATTENTION_IMPLS}")
    for m in model.modules():
        if hasattr(m, "attention_impl"):
            m.attention_impl = impl
    return model


# RMS(out_bf16 - out_fp32) / std(out_fp32) accepted for bfloat16 autocast on CPU (bf16 keeps 8
# mantissa bits, ~0.4% per operation; the tiny U-Net measures ~1.6%). Measured by
# benchmarks/model.py and checked by tests/test_precision.py.
BF16_TOLERANCE = 0.03


@torch.no_grad()
def perturb_(model: nn.Module, std: float = 0.02) -> nn.Module:
    """Add Gaussian noise to every parameter, so zero-initialised layers produce signal.

    Freshly built U-Nets output exactly zero (their last convolution starts at zero), which makes
    numerical comparisons (precision modes, attention kernels) vacuous.
    """
    for p in model.parameters():
        p.add_(torch.randn_like(p) * std)
    return model
