"""The evaluation stage's library side: guidance sweeps and a sampler table on a COCO-format set.

For ``N`` sampled captions, each sweep point (a classifier-free scale, or a CLIP-guidance scale)
generates one image per caption with the cascade and measures:

- ``fid``: FID with torchmetrics' Inception features (unavailable without local weights);
- ``fd_clip``: a Frechet distance on our noised CLIP's image features at ``t = 0`` (always
  available offline; *not* FID and not comparable to it);
- ``clip_score``: mean ``100 * cos`` of image and caption (noised CLIP, or open_clip);
- ``caption_accuracy`` / ``caption_accuracy_single`` / ``oracle_score``: the ``shapes`` oracle,
  when every sampled caption is in its grammar (the built-in set);
- ``seconds_per_image``.

Metrics are computed on the final images when every sample is upsampled
(``upsample_count < 0``), else on the base samples (the real images are resized to match); the
first ``upsample_count`` samples of the points named in ``upsample_at`` (all when empty) go
through the upsampler for their grids. The sampler table's ``recipes`` rows (``recipe:release``,
``recipe:fast``) run the whole cascade of a sampling recipe and are measured on its final images,
resized to the metric resolution.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from glide.config import to_dataclass
from glide.evaluation.captions import caption_accuracy, is_builtin_caption, is_single_object
from glide.evaluation.clip_score import CLIPScorer, NoisedCLIPScorer, OpenCLIPScorer
from glide.evaluation.coco import CaptionedImage, load_coco_captions
from glide.evaluation.frechet import InceptionFID, frechet_distance
from glide.models import NoisedCLIP
from glide.sampling import (
    Cascade,
    GenerationConfig,
    LoadedModel,
    get_recipe,
    image_grid,
    parse_sampler,
    to_pil,
)

__all__ = [
    "CLIPScoreConfig",
    "EvaluateConfig",
    "EvaluationResult",
    "Evaluator",
    "FIDConfig",
    "PointResult",
    "SamplerTableConfig",
    "SweepConfig",
    "summarize",
]


@dataclass(frozen=True)
class FIDConfig:
    enabled: bool = True
    weights_path: str | None = None  # None: the torch hub cache, never downloaded
    feature: int = 2048


@dataclass(frozen=True)
class CLIPScoreConfig:
    backend: str = "noised_clip"  # or "open_clip"
    open_clip_model: str = "ViT-B-32"
    open_clip_weights: str | None = None


@dataclass(frozen=True)
class SweepConfig:
    cfg_scales: tuple[float, ...] = (1.0, 2.0, 3.0, 5.0, 8.0)
    sampler: str = "dpm++-15"  # classifier-free sweep
    clip_scales: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0)
    clip_sampler: str = "fast27"  # CLIP guidance needs a cond_fn sampler
    grid_images: int = 16


@dataclass(frozen=True)
class SamplerTableConfig:
    samplers: tuple[str, ...] = (
        "ancestral-100", "fast27", "ddim-50", "ddim-25",
        "dpm++-10", "dpm++-15", "dpm++-20", "dpm++-25",
    )  # fmt: skip
    num_images: int = 8
    guidance_scale: float = 3.0
    recipes: tuple[str, ...] = ()  # full-cascade rows, e.g. ("release", "fast")


@dataclass(frozen=True)
class EvaluateConfig:
    """Everything the evaluate stage reads (``conf/evaluate/*.yaml``)."""

    captions: str = "data/eval/val/captions.json"
    image_dir: str | None = None  # default: images/ beside the captions file
    num_captions: int = 64
    seed: int = 0
    batch_size: int = 32
    base: str = "models/base"
    upsampler: str | None = "models/upsampler"
    clip: str | None = "models/clip"
    tokenizer_path: str | None = None
    upsample_count: int = 4  # per sweep point; < 0: all (metrics then at the upsampler's size)
    upsample_at: tuple[str, ...] = ()  # sweep points to upsample, e.g. ("cfg:3",); (): all
    upsample_sampler: str = "fast27"
    upsample_temperature: float = 0.997
    device: str = "cpu"
    progress: bool = True
    fid: FIDConfig = field(default_factory=FIDConfig)
    clip_score: CLIPScoreConfig = field(default_factory=CLIPScoreConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    sampler_table: SamplerTableConfig = field(default_factory=SamplerTableConfig)

    @classmethod
    def from_dict(cls, section: dict[str, Any]) -> EvaluateConfig:
        """Build from a config section, nested sections included (unknown keys are named)."""
        types = {
            "fid": FIDConfig,
            "clip_score": CLIPScoreConfig,
            "sweep": SweepConfig,
            "sampler_table": SamplerTableConfig,
        }
        flat = dict(section)
        for key, sub in types.items():
            if key in flat:
                flat[key] = to_dataclass(sub, flat[key])
        return to_dataclass(cls, flat)


@dataclass
class PointResult:
    """One sweep point or sampler: its metrics and a sample grid."""

    method: str  # "cfg", "clip" or "sampler"
    key: str  # the scale ("3") or the sampler label ("dpm++-15")
    metrics: dict[str, float]
    grid: Image.Image


@dataclass
class EvaluationResult:
    points: list[PointResult]
    unavailable: dict[str, str]
    info: dict[str, Any]

    def metrics_json(self) -> dict[str, Any]:
        """``{"cfg": {scale: metrics}, "clip": {...}, "samplers": {...}, "summary": ...}``."""
        out: dict[str, Any] = {"cfg": {}, "clip": {}, "samplers": {}}
        for p in self.points:
            out["samplers" if p.method == "sampler" else p.method][p.key] = p.metrics
        out["summary"] = summarize(out)
        out["unavailable"] = dict(self.unavailable)
        out["info"] = dict(self.info)
        return out


def _scale_key(scale: float) -> str:
    return f"{scale:g}"


def summarize(metrics: dict[str, Any]) -> dict[str, float]:
    """Best scale per guidance method by caption accuracy (else CLIP score) and the gain in
    caption accuracy of classifier-free guidance over unguided sampling (scale 1)."""
    out: dict[str, float] = {}
    for method in ("cfg", "clip"):
        points = metrics.get(method) or {}
        if not points:
            continue
        key = (
            "caption_accuracy"
            if all("caption_accuracy" in m for m in points.values())
            else "clip_score"
        )
        if not all(key in m for m in points.values()):
            continue
        best = max(points, key=lambda s: points[s][key])
        out[f"{method}_best_scale"] = float(best)
        out[f"{method}_best_{key}"] = points[best][key]
        single = points[best].get("caption_accuracy_single")
        if single is not None:
            out[f"{method}_best_caption_accuracy_single"] = single
    cfg = metrics.get("cfg") or {}
    if "1" in cfg and "caption_accuracy" in cfg["1"] and "cfg_best_caption_accuracy" in out:
        out["cfg_gain_caption_accuracy"] = (
            out["cfg_best_caption_accuracy"] - cfg["1"]["caption_accuracy"]
        )
    clip = metrics.get("clip") or {}
    if "0" in clip and "caption_accuracy" in clip["0"] and "clip_best_caption_accuracy" in out:
        out["clip_gain_caption_accuracy"] = (
            out["clip_best_caption_accuracy"] - clip["0"]["caption_accuracy"]
        )
    return out


def _resize_uint8(images: Tensor, size: int) -> Tensor:
    if images.shape[-1] == size:
        return images
    x = F.interpolate(images.float(), (size, size), mode="bicubic", antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8)


def _load_real(items: Sequence[CaptionedImage], size: int) -> Tensor:
    arrays = [
        np.asarray(item.load().resize((size, size), Image.Resampling.BICUBIC)) for item in items
    ]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _batches(x: Tensor, size: int) -> list[Tensor]:
    return [x[i : i + size] for i in range(0, x.shape[0], size)]


class Evaluator:
    """Runs the sweeps and the sampler table for loaded models (no tracking inside)."""

    def __init__(
        self,
        config: EvaluateConfig,
        *,
        base: LoadedModel,
        upsampler: LoadedModel | None = None,
        clip: LoadedModel | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.config = config
        self.cascade = Cascade(base, upsampler=upsampler, clip=clip, device=config.device)
        self.clip = clip
        self.log = log
        self.unavailable: dict[str, str] = {}
        items = load_coco_captions(config.captions, config.image_dir).sample(
            config.num_captions, config.seed
        )
        if len(items) < 2:
            raise ValueError(f"{config.captions} has fewer than two captioned images")
        self.items = items
        self.captions = [item.caption for item in items]
        self.builtin = all(is_builtin_caption(c) for c in self.captions)
        if not self.builtin:
            self.unavailable["caption_accuracy"] = "captions are not from the built-in shapes set"
        all_up = config.upsample_count < 0 and upsampler is not None
        self.upsample_count = len(items) if all_up else max(0, config.upsample_count)
        if upsampler is None:
            self.upsample_count = 0
        self.metric_size = upsampler.image_size if all_up and upsampler else base.image_size
        self.real = _load_real(items, self.metric_size)

        self.features: NoisedCLIPScorer | None = None
        self.scorer: CLIPScorer | None = None
        if clip is not None and isinstance(clip.model, NoisedCLIP):
            self.features = NoisedCLIPScorer(clip.model, clip.tokenizer, text_ctx=clip.text_ctx)
            self.real_features = self._features(self.real)
        else:
            self.unavailable["fd_clip"] = "no noised CLIP model configured"
        cs = config.clip_score
        if cs.backend == "open_clip":
            if cs.open_clip_weights is None:
                raise ValueError("clip_score.backend=open_clip needs clip_score.open_clip_weights")
            self.scorer = OpenCLIPScorer(
                cs.open_clip_model, cs.open_clip_weights, device=config.device
            )
        elif cs.backend == "noised_clip":
            self.scorer = self.features
            if self.scorer is None:
                self.unavailable["clip_score"] = "no noised CLIP model configured"
        else:
            raise ValueError(f"unknown clip_score.backend {cs.backend!r} (noised_clip | open_clip)")

        self.fid: InceptionFID | None = None
        if config.fid.enabled:
            self.fid = InceptionFID(
                weights_path=config.fid.weights_path, feature=config.fid.feature
            )
            if self.fid.available:
                self.fid.add_real(_batches(self.real, config.batch_size))
            else:
                self.unavailable["fid"] = self.fid.status.reason
                self.log(f"evaluate: FID unavailable: {self.fid.status.reason}")

    def _generation(self, **overrides: Any) -> GenerationConfig:
        c = self.config
        base = GenerationConfig(
            upsample=False,
            upsample_sampler=parse_sampler(c.upsample_sampler),
            upsample_temperature=c.upsample_temperature,
            batch_size=c.batch_size,
            seed=c.seed,
            progress=c.progress,
        )
        return dataclasses.replace(base, **overrides)

    def _features(self, images: Tensor) -> Tensor:
        assert self.features is not None
        size = self.config.batch_size
        return torch.cat([self.features.image_features(b) for b in _batches(images, size)])

    def measure(self, images: Tensor, captions: Sequence[str], real: Tensor) -> dict[str, float]:
        """Metrics of uint8 images [N, 3, H, W] against their captions and real images."""
        metrics: dict[str, float] = {}
        if self.features is not None:
            fake_f = self._features(images)
            real_f = self.real_features if real is self.real else self._features(real)
            metrics["fd_clip"] = frechet_distance(real_f, fake_f)
        if self.scorer is not None:
            scores = self.scorer.scores(images, captions, batch_size=self.config.batch_size)
            metrics["clip_score"] = float(scores.mean())
        if self.fid is not None and self.fid.available and real is self.real:
            outcome = self.fid.score(_batches(images, self.config.batch_size))
            if outcome.value is not None:
                metrics["fid"] = outcome.value
        if self.builtin:
            metrics.update(caption_accuracy(to_pil(images), captions).as_dict())
        return metrics

    def run_point(self, method: str, key: str, gen: GenerationConfig, n: int) -> PointResult:
        """Generate ``n`` images for the first ``n`` captions and measure them."""
        captions = self.captions[:n]
        start = time.perf_counter()
        out = self.cascade.generate(captions, gen)
        seconds = (time.perf_counter() - start) / n
        metric_images = _resize_uint8(out.final if gen.upsample else out.base, self.metric_size)
        finals = out.final
        wanted = not self.config.upsample_at or f"{method}:{key}" in self.config.upsample_at
        if self.upsample_count and method != "sampler" and (wanted or self.upsample_count == n):
            count = min(self.upsample_count, n)
            up = self.cascade.generate(
                captions[:count], dataclasses.replace(gen, upsample=True)
            ).final
            finals = up
            if count == n:
                metric_images = up
        real = (
            self.real
            if n == len(self.items)
            else _resize_uint8(self.real[:n], metric_images.shape[-1])
        )
        metrics = self.measure(metric_images, captions, real)
        metrics["seconds_per_image"] = seconds
        grid = image_grid(to_pil(finals[: self.config.sweep.grid_images]))
        summary = ", ".join(f"{k}={v:.3f}" for k, v in metrics.items())
        self.log(f"evaluate: {method} {key}: {summary}")
        return PointResult(method=method, key=key, metrics=metrics, grid=grid)

    def run(self) -> EvaluationResult:
        """The classifier-free sweep, the CLIP-guidance sweep, then the sampler table."""
        c, n = self.config, len(self.items)
        points: list[PointResult] = []
        sweep_sampler = parse_sampler(c.sweep.sampler)
        for scale in c.sweep.cfg_scales:
            gen = self._generation(guidance_scale=float(scale), sampler=sweep_sampler)
            points.append(self.run_point("cfg", _scale_key(scale), gen, n))
        if c.sweep.clip_scales:
            if self.cascade.clip is None:
                self.unavailable["clip_guidance"] = "no noised CLIP model configured"
            else:
                clip_sampler = parse_sampler(c.sweep.clip_sampler)
                for scale in c.sweep.clip_scales:
                    gen = self._generation(
                        guidance_scale=1.0, clip_guidance_scale=float(scale), sampler=clip_sampler
                    )
                    points.append(self.run_point("clip", _scale_key(scale), gen, n))
        table = c.sampler_table
        m = min(table.num_images, n) if table.num_images > 0 else n
        for name in table.samplers:
            spec = parse_sampler(name)
            gen = self._generation(guidance_scale=table.guidance_scale, sampler=spec)
            points.append(self.run_point("sampler", spec.label, gen, m))
        for name in table.recipes:
            recipe = get_recipe(name)
            gen = self._generation(
                guidance_scale=table.guidance_scale,
                upsample=self.cascade.upsampler is not None,
                **recipe.generation_kwargs(),
            )
            points.append(self.run_point("sampler", f"recipe:{name}", gen, m))
        info = {
            "num_captions": n,
            "metric_resolution": self.metric_size,
            "builtin_set": self.builtin,
            "n_single_object": sum(is_single_object(cap) for cap in self.captions),
            "base": self.cascade.base.version,
            "upsampler": self.cascade.upsampler.version if self.cascade.upsampler else None,
            "clip": self.clip.version if self.clip else None,
            "clip_score_backend": c.clip_score.backend,
        }
        return EvaluationResult(points=points, unavailable=dict(self.unavailable), info=info)
