"""Build models from the public release's option dicts and load its checkpoints.

The release describes a U-Net by a flat dict (``model_and_diffusion_defaults`` in glide-text2im:
``num_channels``, ``channel_mult`` as a comma string, ``attention_resolutions`` as a comma string
of *resolutions*, ...) and the noised CLIP by another (``n_head_text``, ``n_xf_blocks_image``, ...).
These helpers turn such dicts into our typed configs and modules.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from glide.models.clip import CLIPImageConfig, CLIPTextConfig, ImageEncoder, NoisedCLIP, TextEncoder
from glide.models.text2im import Text2ImConfig, Text2ImUNet, build_text2im
from glide.models.unet import UNetConfig

GPT2_VOCAB = 50257

# Release option names that describe the diffusion process or runtime, not the network.
_NON_NETWORK_OPTIONS = frozenset(
    {"diffusion_steps", "noise_schedule", "timestep_respacing", "use_fp16", "cache_text_emb"}
)
_NETWORK_OPTIONS = frozenset(
    {
        "image_size", "num_channels", "num_res_blocks", "channel_mult", "attention_resolutions",
        "num_heads", "num_head_channels", "num_heads_upsample", "use_scale_shift_norm", "dropout",
        "text_ctx", "xf_width", "xf_layers", "xf_heads", "xf_final_ln", "xf_padding",
        "resblock_updown", "inpaint", "super_res",
        # ours, not in the release's dict:
        "n_vocab", "out_channels", "in_channels", "use_checkpoint", "attention_impl", "conv_resample",
        "guidance_embed",  # a guided-distilled student (glide.training.distill)
    }
)  # fmt: skip

DEFAULT_OPTIONS: dict[str, Any] = {
    "image_size": 64,
    "num_channels": 192,
    "num_res_blocks": 3,
    "channel_mult": "",
    "num_heads": 1,
    "num_head_channels": 64,
    "num_heads_upsample": -1,
    "attention_resolutions": "32,16,8",
    "dropout": 0.1,
    "text_ctx": 128,
    "xf_width": 512,
    "xf_layers": 16,
    "xf_heads": 8,
    "xf_final_ln": True,
    "xf_padding": True,
    "use_scale_shift_norm": True,
    "resblock_updown": True,
    "inpaint": False,
    "super_res": False,
}


def default_channel_mult(image_size: int) -> tuple[int, ...]:
    """The release's per-resolution channel multipliers for ``channel_mult=""``."""
    table = {256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}
    if image_size not in table:
        raise ValueError(f"no default channel_mult for image_size {image_size}; give one")
    return table[image_size]


def _int_tuple(value: str | Any) -> tuple[int, ...]:
    if isinstance(value, str):
        return tuple(int(v) for v in value.split(",") if v.strip())
    return tuple(int(v) for v in value)


