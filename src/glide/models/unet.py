"""The ADM U-Net torso (Dhariwal & Nichol, 2021) as used by GLIDE.

Parameter names (``input_blocks.3.0.in_layers.2.weight`` ...) follow the public release so that
released checkpoints load with ``strict=True``. Sequential indices are part of that format: e.g.
``ResBlock.in_layers`` is ``[norm, act, conv]`` and ``out_layers`` ``[norm, act, dropout, conv]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from glide.models.nn import GroupNorm32, attention, timestep_embedding, zero_


@dataclass(frozen=True)
class UNetConfig:
    """Shape of the U-Net torso. ``attention_ds`` are downsample rates (image_size // resolution)."""

    in_channels: int = 3
    model_channels: int = 192
    out_channels: int = 6
    num_res_blocks: int = 3
    attention_ds: tuple[int, ...] = (2, 4, 8)
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)
    dropout: float = 0.0
    num_heads: int = 1
    num_head_channels: int = 64  # -1: use num_heads instead of a fixed width per head
    num_heads_upsample: int = -1  # -1: same as num_heads
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    conv_resample: bool = True
    encoder_channels: int | None = None  # width of the text tokens the attention layers read
    use_checkpoint: bool = False  # gradient checkpointing of every block while training
    attention_impl: str = "einsum"


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling, optionally followed by a 3x3 convolution."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if use_conv else None

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return x if self.conv is None else self.conv(x)


class Downsample(nn.Module):
    """2x downsampling: a stride-2 3x3 convolution, or average pooling."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.op = (
            nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class ResBlock(nn.Module):
    """Residual block conditioned on the time embedding, optionally resampling by 2x.

    With ``use_scale_shift_norm`` the embedding modulates the second norm as ``norm(h)*(1+s)+b``
    (FiLM); otherwise it is added before it.
    """

    def __init__(
        self,
        channels: int,
        *,
        emb_channels: int,
        out_channels: int | None = None,
        dropout: float = 0.0,
        use_scale_shift_norm: bool = False,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.resample: nn.Module | None = None
        if up:
            self.resample = Upsample(channels, use_conv=False)
        elif down:
            self.resample = Downsample(channels, use_conv=False)
        emb_out = 2 * out_channels if use_scale_shift_norm else out_channels
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, emb_out))
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            zero_(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        if out_channels == channels:
            self.skip_connection: nn.Module = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.resample is None:
            h = self.in_layers(x)
        else:  # resample between the activation and the convolution, and on the skip path
            h = self.in_layers[1](self.in_layers[0](x))
            h = self.in_layers[2](self.resample(h))
            x = self.resample(x)
        e = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        norm, rest = self.out_layers[0], self.out_layers[1:]
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = rest(norm(h) * (1 + scale) + shift)
        else:
            h = rest(norm(h + e))
        return self.skip_connection(x) + h


class TextCondition:
    """The caption's encoding for one denoising trajectory, computed once instead of every step.

    Tokens do not change across the steps of a sample, so the text transformer's outputs, the
    projected last token ``xf_proj`` [B, 4*model_channels] and the token features ``xf_out``
    [B, xf_width, text_ctx], are kept here, and each attention layer's keys and values of the
    tokens (its ``encoder_kv`` projection, split into heads) are memoised on first use. Outputs
    are bit-identical to recomputing them (the same operations on the same inputs); the memo
    holds for the batch rows, precision and weights it was built with: one per trajectory.
    """

    def __init__(self, xf_proj: Tensor, xf_out: Tensor) -> None:
        self.xf_proj = xf_proj
        self.xf_out = xf_out
        self._kv: dict[tuple[nn.Module, str], tuple[Tensor, Tensor]] = {}

    def __len__(self) -> int:
        return self.xf_out.shape[0]

    def text_kv(self, layer: AttentionBlock) -> tuple[Tensor, Tensor]:
        """``layer.text_kv(xf_out)``, computed on the first call for each layer only."""
        key = (layer, layer.attention_impl)  # the layout differs between implementations
        kv = self._kv.get(key)
        if kv is None:
            kv = self._kv[key] = layer.text_kv(self.xf_out)
        return kv


EncoderOut = Tensor | TextCondition | None
"""What the attention layers read: raw token features [B, C, L], a cached encoding, or none."""


class AttentionBlock(nn.Module):
    """Self-attention over spatial positions; with ``encoder_channels`` the keys and values are
    extended by projections of the text tokens (prepended, as in the release)."""

    def __init__(
        self,
        channels: int,
        *,
        num_heads: int = 1,
        num_head_channels: int = -1,
        encoder_channels: int | None = None,
        attention_impl: str = "einsum",
    ) -> None:
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(
                    f"{channels} channels not divisible by head width {num_head_channels}"
                )
            self.num_heads = channels // num_head_channels
        self.attention_impl = attention_impl
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        if encoder_channels is not None:
            self.encoder_kv = nn.Conv1d(encoder_channels, 2 * channels, 1)
        self.proj_out = zero_(nn.Conv1d(channels, channels, 1))

    def _heads(self, t: Tensor, n: int) -> list[Tensor]:
        # The release lays channels out as (head, n, head_dim): split, then -> [B, H, L, D].
        b, c, length = t.shape
        parts = t.reshape(b, self.num_heads, c // self.num_heads, length).chunk(n, dim=2)
        return [p.transpose(-1, -2) for p in parts]

    def _heads_last(self, t: Tensor, n: int) -> list[Tensor]:
        # The same split of [B, L, n*C] tokens-last projections; views with unit stride on D,
        # the layout scaled_dot_product_attention's fused kernels need.
        b, length, c = t.shape
        parts = t.view(b, length, self.num_heads, n, c // (n * self.num_heads)).unbind(3)
        return [p.transpose(1, 2) for p in parts]

    def text_kv(self, encoder_out: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values [B, H, S, D] of text tokens [B, encoder_channels, S]."""
        if self.attention_impl == "sdpa":
            ek, ev = self._heads_last(_pointwise(self.encoder_kv, encoder_out.transpose(1, 2)), 2)
        else:
            ek, ev = self._heads(self.encoder_kv(encoder_out), 2)
        return ek, ev

    def forward(self, x: Tensor, encoder_out: EncoderOut = None) -> Tensor:
        b, c, *spatial = x.shape
        sdpa = self.attention_impl == "sdpa"
        h = self.norm(x).reshape(b, c, -1)
        if sdpa:  # tokens-last: the 1x1 projections become matmuls (a view under channels_last)
            q, k, v = self._heads_last(_pointwise(self.qkv, h.transpose(1, 2)), 3)
        else:
            q, k, v = self._heads(self.qkv(h), 3)
        if encoder_out is not None:
            if isinstance(encoder_out, TextCondition):
                ek, ev = encoder_out.text_kv(self)
            else:
                ek, ev = self.text_kv(encoder_out)
            k, v = torch.cat([ek, k], dim=2), torch.cat([ev, v], dim=2)
        h = attention(q, k, v, impl=self.attention_impl)  # [B, H, T, D]
        if sdpa:
            h = _pointwise(self.proj_out, h.transpose(1, 2).reshape(b, -1, c)).transpose(1, 2)
        else:
            h = self.proj_out(h.transpose(-1, -2).reshape(b, c, -1))
        return x + h.reshape(b, c, *spatial)


