"""GLIDE networks: text-conditional ADM U-Nets and the noised CLIP, loadable from the release."""

from glide.models.clip import CLIPImageConfig, CLIPTextConfig, ImageEncoder, NoisedCLIP, TextEncoder
from glide.models.nn import set_attention_impl, timestep_embedding
from glide.models.options import (
    DEFAULT_OPTIONS,
    clip_configs_from_options,
    clip_from_openai_options,
    clip_image_encoder_from_openai_options,
    clip_text_encoder_from_openai_options,
    from_openai_options,
    from_reference_config,
    load_openai_checkpoint,
    reference_config_to_options,
    text2im_config_from_options,
)
from glide.models.presets import build_from_preset, load_preset
from glide.models.text2im import (
    InpaintText2ImUNet,
    SuperResInpaintText2ImUNet,
    SuperResText2ImUNet,
    Text2ImConfig,
    Text2ImUNet,
    build_text2im,
)
from glide.models.unet import UNet, UNetConfig

__all__ = [
    "DEFAULT_OPTIONS",
    "CLIPImageConfig",
    "CLIPTextConfig",
    "ImageEncoder",
    "InpaintText2ImUNet",
    "NoisedCLIP",
    "SuperResInpaintText2ImUNet",
    "SuperResText2ImUNet",
    "Text2ImConfig",
    "Text2ImUNet",
    "TextEncoder",
    "UNet",
    "UNetConfig",
    "build_from_preset",
    "build_text2im",
    "clip_configs_from_options",
    "clip_from_openai_options",
    "clip_image_encoder_from_openai_options",
    "clip_text_encoder_from_openai_options",
    "from_openai_options",
    "from_reference_config",
    "load_openai_checkpoint",
    "load_preset",
    "reference_config_to_options",
    "set_attention_impl",
    "text2im_config_from_options",
    "timestep_embedding",
]
