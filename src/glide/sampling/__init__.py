"""Sampling for people and for evaluation: samplers, the base -> upsampler cascade, model
sources (exported checkpoints, MLflow URIs, released OpenAI files) and PNG output."""

from glide.sampling.cascade import (
    Cascade,
    CascadeOutput,
    GenerationConfig,
    InpaintInputs,
    Stage,
    clip_text_embeddings,
    clip_tokens,
    quantize,
    to_pil,
    to_uint8,
)
from glide.sampling.io import image_grid, output_paths, png_metadata, save_samples
from glide.sampling.model_source import (
    LoadedModel,
    ModelSourceError,
    load_model_source,
    openai_dir,
)
from glide.sampling.recipes import (
    DEFAULT_RECIPE,
    RECIPES,
    Execution,
    Recipe,
    for_models,
    get_recipe,
)
from glide.sampling.samplers import (
    SAMPLERS,
    DiffusionSpec,
    SamplerSpec,
    parse_sampler,
    run_sampler,
    sampler_diffusion,
)

__all__ = [
    "DEFAULT_RECIPE",
    "RECIPES",
    "SAMPLERS",
    "Cascade",
    "CascadeOutput",
    "DiffusionSpec",
    "Execution",
    "GenerationConfig",
    "InpaintInputs",
    "LoadedModel",
    "ModelSourceError",
    "Recipe",
    "SamplerSpec",
    "Stage",
    "clip_text_embeddings",
    "clip_tokens",
    "for_models",
    "get_recipe",
    "image_grid",
    "load_model_source",
    "openai_dir",
    "output_paths",
    "parse_sampler",
    "png_metadata",
    "quantize",
    "run_sampler",
    "sampler_diffusion",
    "save_samples",
    "to_pil",
    "to_uint8",
]
