"""Typed training configuration (built from the Hydra ``train`` group by pipelines/train.py)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from glide.config import to_dataclass

KINDS = ("base", "upsample", "inpaint", "clip", "distill")


@dataclass(frozen=True)
class DataConfig:
    """The WebDataset stream: where the shards are and how samples become batches."""

    shards_dir: str = "data/shards"
    image_size: int = 64  # size of the image the model denoises (high-res for the upsampler)
    low_res_size: int = 0  # upsampler conditioning size; 0: no low-res input
    crop_size: int = 0  # upsampler: random aligned high-res crop (0: the whole image)
    batch_size: int = 32  # per device
    num_workers: int = 2
    caption_dropout: float = 0.2  # captions replaced by the empty caption (classifier-free)
    text_ctx: int = 32
    tokenizer: str = "clip"
    tokenizer_path: str | None = None
    resampled: bool = True  # infinite stream: shards drawn with replacement per data epoch
    epoch_length: int = 4096  # samples per data epoch over all ranks and workers
    shuffle_buffer: int = 256
    val_batches: int = 1  # batches of the val split per validation (0: no validation)
    val_batch_size: int = 16

    def __post_init__(self) -> None:
        if not 0.0 <= self.caption_dropout <= 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1], got {self.caption_dropout}")
        if self.low_res_size and self.image_size % self.low_res_size:
            raise ValueError("image_size must be a multiple of low_res_size")
        if self.crop_size and (self.crop_size > self.image_size or not self.low_res_size):
            raise ValueError("crop_size needs low_res_size and must be <= image_size")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup, then constant or cosine decay."""

    lr: float = 3e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 100
    schedule: str = "constant"  # "constant" | "cosine" (to min_lr_ratio * lr at max_steps)
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # max global gradient norm; 0 disables


@dataclass(frozen=True)
class UpsampleConfig:
    """Augmentation of the (8-bit) low-res input; GLIDE/CDM style conditioning augmentation."""

    blur_prob: float = 0.5
    blur_sigma: tuple[float, float] = (0.4, 0.6)
    noise_prob: float = 0.0
    noise_std: float = 0.02


@dataclass(frozen=True)
class InpaintConfig:
    """Masks of the inpainting fine-tune (1 = known pixel)."""

    init_from: str | None = "models/base/model.pt"  # exported base model; None: from scratch
    unmasked_fraction: float = 0.1  # examples with nothing to fill
    rect_fraction: float = 0.5  # of the masked examples: rectangles; the rest free-form strokes


@dataclass(frozen=True)
class DistillConfig:
    """Distillation of a trained base (kind ``distill``; Meng et al. 2023): ``guided`` gives a
    plain base a guidance-weight input (stage one), ``progressive`` halves the DDIM steps of such
    a student (stage two, one round per run: the teacher samples with ``2 * steps``)."""

    mode: str = "guided"  # guided: learn w from a plain base | progressive: halve the steps
    teacher: str = "models/base/model.pt"  # exported base model: the student starts as it
    w_min: float = 1.0  # guidance weights drawn uniformly from [w_min, w_max] per example
    w_max: float = 8.0
    steps: int = 8  # progressive: the student's steps (the teacher's are twice as many)

    def __post_init__(self) -> None:
        if self.mode not in ("guided", "progressive"):
            raise ValueError(f"train.distill.mode must be guided or progressive, got {self.mode!r}")
        if not 0 <= self.w_min <= self.w_max:
            raise ValueError("train.distill needs 0 <= w_min <= w_max")
        if self.steps < 1:
            raise ValueError("train.distill.steps must be >= 1")


@dataclass(frozen=True)
class SampleConfig:
    """The sample grid logged every ``every`` steps (fixed prompts and seed, EMA weights)."""

    every: int = 0  # 0: only at the end of training
    prompts: tuple[str, ...] = (
        "a red circle",
        "a blue square",
        "a green triangle",
        "a yellow star",
        "a purple hexagon",
        "an orange star in the center",
        "a large white square on a black background",
        "a big green hexagon",
    )
    guidance_scale: float = 3.0
    steps: int = 25  # respaced DDIM steps
    seed: int = 0


