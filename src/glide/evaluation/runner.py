"""The evaluation stage's library side: guidance sweeps and a sampler table on a COCO-format set.

For ``N`` sampled captions, each sweep point (a classifier-free scale, or a CLIP-guidance scale)
generates one image per caption with the cascade and measures:

- ``fid``: FID with torchmetrics' Inception features (unavailable without local weights);
- ``fd_clip``: a Frechet distance on our noised CLIP's image features at ``t = 0`` (always
  available offline; *not* FID and not comparable to it);
- ``clip_score``: mean ``100 * cos`` of image and caption (noised CLIP, or open_clip);
- ``caption_accuracy`` / ``caption_accuracy_single`` / ``oracle_score``: the ``shapes`` oracle,
  when every sampled caption is in its grammar (the built-in set), each with a 95% interval
  (``*_ci95``), and ``attributes_single``: the accuracy of each attribute (colour, shape, size,
  position, background) on single-object captions;
- ``seconds_per_image``.

Besides the sweeps: ``inpaint`` (an inpainting model replaces one object of each val scene; see
:mod:`glide.evaluation.inpaint`) and ``noised_clip`` (top-1 caption retrieval of the noised CLIP
among ``candidates`` captions at each of ``timesteps``). Every grid labels each tile with its
caption and the oracle's verdict.

Metrics are computed on the final images when every sample is upsampled
(``upsample_count < 0``), else on the base samples (the real images are resized to match); the
first ``upsample_count`` samples of the points named in ``upsample_at`` (all when empty) go
through the upsampler for their grids. The sampler table's ``recipes`` rows (``recipe:release``,
``recipe:fast``) run the whole cascade of a sampling recipe and are measured on its final images,
resized to the metric resolution.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from glide.config import config_digest, to_dataclass
from glide.data.oracle import parse_background
from glide.data.shapes import to_base_resolution
from glide.evaluation.cache import PointCache
from glide.evaluation.captions import (
    Verdict,
    accuracy_from_verdicts,
    is_builtin_caption,
    is_single_object,
    judge,
    wilson_interval,
)
from glide.evaluation.clip_score import CLIPScorer, NoisedCLIPScorer, OpenCLIPScorer
from glide.evaluation.coco import CaptionedImage, load_coco_captions
from glide.evaluation.distributed import World, chunks
from glide.evaluation.frechet import FeatureStats, InceptionFID
from glide.evaluation.inpaint import InpaintTask, inpaint_counts, make_inpaint_task
from glide.models import NoisedCLIP
from glide.models.export import model_digest
from glide.sampling import (
    Cascade,
    GenerationConfig,
    InpaintInputs,
    LoadedModel,
    for_models,
    get_recipe,
    parse_sampler,
    to_pil,
)
from glide.sampling.cascade import clip_tokens
from glide.sampling.io import labelled_grid

__all__ = [
    "CLIPRetrievalConfig",
    "CLIPScoreConfig",
    "EvaluateConfig",
    "EvaluationResult",
    "Evaluator",
    "FIDConfig",
    "InpaintEvalConfig",
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
class InpaintEvalConfig:
    """Replace one object per val scene with the inpainting model (built-in set only)."""

    enabled: bool = True
    num_images: int = 64
    guidance_scale: float = 3.0
    sampler: str = "dpm++-15"
    tolerance: int = 8  # levels of 255 a kept pixel may move (JPEG noise)
    grid_images: int = 16


@dataclass(frozen=True)
class CLIPRetrievalConfig:
    """Top-1 caption retrieval of the noised CLIP on val images noised to each timestep."""

    enabled: bool = True
    candidates: int = 32  # captions competing for each image (its own among them)
    timesteps: tuple[int, ...] = (0, 500)


@dataclass(frozen=True)
class EvaluateConfig:
    """Everything the evaluate stage reads (``conf/evaluate/*.yaml``)."""

    name: str = "evaluate"  # MLflow run name and output names (metrics/<name>.json, ...)
    captions: str = "data/eval/val/captions.json"
    image_dir: str | None = None  # default: images/ beside the captions file
    num_captions: int = 64
    min_single_object: int = 0  # built-in set: add single-object captions up to this many
    seed: int = 0
    batch_size: int = 32
    base: str = "models/base"
    upsampler: str | None = "models/upsampler"
    clip: str | None = "models/clip"
    inpaint: str | None = None  # inpainting model for the inpainting evaluation
    distilled: str | None = None  # guidance-distilled base for the sampler table's recipe:distilled
    distilled_upsampler: str | None = None  # its distilled upsampler (None: ``upsampler``)
    tokenizer_path: str | None = None
    upsample_count: int = 4  # per sweep point; < 0: all (metrics then at the upsampler's size)
    upsample_at: tuple[str, ...] = ()  # sweep points to upsample, e.g. ("cfg:3",); (): all
    upsample_sampler: str = "fast27"
    upsample_temperature: float = 0.997
    device: str = "cpu"
    progress: bool = True
    cache_dir: str | None = ".glide-work/evaluate"  # finished images, for resuming; None: off
    fid: FIDConfig = field(default_factory=FIDConfig)
    clip_score: CLIPScoreConfig = field(default_factory=CLIPScoreConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    sampler_table: SamplerTableConfig = field(default_factory=SamplerTableConfig)
    inpaint_eval: InpaintEvalConfig = field(default_factory=InpaintEvalConfig)
    clip_retrieval: CLIPRetrievalConfig = field(default_factory=CLIPRetrievalConfig)

    @classmethod
    def from_dict(cls, section: dict[str, Any]) -> EvaluateConfig:
        """Build from a config section, nested sections included (unknown keys are named)."""
        types = {
            "fid": FIDConfig,
            "clip_score": CLIPScoreConfig,
            "sweep": SweepConfig,
            "sampler_table": SamplerTableConfig,
            "inpaint_eval": InpaintEvalConfig,
            "clip_retrieval": CLIPRetrievalConfig,
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
    metrics: dict[str, Any]
    grid: Image.Image | None  # None on every rank but the first


@dataclass
class EvaluationResult:
    points: list[PointResult]
    unavailable: dict[str, str]
    info: dict[str, Any]
    inpaint: PointResult | None = None
    noised_clip: dict[str, Any] = field(default_factory=dict)

    def metrics_json(self) -> dict[str, Any]:
        """``{"cfg": {scale: metrics}, "clip": {...}, "samplers": {...}, "inpaint": {...},
        "noised_clip": {...}, "summary": ..., "unavailable": ..., "info": ...}``."""
        out: dict[str, Any] = {"cfg": {}, "clip": {}, "samplers": {}}
        for p in self.points:
            out["samplers" if p.method == "sampler" else p.method][p.key] = p.metrics
        if self.inpaint is not None:
            out["inpaint"] = self.inpaint.metrics
        if self.noised_clip:
            out["noised_clip"] = dict(self.noised_clip)
        out["summary"] = summarize(out)
        out["unavailable"] = dict(self.unavailable)
        out["info"] = dict(self.info)
        return out


def _scale_key(scale: float) -> str:
    return f"{scale:g}"


def summarize(metrics: dict[str, Any]) -> dict[str, float]:
    """Best scale per guidance method by caption accuracy (else CLIP score), the gain in
    caption accuracy of classifier-free guidance over unguided sampling (scale 1), the same for
    single-object exact match with its best point's attributes, and the inpainting and
    noised-CLIP headline numbers."""
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
    singles = {k: v for k, v in cfg.items() if "caption_accuracy_single" in v}
    if singles:
        best = max(singles, key=lambda s: singles[s]["caption_accuracy_single"])
        out["cfg_best_single_scale"] = float(best)
        out["cfg_best_single_accuracy"] = singles[best]["caption_accuracy_single"]
        for attr, value in (singles[best].get("attributes_single") or {}).items():
            out[f"cfg_best_single_{attr}"] = value
        if "1" in singles:
            out["cfg_gain_caption_accuracy_single"] = (
                out["cfg_best_single_accuracy"] - singles["1"]["caption_accuracy_single"]
            )
    for key in ("inpaint_accuracy", "inpaint_preserved"):
        if key in (metrics.get("inpaint") or {}):
            out[key] = metrics["inpaint"][key]
    for key, value in (metrics.get("noised_clip") or {}).items():
        if key.startswith("retrieval_top1_t") and not key.endswith("_ci95"):
            out[f"clip_{key}"] = value
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


class Evaluator:
    """Runs the sweeps and the sampler table for loaded models (no tracking inside).

    In a group of processes (``world``), every sweep point's captions are split in chunks of
    ``batch_size`` over the ranks (:mod:`glide.evaluation.distributed`); feature statistics,
    CLIP-score sums and oracle verdicts are combined across ranks, so every rank returns the
    same metrics, and only the first rank builds grids. With ``cache_dir``, finished images are
    kept per caption (:mod:`glide.evaluation.cache`) and a rerun generates only the rest.
    """

    def __init__(
        self,
        config: EvaluateConfig,
        *,
        base: LoadedModel,
        upsampler: LoadedModel | None = None,
        clip: LoadedModel | None = None,
        inpaint: LoadedModel | None = None,
        distilled: LoadedModel | None = None,
        distilled_upsampler: LoadedModel | None = None,
        world: World | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.config = config
        up = distilled_upsampler or upsampler
        self.distilled = (
            None
            if distilled is None
            else Cascade(distilled, upsampler=up, clip=clip, device=config.device)
        )
        self.world = world or World(device=config.device)
        self.cascade = Cascade(base, upsampler=upsampler, clip=clip, device=config.device)
        self.clip = clip
        self.log = log if self.world.is_main else (lambda _msg: None)
        self.unavailable: dict[str, str] = {}
        self.images_generated = 0
        self.images_cached = 0
        coco = load_coco_captions(config.captions, config.image_dir)
        items = coco.sample(config.num_captions, config.seed)
        if len(items) < 2:
            raise ValueError(f"{config.captions} has fewer than two captioned images")
        self.builtin = all(is_builtin_caption(item.caption) for item in items)
        if self.builtin and config.min_single_object > 0:
            items = _with_single_objects(items, coco.sample(0, config.seed + 1), config)
        self.items = items
        self.captions = [item.caption for item in items]
        if not self.builtin:
            self.unavailable["caption_accuracy"] = "captions are not from the built-in shapes set"
        self.inpaint_model = inpaint
        all_up = config.upsample_count < 0 and upsampler is not None
        self.upsample_count = len(items) if all_up else max(0, config.upsample_count)
        if upsampler is None:
            self.upsample_count = 0
        self.metric_size = upsampler.image_size if all_up and upsampler else base.image_size
        self.real = _load_real(items, self.metric_size)
        # "The world's background": scored on captions that name none when every val image
        # shares one (an easier world with a single background).
        self.world_background: str | None = None
        if self.builtin:
            seen = {parse_background(to_base_resolution(item.load())) for item in items}
            self.world_background = seen.pop() if len(seen) == 1 else None
        self._networks = {
            "base": base, "upsampler": upsampler, "clip": clip,
            "inpaint": inpaint, "distilled": distilled,
            "distilled_upsampler": distilled_upsampler or upsampler,
        }  # fmt: skip
        self._digests: dict[int, str] = {}

        self.features: NoisedCLIPScorer | None = None
        self.scorer: CLIPScorer | None = None
        if clip is not None and isinstance(clip.model, NoisedCLIP):
            self.features = NoisedCLIPScorer(clip.model, clip.tokenizer, text_ctx=clip.text_ctx)
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
            if not self.fid.available:
                self.unavailable["fid"] = self.fid.status.reason
                self.log(f"evaluate: FID unavailable: {self.fid.status.reason}")
                self.fid = None
        self._real_stats: dict[int, dict[str, FeatureStats]] = {}

    def _generation(self, **overrides: Any) -> GenerationConfig:
        c = self.config
        base = GenerationConfig(
            upsample=False,
            upsample_sampler=parse_sampler(c.upsample_sampler),
            upsample_temperature=c.upsample_temperature,
            batch_size=c.batch_size,
            seed=c.seed,
            progress=False,  # the point's own bar counts images (across ranks)
        )
        return dataclasses.replace(base, **overrides)

    # ------------------------------------------------------------------------ feature statistics
    def _stats_of(self, chunk_images: Callable[[range], Tensor], n: int) -> dict[str, Any]:
        """Feature sums of images ``0..n-1`` (this rank's chunks, then all-reduced):
        ``{"fd_clip": FeatureStats, "fid": FeatureStats}`` for the extractors configured."""
        extractors: dict[str, Callable[[Tensor], Tensor]] = {}
        if self.features is not None:
            extractors["fd_clip"] = self.features.image_features
        if self.fid is not None and n == len(self.items):
            extractors["fid"] = self.fid.features
        stats: dict[str, FeatureStats] = {}
        for number, indices in chunks(n, self.config.batch_size):
            if not self.world.owns(number) or not extractors:
                continue
            images = chunk_images(indices)
            for name, extract in extractors.items():
                f = extract(images)
                stats.setdefault(name, FeatureStats(f.shape[-1])).update(f)
        return {name: self._reduced(stats.get(name)) for name in extractors}

    def _reduced(self, stats: FeatureStats | None) -> FeatureStats:
        """All-reduce one statistic; a rank without chunks contributes zeros of the right width."""
        dims = self.world.gather(None if stats is None else stats.total.numel())
        dim = next(d for d in dims if d is not None)
        local = stats if stats is not None else FeatureStats(dim)
        return FeatureStats.from_tensor(self.world.all_reduce(local.as_tensor()), dim)

    def real_stats(self, n: int) -> dict[str, FeatureStats]:
        """Statistics of the first ``n`` real images at the metric resolution (cached per n)."""
        if n not in self._real_stats:
            self._real_stats[n] = self._stats_of(lambda idx: self.real[idx.start : idx.stop], n)
        return self._real_stats[n]

    def _digest(self, name: str) -> str | None:
        """The weights' digest of network ``name`` (hashed once, and only when a cache key
        needs it: a 385M-parameter base takes seconds)."""
        loaded = self._networks[name]
        if loaded is None:
            return None
        # by identity: the distilled cascade may share the teacher's upsampler (hashed once)
        if id(loaded) not in self._digests:
            self._digests[id(loaded)] = model_digest(loaded.model)
        return self._digests[id(loaded)]

    # ---------------------------------------------------------------------------- sweep points
    def _point_key(
        self, method: str, key: str, gen: GenerationConfig, n: int, k: int, cascade: Cascade
    ) -> str:
        """What determines a point's images: any change gives a fresh cache folder."""
        uses_up = gen.upsample or k > 0
        precision = cascade.precision(gen.execution).name
        base, up = ("distilled", "distilled_upsampler") if cascade is self.distilled else (
            "base", "upsampler")  # fmt: skip
        return config_digest(
            {
                "point": f"{method}:{key}",
                "base": self._digest(base),
                "upsampler": self._digest(up) if uses_up else None,
                "clip": self._digest("clip") if gen.clip_guidance_scale else None,
                "generation": dataclasses.asdict(dataclasses.replace(gen, progress=False)),
                "upsample_first": k,
                "n": n,
                "captions": config_digest({"captions": self.captions[:n]}),
                "device": torch.device(self.config.device).type,
                "precision": precision,
            }
        )

    def _generate_chunks(
        self,
        label: str,
        n: int,
        key: Callable[[], str],
        make: Callable[[range], dict[str, Tensor]],
        enter: Callable[[], Any],
    ) -> PointCache | None:
        """Generate this rank's unfinished chunks of ``n`` images with ``make`` (inside the
        context ``enter()``), keeping each finished chunk in the point's cache under ``key()``.
        Returns the cache (``None`` without ``cache_dir``: then the images are only in
        :attr:`_memory`, and no key is computed)."""
        c, world = self.config, self.world
        cache = PointCache(c.cache_dir, label, key()) if c.cache_dir else None
        if cache is not None and world.is_main:
            cache.prune_other_keys()
        world.barrier()  # no rank writes into a folder the first is still pruning
        all_chunks = list(chunks(n, c.batch_size))
        done = {num for num, _ in all_chunks if cache is not None and cache.done(num)}
        cached = sum(len(idx) for num, idx in all_chunks if num in done)
        todo = [(num, idx) for num, idx in all_chunks if world.owns(num) and num not in done]
        if cached:
            self.log(f"evaluate: {label}: {cached} of {n} images already finished ({cache.dir})")
        self.images_cached += cached
        bar = None
        if c.progress and world.is_main and cached < n:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, initial=cached, desc=f"evaluate {label}", unit="img")
        self._memory: dict[int, dict[str, Tensor]] = {}
        self._seconds: dict[int, float] = {}
        with enter():
            for num, idx in todo:
                start = time.perf_counter()
                images = make(idx)
                seconds = time.perf_counter() - start
                self.images_generated += len(idx)
                if cache is not None:
                    cache.save_chunk(num, idx, images, seconds=seconds)
                else:
                    self._memory[num] = images
                    self._seconds[num] = seconds
                if bar is not None:  # images done across ranks, as the markers on disk say
                    finished = sum(
                        len(i) for m, i in all_chunks if cache is not None and cache.done(m)
                    )
                    bar.update(max(finished, bar.n + len(idx)) - bar.n)
        if bar is not None:
            bar.close()
        return cache

    def _chunk_images(self, cache: PointCache | None, idx: range, kind: str = "") -> Tensor:
        number = idx.start // self.config.batch_size
        if cache is not None:
            return cache.load(idx, kind)
        images = self._memory[number][kind]
        return images[: len(idx)]

    def _chunk_seconds(self, cache: PointCache | None, n: int) -> float:
        """Generation seconds of this rank's chunks (as recorded when each was made)."""
        total = 0.0
        for number, _ in chunks(n, self.config.batch_size):
            if self.world.owns(number):
                total += cache.seconds(number) if cache is not None else self._seconds[number]
        return total

    def run_point(
        self,
        method: str,
        key: str,
        gen: GenerationConfig,
        n: int,
        *,
        cascade: Cascade | None = None,
    ) -> PointResult:
        """Generate one image for each of the first ``n`` captions (with ``cascade``, default
        the evaluated one) and measure them."""
        c = self.config
        cascade = cascade or self.cascade
        captions = self.captions[:n]
        full = gen.upsample  # a recipe row: the whole cascade, measured on its final images
        wanted = not c.upsample_at or f"{method}:{key}" in c.upsample_at
        k = 0
        if not full and self.upsample_count and method != "sampler":
            k = min(self.upsample_count, n) if wanted or self.upsample_count >= n else 0
        label = f"{method}_{key}"

        def make(idx: range) -> dict[str, Tensor]:
            keys = [(i, 0) for i in idx]
            prompts = [captions[i] for i in idx]
            first = len(idx) if full else max(0, min(k - idx.start, len(idx)))
            low, high = cascade.generate_batch(prompts, gen, keys=keys, upsample_first=first)
            if full:
                assert high is not None
                return {"": high}
            return {"": low, "up": high} if high is not None else {"": low}

        cache = self._generate_chunks(
            label,
            n,
            lambda: self._point_key(method, key, gen, n, k, cascade),
            make,
            lambda: cascade.running(gen),
        )
        metric_from_up = not full and k == n

        def metric_images(idx: range) -> Tensor:
            images = self._chunk_images(cache, idx, "up" if metric_from_up else "")
            return _resize_uint8(images, self.metric_size)

        metrics, verdicts = self.measure(metric_images, captions, n)
        seconds = float(self.world.all_reduce(torch.tensor([self._chunk_seconds(cache, n)]))[0])
        metrics["seconds_per_image"] = seconds / n
        grid = None
        grid_kind = "up" if k else ""
        tiles = self._gathered_images(cache, min(c.sweep.grid_images, k or n), grid_kind)
        if self.world.is_main:
            grid = self.grid(tiles, captions, verdicts)
        summary = ", ".join(f"{k}={v:.3f}" for k, v in metrics.items() if isinstance(v, float))
        self.log(f"evaluate: {method} {key}: {summary}")
        return PointResult(method=method, key=key, metrics=metrics, grid=grid)

    def _gathered_images(self, cache: PointCache | None, count: int, kind: str = "") -> Tensor:
        """Images ``0..count-1`` of a point, gathered from the ranks that made them."""
        mine: dict[int, Tensor] = {}
        for number, idx in chunks(count, self.config.batch_size):
            if self.world.owns(number):
                for i, image in zip(idx, self._chunk_images(cache, idx, kind), strict=True):
                    mine[i] = image
        merged: dict[int, Tensor] = {}
        for part in self.world.gather(mine):
            merged.update(part)
        return torch.stack([merged[i] for i in range(count)])

    def measure(
        self, chunk_images: Callable[[range], Tensor], captions: Sequence[str], n: int
    ) -> tuple[dict[str, Any], list[Verdict]]:
        """Metrics of the uint8 images [N, 3, H, W] that ``chunk_images(indices)`` returns for this
        rank's chunks of the first ``n`` captions, combined across ranks; every image's oracle
        verdict in caption order (empty outside the built-in set)."""
        metrics: dict[str, Any] = {}
        clip_sum, mine = 0.0, []
        loaded: dict[int, Tensor] = {}

        def images_of(idx: range) -> Tensor:
            if idx.start not in loaded:
                loaded.clear()  # one chunk at a time: a 30k-image point never sits in memory
                loaded[idx.start] = chunk_images(idx)
            return loaded[idx.start]

        fake = self._stats_of(images_of, n)
        for number, idx in chunks(n, self.config.batch_size):
            if not self.world.owns(number):
                continue
            images = images_of(idx)
            texts = [captions[i] for i in idx]
            if self.scorer is not None:
                clip_sum += float(self.scorer.scores(images, texts).double().sum())
            if self.builtin:
                pil = to_pil(images)
                mine += [
                    (i, judge(img, text, world_background=self.world_background))
                    for i, img, text in zip(idx, pil, texts, strict=True)
                ]
        real = self.real_stats(n)
        if "fd_clip" in fake:
            metrics["fd_clip"] = real["fd_clip"].distance(fake["fd_clip"])
        if self.scorer is not None:
            total = self.world.all_reduce(torch.tensor([clip_sum], dtype=torch.float64))
            metrics["clip_score"] = float(total[0]) / n
        if "fid" in fake:
            metrics["fid"] = real["fid"].distance(fake["fid"])
        verdicts: list[Verdict] = []
        if self.builtin:
            ordered = sorted(pair for part in self.world.gather(mine) for pair in part)
            verdicts = [v for _, v in ordered]
            acc = accuracy_from_verdicts(verdicts)
            metrics.update(acc.as_dict())
        return metrics, verdicts

    def grid(self, images: Tensor, captions: Sequence[str], verdicts: Sequence[Verdict]) -> Any:
        """The first ``grid_images`` images, each labelled with its caption and verdict."""
        k = min(self.config.sweep.grid_images, images.shape[0])
        pil = to_pil(images[:k])
        if not verdicts:
            return labelled_grid(pil, list(captions[:k]))
        return labelled_grid(pil, list(captions[:k]), verdicts=[v.label for v in verdicts[:k]])

    def run_inpaint(self) -> PointResult | None:
        """Replace one object per val scene with the inpainting model and score the edits."""
        c, model = self.config.inpaint_eval, self.inpaint_model
        if model is None or not c.enabled:
            return None
        if not self.builtin:
            self.unavailable["inpaint"] = "inpainting is scored on the built-in shapes set only"
            return None
        rng = random.Random(self.config.seed)
        size = model.image_size
        tasks: list[InpaintTask] = []
        for item in self.items:
            task = make_inpaint_task(item.load(), size, rng)
            if task is not None:
                tasks.append(task)
            if len(tasks) == c.num_images:
                break
        if not tasks:
            self.unavailable["inpaint"] = "the oracle found no object to replace in the val images"
            return None
        n = len(tasks)
        gen = self._generation(guidance_scale=c.guidance_scale, sampler=parse_sampler(c.sampler))
        cascade = Cascade(model, device=self.config.device)

        def make(idx: range) -> dict[str, Tensor]:
            chunk = [tasks[i] for i in idx]
            image = torch.cat([_pil_tensor(t.image) for t in chunk])
            mask = torch.stack([t.mask for t in chunk])
            low, _ = cascade.generate_batch(
                [t.caption for t in chunk],
                gen,
                keys=[(i, 0) for i in idx],
                inpaint=InpaintInputs(image, mask, image, mask),
            )
            return {"": low}

        def key() -> str:
            return config_digest(
                {
                    "inpaint": self._digest("inpaint"),
                    "generation": dataclasses.asdict(gen),
                    "tasks": config_digest({"tasks": [(t.caption, t.label) for t in tasks]}),
                    "device": torch.device(self.config.device).type,
                    "precision": cascade.precision(gen.execution).name,
                }
            )

        cache = self._generate_chunks("inpaint", n, key, make, lambda: cascade.running(gen))
        mine = []
        for number, idx in chunks(n, self.config.batch_size):
            if self.world.owns(number):
                outputs = to_pil(self._chunk_images(cache, idx))
                counts = inpaint_counts([tasks[i] for i in idx], outputs, tolerance=c.tolerance)
                mine += list(zip(idx, counts, strict=True))
        counts = [cnt for _, cnt in sorted(p for part in self.world.gather(mine) for p in part)]
        found = [f for f, _, _ in counts]
        preserved = sum(k for _, k, _ in counts) / max(sum(t for _, _, t in counts), 1)
        seconds = float(self.world.all_reduce(torch.tensor([self._chunk_seconds(cache, n)]))[0])
        hits = sum(found)
        metrics: dict[str, Any] = {
            "inpaint_accuracy": hits / n,
            "inpaint_accuracy_ci95": list(wilson_interval(hits, n)),
            "inpaint_preserved": preserved,
            "n": n,
            "seconds_per_image": seconds / n,
        }
        k = min(c.grid_images, n)
        images = to_pil(self._gathered_images(cache, k))
        grid = None
        if self.world.is_main:
            known = [
                Image.fromarray(
                    (np.asarray(t.image) * t.mask[0].numpy()[..., None]).astype(np.uint8)
                )
                for t in tasks[:k]
            ]
            tiles = [im for pair in zip(known, images, strict=True) for im in pair]
            labels = [text for t in tasks[:k] for text in (f"asked: {t.label}", t.caption)]
            verdicts = [
                v for ok in found[:k] for v in ("known pixels", "ok" if ok else "x missing")
            ]
            grid = labelled_grid(tiles, labels, verdicts=verdicts, cols=min(8, len(tiles)))
        self.log(
            f"evaluate: inpaint: accuracy={hits / n:.3f} ({hits}/{n}), preserved={preserved:.4f}"
        )
        return PointResult(method="inpaint", key="inpaint", metrics=metrics, grid=grid)

    @torch.no_grad()
    def run_clip_retrieval(self) -> dict[str, Any]:
        """Top-1 caption retrieval among ``candidates`` captions at each timestep (val images)."""
        c, clip = self.config.clip_retrieval, self.clip
        if clip is None or not c.enabled or not isinstance(clip.model, NoisedCLIP):
            return {}
        groups = [
            self.items[i : i + c.candidates]
            for i in range(0, len(self.items) - c.candidates + 1, c.candidates)
        ]
        if not groups:
            self.unavailable["noised_clip"] = (
                f"retrieval needs at least {c.candidates} val captions, have {len(self.items)}"
            )
            return {}
        model = clip.model
        device = next(model.parameters()).device
        size = clip.image_size
        generator = torch.Generator().manual_seed(self.config.seed)
        out: dict[str, Any] = {"candidates": c.candidates, "n": len(groups) * c.candidates}
        for t in c.timesteps:
            hits = 0
            for group in groups:
                x0 = _load_real(group, size).float() / 127.5 - 1.0
                noise = torch.randn(x0.shape, generator=generator)
                tt = torch.full((x0.shape[0],), int(t), dtype=torch.long)
                abar = clip_alphas_cumprod(clip)[tt].float()[:, None, None, None]
                x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
                img = model.image_encoder(x_t.to(device), tt.to(device))
                tokens, lens = clip_tokens(
                    clip.tokenizer, [g.caption for g in group], clip.text_ctx
                )
                txt = model.text_encoder(tokens.to(device), lens.to(device))
                sims = F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
                hits += int((sims.argmax(dim=1).cpu() == torch.arange(len(group))).sum())
            out[f"retrieval_top1_t{t}"] = hits / out["n"]
            out[f"retrieval_top1_t{t}_ci95"] = list(wilson_interval(hits, out["n"]))
        self.log(
            "evaluate: noised CLIP retrieval: "
            + ", ".join(f"t={t}: {out[f'retrieval_top1_t{t}']:.3f}" for t in c.timesteps)
            + f" (chance {1 / c.candidates:.3f})"
        )
        return out

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
            cascade = self.cascade
            if name == "distilled":
                if self.distilled is None:
                    self.unavailable["recipe:distilled"] = (
                        "no guidance-distilled base (evaluate.distilled, from train=distill)"
                    )
                    continue
                cascade = self.distilled
                recipe = for_models(recipe, cascade.base, cascade.upsampler)
            gen = self._generation(
                guidance_scale=table.guidance_scale,
                upsample=self.cascade.upsampler is not None,
                **recipe.generation_kwargs(),
            )
            points.append(self.run_point("sampler", f"recipe:{name}", gen, m, cascade=cascade))
        inpaint_point = self.run_inpaint()
        retrieval = self.run_clip_retrieval() if self.world.is_main else {}
        made = self.world.all_reduce(torch.tensor([self.images_generated], dtype=torch.float64))
        info = {
            "processes": self.world.size,
            "images_generated": int(made[0]),  # this run; the rest came from the cache
            "images_cached": self.images_cached,
            "num_captions": n,
            "world_background": self.world_background,
            "metric_resolution": self.metric_size,
            "builtin_set": self.builtin,
            "n_single_object": sum(is_single_object(cap) for cap in self.captions),
            "base": self.cascade.base.version,
            "upsampler": self.cascade.upsampler.version if self.cascade.upsampler else None,
            "clip": self.clip.version if self.clip else None,
            "clip_score_backend": c.clip_score.backend,
        }
        return EvaluationResult(
            points=points,
            unavailable=dict(self.unavailable),
            info=info,
            inpaint=inpaint_point,
            noised_clip=retrieval,
        )


def _with_single_objects(
    items: list[CaptionedImage], pool: list[CaptionedImage], config: EvaluateConfig
) -> list[CaptionedImage]:
    """``items`` plus single-object captions of other images (``pool`` order) until there are
    ``config.min_single_object`` of them, or the set runs out."""
    have = sum(is_single_object(item.caption) for item in items)
    used = {item.image_id for item in items}
    extra = []
    for item in pool:
        if have >= config.min_single_object:
            break
        if item.image_id not in used and is_single_object(item.caption):
            extra.append(item)
            have += 1
    return items + extra


def _pil_tensor(image: Image.Image) -> Tensor:
    """RGB PIL image -> [1, 3, H, W] in [-1, 1]."""
    arr = torch.from_numpy(np.asarray(image.convert("RGB"), np.float32))
    return arr.permute(2, 0, 1)[None] / 127.5 - 1.0


def clip_alphas_cumprod(clip: LoadedModel) -> Tensor:
    """``abar_t`` of the process the noised CLIP was trained on (GLIDE's cosine by default)."""
    from glide.diffusion import create_gaussian_diffusion

    spec = clip.diffusion
    return create_gaussian_diffusion(
        steps=spec.steps, noise_schedule=spec.noise_schedule
    ).alphas_cumprod
