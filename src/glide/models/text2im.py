"""Text-conditional U-Nets: the GLIDE base model and its inpainting / super-resolution variants.

The caption is encoded by a transformer; its last token, projected, is added to the time
embedding, and every token, projected per attention layer (``encoder_kv``), extends the keys and
values of the U-Net's attention. Variants differ only in the extra image channels they read
(``up`` = bilinear resize to ``x``'s size, ``align_corners=False``; ``mask`` is 1 on known pixels):

- ``Text2ImUNet``: ``[x]``;
- ``InpaintText2ImUNet``: ``[x, image*mask, mask]`` (kwargs ``inpaint_image``, ``inpaint_mask``);
- ``SuperResText2ImUNet``: ``[x, up(low_res)]`` (kwarg ``low_res``);
- ``SuperResInpaintText2ImUNet``: ``[x, image*mask, mask, up(low_res)]`` (all three).

Every variant also accepts ``text=model.condition(tokens, mask)`` in place of ``tokens`` and
``mask``: the caption encoded once for a whole trajectory (:class:`~glide.models.unet.TextCondition`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glide.models.nn import LayerNorm32, timestep_embedding
from glide.models.unet import TextCondition, UNet, UNetConfig
from glide.models.xf import Transformer

GUIDANCE_EMBED_SCALE = 100.0  # w in [0, ~10] spread over the timestep embedding's range


@dataclass(frozen=True)
class Text2ImConfig:
    """A GLIDE U-Net: the torso (``unet``, with ``in_channels`` the *image* channels), the caption
    transformer and the conditioning variant. ``xf_width == 0`` gives an unconditional model."""

    unet: UNetConfig = field(default_factory=UNetConfig)
    image_size: int = 64
    text_ctx: int = 128
    xf_width: int = 512
    xf_layers: int = 16
    xf_heads: int = 8
    xf_final_ln: bool = True
    xf_padding: bool = True
    n_vocab: int = 50257
    inpaint: bool = False
    super_res: bool = False
    guidance_embed: bool = False  # ours: the guidance weight as an input (guided distillation)

    @property
    def torso_in_channels(self) -> int:
        c = self.unet.in_channels
        return c + (c + 1 if self.inpaint else 0) + (c if self.super_res else 0)


class Text2ImUNet(UNet):
    """``forward(x, timesteps, tokens, mask) -> [B, out_channels, H, W]``.

    ``tokens`` [B, text_ctx] are token ids and ``mask`` [B, text_ctx] is True on real tokens; with
    ``xf_padding`` the other positions are replaced by a learned padding embedding.
    """

    def __init__(self, config: Text2ImConfig) -> None:
        encoder_channels = config.xf_width or None
        super().__init__(
            replace(
                config.unet, in_channels=config.torso_in_channels, encoder_channels=encoder_channels
            )
        )
        self.text_config = config
        if config.guidance_embed:
            # Meng et al. 2023: the student of a guided teacher takes the weight w like a
            # timestep. The last layer starts at zero, so a student made from a teacher's weights
            # is the teacher's conditional model until it learns otherwise.
            emb_dim = 4 * self.model_channels
            self.guidance_embed = nn.Sequential(
                nn.Linear(self.model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
            )
            nn.init.zeros_(self.guidance_embed[2].weight)
            nn.init.zeros_(self.guidance_embed[2].bias)
        w = config.xf_width
        if not w:
            return
        impl = config.unet.attention_impl
        self.transformer = Transformer(w, config.xf_layers, config.xf_heads, attention_impl=impl)
        self.final_ln = LayerNorm32(w) if config.xf_final_ln else None
        self.token_embedding = nn.Embedding(config.n_vocab, w)
        self.positional_embedding = nn.Parameter(torch.empty(config.text_ctx, w))
        self.transformer_proj = nn.Linear(w, 4 * self.model_channels)
        if config.xf_padding:
            self.padding_embedding = nn.Parameter(torch.empty(config.text_ctx, w))
        # The release leaves these to its checkpoints; from scratch we use CLIP-like small normals.
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        if config.xf_padding:
            nn.init.normal_(self.padding_embedding, std=0.01)

    def encode_text(self, tokens: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Return ``(xf_proj [B, 4*model_channels], xf_out [B, xf_width, text_ctx])``."""
        h = self.token_embedding(tokens.long()) + self.positional_embedding[None]
        if self.text_config.xf_padding:
            if mask is None:
                raise ValueError("this model uses xf_padding: pass the token mask")
            h = torch.where(mask[..., None], h, self.padding_embedding[None])
        h = self.transformer(h)
        if self.final_ln is not None:
            h = self.final_ln(h)
        return self.transformer_proj(h[:, -1]), h.transpose(1, 2)

    def condition(self, tokens: Tensor, mask: Tensor | None = None) -> TextCondition:
        """Encode the caption once for a whole trajectory: pass the result as ``text=`` to every
        step instead of ``tokens`` and ``mask`` (same outputs, without re-running the text
        transformer and the attention layers' ``encoder_kv`` projections each step)."""
        if not self.text_config.xf_width:
            raise ValueError("this model is unconditional: it has no text encoder")
        return TextCondition(*self.encode_text(tokens, mask))

    def forward(
        self,
        x: Tensor,
        timesteps: Tensor,
        tokens: Tensor | None = None,
        mask: Tensor | None = None,
        *,
        text: TextCondition | None = None,
        guidance: Tensor | None = None,
    ) -> Tensor:
        """``guidance`` [B]: the classifier-free weight ``w`` each row samples with, for a model
        built with ``guidance_embed`` (and only for one)."""
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        if self.text_config.guidance_embed:
            if guidance is None:
                raise ValueError("this model is guidance-distilled: pass guidance=w per row")
            w = guidance.to(timesteps.device).float().expand(x.shape[0])
            emb = emb + self.guidance_embed(
                timestep_embedding(w * GUIDANCE_EMBED_SCALE, self.model_channels)
            ).to(emb.dtype)
        elif guidance is not None:
            raise ValueError("guidance= needs a model built with guidance_embed")
        encoder_out: Tensor | TextCondition | None = None
        if self.text_config.xf_width:
            if text is None:
                if tokens is None:
                    raise ValueError("this model is text-conditional: pass tokens (and mask)")
                xf_proj, encoder_out = self.encode_text(tokens, mask)
            else:
                if len(text) != x.shape[0]:
                    raise ValueError(f"text encodes {len(text)} rows, x has {x.shape[0]}")
                xf_proj, encoder_out = text.xf_proj, text
            emb = emb + xf_proj.to(emb.dtype)
        return self.torso(x, emb, encoder_out)


