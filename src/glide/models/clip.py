"""GLIDE's noised CLIP: a timestep-aware ViT image encoder and a causal text encoder.

Used for CLIP guidance: the image encoder sees noisy images ``x_t`` (in [-1, 1]) together with
their timestep. Parameter names follow the release (``blocks.input.w_t``,
``blocks.block_3.f_attn.f_q.w``, ``blocks.output.f.w`` ...). The release pads sequences to
multiples of 32 and masks the padding out; attention here runs on the unpadded sequence, which
gives the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glide.models.nn import attention

# Per-channel pixel statistics (0..255 scale) used by the original CLIP.
PIXEL_MEAN = (122.77093945, 116.74601272, 104.09373519)
PIXEL_STD = (68.50053285, 66.63215831, 70.32316309)


@dataclass(frozen=True)
class CLIPImageConfig:
    image_size: int = 64
    patch_size: int = 4
    n_embd: int = 512  # output embedding width
    n_head: int = 12
    n_head_state: int = 64  # width per head; the transformer is n_head * n_head_state wide
    n_xf_blocks: int = 12
    n_timestep: int = 1000  # 0: an ordinary (noise-free) CLIP with a learned class token
    attention_impl: str = "einsum"


@dataclass(frozen=True)
class CLIPTextConfig:
    n_vocab: int = 65536
    max_text_len: int = 77
    n_embd: int = 512
    n_head: int = 8
    n_head_state: int = 64
    n_xf_blocks: int = 12
    attention_impl: str = "einsum"


class LayerNorm(nn.Module):
    """LayerNorm (eps 1e-5) with the release's parameter names ``g`` and ``b``, in float32."""

    def __init__(self, n: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.g = nn.Parameter(torch.ones(n))
        self.b = nn.Parameter(torch.zeros(n))

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x.float(), self.g.shape, self.g, self.b, self.eps)