@dataclass(frozen=True)
class TrainConfig:
    """One training run: which network, for how long, with what optimisation and outputs."""

    name: str = "base"  # output folder models/<name>/, MLflow run name train_<name>
    kind: str = "base"  # base | upsample | inpaint | clip | distill
    preset: str = "tiny"  # conf/model/<preset>.yaml
    part: str = "base"  # preset entry: base | upsample | clip (inpaint adds inpaint=true)
    model_overrides: dict[str, Any] = field(default_factory=dict)  # merged into the options
    diffusion_steps: int = 1000
    noise_schedule: str = "squaredcos_cap_v2"
    parametrization: str = "eps"  # what the U-Net predicts: eps (GLIDE) | x0 | v
    timestep_sampler: str = "uniform"  # uniform (GLIDE) | loss_second_moment
    timestep_bins: int = 0  # loss_second_moment: bins sharing a loss history (0: one per step)
    loss_weighting: str = "none"  # none (GLIDE) | min_snr
    min_snr_gamma: float = 5.0
    max_steps: int = 1000
    max_time: float = 0.0  # seconds; 0: no cap (opt-in: a cap that fires truncates the model)
    seed: int = 0
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | fsdp | ... (Lightning strategy names)
    precision: str = "auto"  # auto: bf16-mixed where bf16 is faster (glide.precision), else 32-true
    activation_checkpointing: bool = False
    num_threads: int = 0  # torch CPU threads; 0: every CPU core
    ema_decay: float = 0.995
    accumulate_grad_batches: int = 1
    log_every: int = 10
    val_every: int = 0  # steps between validations (0: none)
    checkpoint_every: int = 200
    keep_checkpoints: int = 2  # step checkpoints kept besides last.ckpt (-1: all)
    out_dir: str = "models/base"
    plots_file: str = "plots/train_base.csv"
    # true: continue from out_dir's newest intact checkpoint and its MLflow run; auto: only a
    # run of this same config that did not finish (what `dvc repro` after a stop needs); false
    resume: bool | str = False
    progress: bool = True
    log_mlflow_model: bool = True  # also log the export as the run's MLflow logged model
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    upsample: UpsampleConfig = field(default_factory=UpsampleConfig)
    inpaint: InpaintConfig = field(default_factory=InpaintConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.resume not in (True, False, "auto"):
            raise ValueError(f"train.resume must be true, false or auto, got {self.resume!r}")
        if self.max_steps < 1:
            raise ValueError("max_steps must be >= 1")
        from glide.diffusion import LOSS_WEIGHTINGS, PARAMETRIZATIONS, TIMESTEP_SAMPLERS

        for key, allowed in (
            ("parametrization", PARAMETRIZATIONS),
            ("timestep_sampler", TIMESTEP_SAMPLERS),
            ("loss_weighting", LOSS_WEIGHTINGS),
        ):
            if getattr(self, key) not in allowed:
                raise ValueError(
                    f"train.{key} must be one of {allowed}, got {getattr(self, key)!r}"
                )


_SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "optim": OptimConfig,
    "upsample": UpsampleConfig,
    "inpaint": InpaintConfig,
    "distill": DistillConfig,
    "sample": SampleConfig,
}


def train_config_from_dict(section: dict[str, Any]) -> TrainConfig:
    """Build a :class:`TrainConfig` (and its nested sections) from the composed ``train`` dict."""
    section = dict(section)
    nested = {k: to_dataclass(cls, section.pop(k, None)) for k, cls in _SECTIONS.items()}
    overrides = dict(section.pop("model_overrides", None) or {})
    cfg = to_dataclass(TrainConfig, section)
    return dataclasses.replace(cfg, model_overrides=overrides, **nested)