def _upsample_to(low_res: Tensor, like: Tensor) -> Tensor:
    return F.interpolate(low_res, like.shape[-2:], mode="bilinear", align_corners=False)


def _inpaint_channels(x: Tensor, image: Tensor | None, mask: Tensor | None) -> list[Tensor]:
    image = torch.zeros_like(x) if image is None else image
    mask = torch.zeros_like(x[:, :1]) if mask is None else mask
    return [image * mask, mask]


class InpaintText2ImUNet(Text2ImUNet):
    """Base model that also reads the known pixels (``inpaint_image`` where ``inpaint_mask`` is 1)."""

    def forward(  # type: ignore[override]
        self,
        x: Tensor,
        timesteps: Tensor,
        tokens: Tensor | None = None,
        mask: Tensor | None = None,
        *,
        inpaint_image: Tensor | None = None,
        inpaint_mask: Tensor | None = None,
        text: TextCondition | None = None,
    ) -> Tensor:
        h = torch.cat([x, *_inpaint_channels(x, inpaint_image, inpaint_mask)], dim=1)
        return super().forward(h, timesteps, tokens, mask, text=text)


class SuperResText2ImUNet(Text2ImUNet):
    """Upsampler: denoises ``x`` given ``low_res`` (any size, resized bilinearly to ``x``)."""

    def forward(  # type: ignore[override]
        self,
        x: Tensor,
        timesteps: Tensor,
        tokens: Tensor | None = None,
        mask: Tensor | None = None,
        *,
        low_res: Tensor,
        text: TextCondition | None = None,
    ) -> Tensor:
        h = torch.cat([x, _upsample_to(low_res, x)], dim=1)
        return super().forward(h, timesteps, tokens, mask, text=text)


class SuperResInpaintText2ImUNet(Text2ImUNet):
    """Upsampler that also reads the known high-resolution pixels."""

    def forward(  # type: ignore[override]
        self,
        x: Tensor,
        timesteps: Tensor,
        tokens: Tensor | None = None,
        mask: Tensor | None = None,
        *,
        low_res: Tensor,
        inpaint_image: Tensor | None = None,
        inpaint_mask: Tensor | None = None,
        text: TextCondition | None = None,
    ) -> Tensor:
        extra = _inpaint_channels(x, inpaint_image, inpaint_mask)
        h = torch.cat([x, *extra, _upsample_to(low_res, x)], dim=1)
        return super().forward(h, timesteps, tokens, mask, text=text)


def text2im_class(config: Text2ImConfig) -> type[Text2ImUNet]:
    """The variant class for a config's ``inpaint`` / ``super_res`` flags."""
    if config.inpaint and config.super_res:
        return SuperResInpaintText2ImUNet
    if config.inpaint:
        return InpaintText2ImUNet
    if config.super_res:
        return SuperResText2ImUNet
    return Text2ImUNet


def build_text2im(config: Text2ImConfig) -> Text2ImUNet:
    """Build the right variant for ``config``."""
    return text2im_class(config)(config)