class Affine(nn.Module):
    """A linear layer with parameters ``w`` [out, in] and optional ``b``, initialised N(0, std)."""

    def __init__(
        self, n_in: int, n_out: int, *, std: float | None = None, bias: bool = True
    ) -> None:
        super().__init__()
        std = math.sqrt(2 / (n_in + n_out)) if std is None else std
        self.w = nn.Parameter(torch.empty(n_out, n_in).normal_(std=std))
        self.b = nn.Parameter(torch.zeros(n_out)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        b = None if self.b is None else self.b.to(x.dtype)
        return F.linear(x, self.w.to(x.dtype), b)


class AttentionResblock(nn.Module):
    def __init__(
        self, n_state: int, n_head: int, n_resblocks: int, *, causal: bool, attention_impl: str
    ) -> None:
        super().__init__()
        self.n_head, self.causal, self.attention_impl = n_head, causal, attention_impl
        std = 1 / math.sqrt(n_state)
        self.ln = LayerNorm(n_state)
        self.f_q = Affine(n_state, n_state, std=std)
        self.f_k = Affine(n_state, n_state, std=std, bias=False)
        self.f_v = Affine(n_state, n_state, std=std)
        self.f_c = Affine(n_state, n_state, std=std / n_resblocks)

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        r = self.ln(x)
        q, k, v = (
            f(r).view(b, t, self.n_head, -1).transpose(1, 2) for f in (self.f_q, self.f_k, self.f_v)
        )
        y = attention(q, k, v, impl=self.attention_impl, causal=self.causal)
        return x + self.f_c(y.transpose(1, 2).reshape(b, t, c))


class FullyConnectedResblock(nn.Module):
    def __init__(self, n_state: int, n_resblocks: int) -> None:
        super().__init__()
        self.ln = LayerNorm(n_state)
        self.f_1 = Affine(n_state, 4 * n_state, std=math.sqrt(2 / (4 * n_state)))
        self.f_2 = Affine(4 * n_state, n_state, std=1 / (math.sqrt(n_state) * n_resblocks))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.f_2(F.gelu(self.f_1(self.ln(x))))


class TransformerBlock(nn.Module):
    def __init__(
        self, n_state: int, n_head: int, n_resblocks: int, *, causal: bool, attention_impl: str
    ) -> None:
        super().__init__()
        self.f_attn = AttentionResblock(
            n_state, n_head, n_resblocks, causal=causal, attention_impl=attention_impl
        )
        self.f_mlp = FullyConnectedResblock(n_state, n_resblocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.f_mlp(self.f_attn(x))


class ImageEmbedding(nn.Module):
    """Patchify, prepend a timestep token (or a learned state when ``n_timestep == 0``), add positions."""

    def __init__(self, config: CLIPImageConfig, n_state: int) -> None:
        super().__init__()
        if config.image_size % config.patch_size:
            raise ValueError("image_size must be a multiple of patch_size")
        self.patch_size = config.patch_size
        n_patches = (config.image_size // config.patch_size) ** 2
        std = 1 / math.sqrt(n_state)
        if config.n_timestep:
            self.w_t = nn.Parameter(torch.empty(config.n_timestep, n_state).normal_(std=std))
        else:
            self.pred_state = nn.Parameter(torch.empty(n_state).normal_(std=std))
        p = config.patch_size
        proj_std = math.sqrt(2 / (n_state * p * p))
        self.patch_proj = nn.Parameter(torch.empty(n_state, 3, p, p).normal_(std=proj_std))
        self.w_pos = nn.Parameter(torch.empty(1 + n_patches, n_state).normal_(std=std))
        self.ln = LayerNorm(n_state)
        self.register_buffer("mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor, t: Tensor | None) -> Tensor:
        x = ((x + 1) * 127.5 - self.mean) / self.std  # [-1, 1] -> CLIP's normalised pixels
        x = F.conv2d(x, self.patch_proj, stride=self.patch_size).flatten(2).transpose(1, 2)
        if hasattr(self, "w_t"):
            if t is None:
                raise ValueError("the noised CLIP image encoder needs timesteps")
            first = F.embedding(t, self.w_t)[:, None]
        else:
            first = self.pred_state.expand(x.shape[0], 1, -1)
        return self.ln(torch.cat([first, x], dim=1) + self.w_pos[None])


class TextEmbedding(nn.Module):
    def __init__(self, n_vocab: int, n_ctx: int, n_state: int) -> None:
        super().__init__()
        self.w_voc = nn.Parameter(torch.empty(n_vocab, n_state).normal_(std=0.02))
        self.w_pos = nn.Parameter(torch.empty(n_ctx, n_state).normal_(std=0.01))

    def forward(self, tokens: Tensor) -> Tensor:
        return F.embedding(tokens, self.w_voc) + self.w_pos[None, : tokens.shape[1]]


class FeatureExtractor(nn.Module):
    """Final LayerNorm and bias-free projection of one token to the embedding width."""

    def __init__(self, n_state: int, n_embd: int) -> None:
        super().__init__()
        self.ln = LayerNorm(n_state)
        self.f = Affine(n_state, n_embd, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.f(self.ln(x))


class ImageEncoder(nn.Module):
    """``forward(images in [-1, 1] [B,3,S,S], t [B]) -> unnormalised embedding [B, n_embd]``."""

    def __init__(self, config: CLIPImageConfig) -> None:
        super().__init__()
        self.config = config
        n_state = config.n_head * config.n_head_state
        blocks: dict[str, nn.Module] = {"input": ImageEmbedding(config, n_state)}
        for i in range(config.n_xf_blocks):
            blocks[f"block_{i}"] = TransformerBlock(
                n_state,
                config.n_head,
                2 * config.n_xf_blocks,
                causal=False,
                attention_impl=config.attention_impl,
            )
        blocks["output"] = FeatureExtractor(n_state, config.n_embd)
        self.blocks = nn.ModuleDict(blocks)

    def forward(self, images: Tensor, t: Tensor | None = None) -> Tensor:
        h = self.blocks["input"](images, t)
        for i in range(self.config.n_xf_blocks):
            h = self.blocks[f"block_{i}"](h)
        return self.blocks["output"](h[:, 0])


class TextEncoder(nn.Module):
    """``forward(tokens [B, max_text_len], lens [B]) -> unnormalised embedding [B, n_embd]``,
    read at the last real token (position ``lens - 1``) of a causal transformer."""

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.config = config
        n_state = config.n_head * config.n_head_state
        blocks: dict[str, nn.Module] = {
            "input": TextEmbedding(config.n_vocab, config.max_text_len, n_state)
        }
        for i in range(config.n_xf_blocks):
            blocks[f"block_{i}"] = TransformerBlock(
                n_state,
                config.n_head,
                2 * config.n_xf_blocks,
                causal=True,
                attention_impl=config.attention_impl,
            )
        blocks["output"] = FeatureExtractor(n_state, config.n_embd)
        self.blocks = nn.ModuleDict(blocks)

    def forward(self, tokens: Tensor, lens: Tensor) -> Tensor:
        h = self.blocks["input"](tokens)
        for i in range(self.config.n_xf_blocks):
            h = self.blocks[f"block_{i}"](h)
        last = h[torch.arange(h.shape[0], device=h.device), lens.long() - 1]
        return self.blocks["output"](last)


def _normalize(z: Tensor) -> Tensor:
    return z / (torch.linalg.norm(z, dim=-1, keepdim=True) + 1e-12)


class NoisedCLIP(nn.Module):
    """Both encoders plus the guidance objective ``logit_scale * <text_emb, image_emb(x_t, t)>``."""

    def __init__(
        self, image: CLIPImageConfig, text: CLIPTextConfig, logit_scale: float = 100.0
    ) -> None:
        super().__init__()
        self.image_encoder = ImageEncoder(image)
        self.text_encoder = TextEncoder(text)
        self.logit_scale = logit_scale

    def image_embeddings(self, images: Tensor, t: Tensor) -> Tensor:
        return _normalize(self.image_encoder(images, t))

    def text_embeddings(self, tokens: Tensor, lens: Tensor) -> Tensor:
        return _normalize(self.text_encoder(tokens, lens))

    def guidance_grad(self, x: Tensor, t: Tensor, text_emb: Tensor) -> Tensor:
        """Gradient w.r.t. ``x`` of ``logit_scale * sum(text_emb * image_embeddings(x, t))``."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            score = self.logit_scale * (text_emb * self.image_embeddings(x, t)).sum()
            return torch.autograd.grad(score, x)[0]
