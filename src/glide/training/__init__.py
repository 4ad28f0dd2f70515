"""Training of the four GLIDE networks with PyTorch Lightning (base, upsampler, inpaint, CLIP)."""

from glide.training.checkpoint import AtomicCheckpointIO, last_checkpoint, load_checkpoint
from glide.training.config import (
    DataConfig,
    InpaintConfig,
    OptimConfig,
    SampleConfig,
    TrainConfig,
    UpsampleConfig,
    train_config_from_dict,
)
from glide.training.datamodule import ShardDataModule, ShardStream, quantize_8bit
from glide.training.ema import EMA
from glide.training.masks import random_masks
from glide.training.modules import (
    ClipModule,
    GlideModule,
    InpaintModule,
    Text2ImModule,
    UpsampleModule,
    build_module,
)
from glide.training.run import TrainResult, build_trainer, model_options, train

__all__ = [
    "EMA",
    "AtomicCheckpointIO",
    "ClipModule",
    "DataConfig",
    "GlideModule",
    "InpaintConfig",
    "InpaintModule",
    "OptimConfig",
    "SampleConfig",
    "ShardDataModule",
    "ShardStream",
    "Text2ImModule",
    "TrainConfig",
    "TrainResult",
    "UpsampleConfig",
    "UpsampleModule",
    "build_module",
    "build_trainer",
    "last_checkpoint",
    "load_checkpoint",
    "model_options",
    "quantize_8bit",
    "random_masks",
    "train",
    "train_config_from_dict",
]