def text2im_config_from_options(options: Mapping[str, Any]) -> Text2ImConfig:
    """Translate release-style options (missing keys take the release defaults) to a config."""
    unknown = set(options) - _NETWORK_OPTIONS - _NON_NETWORK_OPTIONS
    if unknown:
        raise ValueError(f"unknown model options: {sorted(unknown)}")
    o = {**DEFAULT_OPTIONS, **options}
    size = int(o["image_size"])
    mult = _int_tuple(o["channel_mult"]) or default_channel_mult(size)
    unet = UNetConfig(
        in_channels=int(o.get("in_channels", 3)),
        model_channels=int(o["num_channels"]),
        out_channels=int(o.get("out_channels", 6)),
        num_res_blocks=int(o["num_res_blocks"]),
        attention_ds=tuple(size // r for r in _int_tuple(o["attention_resolutions"])),
        channel_mult=mult,
        dropout=float(o["dropout"]),
        num_heads=int(o["num_heads"]),
        num_head_channels=int(o["num_head_channels"]),
        num_heads_upsample=int(o["num_heads_upsample"]),
        use_scale_shift_norm=bool(o["use_scale_shift_norm"]),
        resblock_updown=bool(o["resblock_updown"]),
        conv_resample=bool(o.get("conv_resample", True)),
        use_checkpoint=bool(o.get("use_checkpoint", False)),
        attention_impl=str(o.get("attention_impl", "einsum")),
    )
    return Text2ImConfig(
        unet=unet,
        image_size=size,
        text_ctx=int(o["text_ctx"]),
        xf_width=int(o["xf_width"]),
        xf_layers=int(o["xf_layers"]),
        xf_heads=int(o["xf_heads"]),
        xf_final_ln=bool(o["xf_final_ln"]),
        xf_padding=bool(o["xf_padding"]),
        n_vocab=int(o.get("n_vocab", GPT2_VOCAB)),
        inpaint=bool(o["inpaint"]),
        super_res=bool(o["super_res"]),
        guidance_embed=bool(o.get("guidance_embed", False)),
    )


def from_openai_options(options: Mapping[str, Any]) -> Text2ImUNet:
    """Build the GLIDE U-Net variant described by release-style ``options``.

    Besides the release's keys this accepts ``n_vocab`` (default 50257, the GPT-2 BPE),
    ``attention_impl`` ("einsum" | "sdpa") and ``use_checkpoint``. Diffusion keys and
    ``use_fp16`` / ``cache_text_emb`` are accepted and ignored: precision is chosen at run time
    (:mod:`glide.precision`) and the caption is cached per trajectory (``model.condition``).
    """
    return build_text2im(text2im_config_from_options(options))


def reference_config_to_options(
    config: Mapping[str, Any], *, inpaint: bool, super_res: bool
) -> dict[str, Any]:
    """Adapt a reference file's ``config`` (list-valued ``channel_mult``, ``attention_ds``,
    ``in_channels_base``) to release-style options. The variant is not part of that config."""
    size = int(config["image_size"])
    if "attention_ds" in config:
        resolutions = ",".join(str(size // int(ds)) for ds in config["attention_ds"])
    else:
        resolutions = str(config["attention_resolutions"])
    options = {k: v for k, v in config.items() if k in _NETWORK_OPTIONS}
    options.update(
        channel_mult=",".join(str(m) for m in _int_tuple(config.get("channel_mult", ""))),
        attention_resolutions=resolutions,
        in_channels=int(config.get("in_channels_base", 3)),
        inpaint=inpaint,
        super_res=super_res,
    )
    options.setdefault("num_heads_upsample", -1)
    return options


def from_reference_config(
    config: Mapping[str, Any], *, inpaint: bool = False, super_res: bool = False
) -> Text2ImUNet:
    """Build the U-Net described by a reference tensor file's ``config`` dict."""
    return from_openai_options(
        reference_config_to_options(config, inpaint=inpaint, super_res=super_res)
    )


def clip_configs_from_options(options: Mapping[str, Any]) -> tuple[CLIPImageConfig, CLIPTextConfig]:
    """Release noised-CLIP options (``n_head_image``, ``n_xf_blocks_text``, ...) to our configs.

    Also accepts the reference file's shared form (``n_head``, ``n_head_state``, ``n_xf_blocks``,
    ``n_timestep``) used for both encoders.
    """

    def pick(name: str, suffix: str) -> int:
        return int(options[f"{name}_{suffix}"] if f"{name}_{suffix}" in options else options[name])

    n_timestep = options.get("n_timesteps", options.get("n_timestep", 1000))
    image = CLIPImageConfig(
        image_size=int(options["image_size"]),
        patch_size=int(options["patch_size"]),
        n_embd=int(options["n_embd"]),
        n_head=pick("n_head", "image"),
        n_head_state=pick("n_head_state", "image"),
        n_xf_blocks=pick("n_xf_blocks", "image"),
        n_timestep=int(n_timestep),
    )
    text = CLIPTextConfig(
        n_vocab=int(options["n_vocab"]),
        max_text_len=int(options["max_text_len"]),
        n_embd=int(options["n_embd"]),
        n_head=pick("n_head", "text"),
        n_head_state=pick("n_head_state", "text"),
        n_xf_blocks=pick("n_xf_blocks", "text"),
    )
    return image, text


def clip_image_encoder_from_openai_options(options: Mapping[str, Any]) -> ImageEncoder:
    """The noised CLIP image encoder (release checkpoint ``clip/image-enc``)."""
    return ImageEncoder(clip_configs_from_options(options)[0])


def clip_text_encoder_from_openai_options(options: Mapping[str, Any]) -> TextEncoder:
    """The CLIP text encoder (release checkpoint ``clip/text-enc``)."""
    return TextEncoder(clip_configs_from_options(options)[1])


def clip_from_openai_options(options: Mapping[str, Any]) -> NoisedCLIP:
    """Both noised-CLIP encoders with the guidance objective (``logit_scale`` default 100)."""
    image, text = clip_configs_from_options(options)
    return NoisedCLIP(image, text, logit_scale=float(options.get("logit_scale", 100.0)))


def load_openai_checkpoint(
    path: str | Path, options: Mapping[str, Any] | None = None, *, model: nn.Module | None = None
) -> nn.Module:
    """Load a released ``.pt`` state dict strictly (``weights_only=True``) into ``model``, or into
    a U-Net built from ``options``. Raises ``FileNotFoundError`` naming the path when missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} not found: download the release's file (e.g. base.pt, upsample.pt, "
            "clip_image_enc.pt from openaipublic.blob.core.windows.net/diffusion/dec-2021/) and "
            "pass its path"
        )
    if model is None:
        if options is None:
            raise ValueError("pass the model's options or a built model")
        model = from_openai_options(options)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model