def _pointwise(conv: nn.Module, tokens: Tensor) -> Tensor:
    """A kernel-size-1 ``Conv1d`` applied to tokens-last input [B, L, C_in] -> [B, L, C_out]."""
    assert isinstance(conv, nn.Conv1d)
    return F.linear(tokens, conv.weight.squeeze(-1), conv.bias)


class TimestepEmbedSequential(nn.Sequential):
    """A sequence of layers, each fed the time embedding or the text tokens when it takes them."""

    def forward(self, x: Tensor, emb: Tensor, encoder_out: EncoderOut = None) -> Tensor:  # type: ignore[override]
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, AttentionBlock):
                x = layer(x, encoder_out)
            else:
                x = layer(x)
        return x


class UNet(nn.Module):
    """The ADM U-Net: ``forward(x, timesteps) -> [B, out_channels, H, W]``."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = cfg = config
        self.model_channels = mc = cfg.model_channels
        emb_dim = 4 * mc
        heads_up = cfg.num_heads if cfg.num_heads_upsample == -1 else cfg.num_heads_upsample

        def resblock(
            ch: int, out: int | None = None, *, up: bool = False, down: bool = False
        ) -> ResBlock:
            return ResBlock(
                ch,
                emb_channels=emb_dim,
                out_channels=out,
                dropout=cfg.dropout,
                use_scale_shift_norm=cfg.use_scale_shift_norm,
                up=up,
                down=down,
            )

        def attn(ch: int, heads: int) -> AttentionBlock:
            return AttentionBlock(
                ch,
                num_heads=heads,
                num_head_channels=cfg.num_head_channels,
                encoder_channels=cfg.encoder_channels,
                attention_impl=cfg.attention_impl,
            )

        self.time_embed = nn.Sequential(
            nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )

        ch = first_ch = int(cfg.channel_mult[0] * mc)
        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))]
        )
        skip_chans = [ch]
        ds = 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [resblock(ch, int(mult * mc))]
                ch = int(mult * mc)
                if ds in cfg.attention_ds:
                    layers.append(attn(ch, cfg.num_heads))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(cfg.channel_mult) - 1:
                down = (
                    resblock(ch, down=True)
                    if cfg.resblock_updown
                    else Downsample(ch, cfg.conv_resample)
                )
                self.input_blocks.append(TimestepEmbedSequential(down))
                skip_chans.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(
            resblock(ch), attn(ch, cfg.num_heads), resblock(ch)
        )

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [resblock(ch + skip_chans.pop(), int(mult * mc))]
                ch = int(mult * mc)
                if ds in cfg.attention_ds:
                    layers.append(attn(ch, heads_up))
                if level and i == cfg.num_res_blocks:
                    layers.append(
                        resblock(ch, up=True)
                        if cfg.resblock_updown
                        else Upsample(ch, cfg.conv_resample)
                    )
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(
            GroupNorm32(ch), nn.SiLU(), zero_(nn.Conv2d(first_ch, cfg.out_channels, 3, padding=1))
        )

    def _run(self, block: nn.Module, h: Tensor, emb: Tensor, ctx: EncoderOut) -> Tensor:
        if self.config.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(block, h, emb, ctx, use_reentrant=False)
        return block(h, emb, ctx)

    def torso(self, h: Tensor, emb: Tensor, encoder_out: EncoderOut = None) -> Tensor:
        """Run the U-Net on an input ``h`` given the embedding ``emb`` (and text tokens)."""
        skips = []
        for block in self.input_blocks:
            h = self._run(block, h, emb, encoder_out)
            skips.append(h)
        h = self._run(self.middle_block, h, emb, encoder_out)
        for block in self.output_blocks:
            h = self._run(block, torch.cat([h, skips.pop()], dim=1), emb, encoder_out)
        return self.out(h)

    def forward(self, x: Tensor, timesteps: Tensor) -> Tensor:
        return self.torso(x, self.time_embed(timestep_embedding(timesteps, self.model_channels)))
