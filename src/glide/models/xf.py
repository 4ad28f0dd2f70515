"""GLIDE's caption encoder: a pre-norm (bidirectional) transformer over token embeddings.

Names follow the release: ``transformer.resblocks.{i}.{ln_1,attn.c_qkv,attn.c_proj,ln_2,mlp.c_fc,
mlp.c_proj}``.
"""

from __future__ import annotations

from torch import Tensor, nn

from glide.models.nn import LayerNorm32, attention


class MultiheadAttention(nn.Module):
    """Self-attention whose fused projection is laid out per head as (q, k, v) chunks."""

    def __init__(self, width: int, heads: int, attention_impl: str = "einsum") -> None:
        super().__init__()
        self.heads = heads
        self.attention_impl = attention_impl
        self.c_qkv = nn.Linear(width, 3 * width)
        self.c_proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        b, t, w = x.shape
        qkv = self.c_qkv(x).view(b, t, self.heads, -1).transpose(1, 2)  # [B, H, T, 3D]
        q, k, v = qkv.chunk(3, dim=-1)
        y = attention(q, k, v, impl=self.attention_impl)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, w))


class MLP(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, 4 * width)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * width, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, attention_impl: str = "einsum") -> None:
        super().__init__()
        self.attn = MultiheadAttention(width, heads, attention_impl)
        self.ln_1 = LayerNorm32(width)
        self.mlp = MLP(width)
        self.ln_2 = LayerNorm32(width)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of ``layers`` pre-norm residual attention blocks on [B, T, width] inputs."""

    def __init__(self, width: int, layers: int, heads: int, attention_impl: str = "einsum") -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"transformer width {width} not divisible by {heads} heads")
        self.resblocks = nn.ModuleList(
            [ResidualAttentionBlock(width, heads, attention_impl) for _ in range(layers)]
        )

    def forward(self, x: Tensor) -> Tensor:
        for block in self.resblocks:
            x = block(x)
        return x
