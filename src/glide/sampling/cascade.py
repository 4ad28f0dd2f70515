"""GLIDE's text-to-image cascade, as in the release's notebooks.

1. The 64x64 base model samples with classifier-free guidance (the caption's tokens and the
   empty caption's in one batch; scale ``s``, ``s = 1`` is plain conditional sampling) and/or
   CLIP guidance (the noised CLIP's gradient as ``cond_fn``).
2. Its samples are quantised to 8 bits (``round((x + 1) * 127.5) / 127.5 - 1``) and handed to the
   upsampler as ``low_res``; the upsampler is conditioned on the caption without guidance and
   starts from noise scaled by a temperature of 0.997 (the release samples it with ``fast27``).

How the networks run (precision, memory format, attention kernel, text caching) is the config's
:class:`~glide.sampling.recipes.Execution`; the default is the release's eager float32, and
:data:`~glide.sampling.recipes.RECIPES` names the release recipe and the fast one.

Inpainting uses the inpainting variant of the base model (and of the upsampler when given one; a
plain upsampler works by replacement alone): they read the known pixels and mask as inputs, and
the known pixels are pasted into every ``x_0`` prediction, so the result keeps them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from glide.diffusion import ImageGenerators, NoiseGenerator, image_seed, inpaint_denoised_fn
from glide.diffusion.gaussian_diffusion import CondFn, DenoisedFn, Model
from glide.guidance import ClassifierFreeGuidance, CLIPGuidance, classifier_free_batch
from glide.guidance.distilled import WeightConditioned
from glide.models import NoisedCLIP, Text2ImUNet
from glide.precision import Precision, Workload, resolve_precision
from glide.sampling.model_source import LoadedModel
from glide.sampling.recipes import Execution, grad_context, prepare_model
from glide.sampling.samplers import DiffusionSpec, SamplerSpec, run_sampler
from glide.text import Tokenizer

__all__ = [
    "Cascade",
    "CascadeOutput",
    "GenerationConfig",
    "InpaintInputs",
    "Stage",
    "clip_text_embeddings",
    "clip_tokens",
    "quantize",
    "to_pil",
    "to_uint8",
]


@dataclass(frozen=True)
class GenerationConfig:
    """How to sample: guidance, samplers, the upsampling stage, batching and the seed."""

    guidance_scale: float = 3.0
    clip_guidance_scale: float = 0.0
    sampler: SamplerSpec = field(default_factory=lambda: SamplerSpec("ancestral", 100))
    upsample: bool = True
    upsample_sampler: SamplerSpec = field(default_factory=lambda: SamplerSpec("fast27", 27))
    upsample_temperature: float = 0.997
    batch_size: int = 16
    seed: int = 0
    progress: bool = False
    execution: Execution = field(default_factory=Execution)


@dataclass
class CascadeOutput:
    """uint8 images [N, 3, H, W]: the base samples and the final (upsampled, or base) ones."""

    base: Tensor
    final: Tensor


@dataclass
class InpaintInputs:
    """Known image in [-1, 1] and mask (1 = keep) at the base and upsampler resolutions: one
    row shared by every prompt, or one row per prompt."""

    image_lr: Tensor  # [1 or N, 3, s, s]
    mask_lr: Tensor  # [1 or N, 1, s, s]
    image_hr: Tensor  # [1 or N, 3, S, S]
    mask_hr: Tensor  # [1 or N, 1, S, S]

    def rows(self, start: int, stop: int) -> InpaintInputs:
        """The inputs of prompts ``start:stop`` (the shared row as it is)."""
        if self.image_lr.shape[0] == 1:
            return self
        return InpaintInputs(
            self.image_lr[start:stop],
            self.mask_lr[start:stop],
            self.image_hr[start:stop],
            self.mask_hr[start:stop],
        )

    @classmethod
    def from_pil(
        cls, image: Image.Image, mask: Image.Image, *, low: int, high: int, invert: bool = False
    ) -> InpaintInputs:
        """Resize (bicubic image, nearest mask) and binarise the mask (white = keep).

        The mask is made at ``low`` resolution and upsampled by nearest neighbour to ``high``, as
        the release does, so both stages keep the same region.
        """
        mask_lr = _pil_to_tensor(mask.convert("L").resize((low, low), Image.Resampling.NEAREST))
        mask_lr = (mask_lr[:, :1] > 0).float()
        if invert:
            mask_lr = 1.0 - mask_lr
        return cls(
            image_lr=_pil_to_tensor(
                image.convert("RGB").resize((low, low), Image.Resampling.BICUBIC)
            ),
            mask_lr=mask_lr,
            image_hr=_pil_to_tensor(
                image.convert("RGB").resize((high, high), Image.Resampling.BICUBIC)
            ),
            mask_hr=F.interpolate(mask_lr, (high, high), mode="nearest"),
        )


def _pil_to_tensor(img: Image.Image) -> Tensor:
    arr = np.asarray(img, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[..., None].repeat(3, axis=2)
    return torch.from_numpy(arr).permute(2, 0, 1)[None] / 127.5 - 1


def quantize(x: Tensor) -> Tensor:
    """Round [-1, 1] images to the nearest of 256 levels (the release's ``low_res`` input)."""
    return ((x + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1


def to_uint8(x: Tensor) -> Tensor:
    """[-1, 1] float -> uint8 [0, 255], same shape."""
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def to_pil(images: Tensor) -> list[Image.Image]:
    """uint8 [N, 3, H, W] -> PIL RGB images."""
    return [Image.fromarray(img.permute(1, 2, 0).cpu().numpy(), "RGB") for img in images]


def clip_tokens(tokenizer: Tokenizer, texts: Sequence[str], max_len: int) -> tuple[Tensor, Tensor]:
    """Tokens [B, max_len] and lengths [B] for the noised CLIP's text tower (length >= 1)."""
    tokens, mask = tokenizer.batch(list(texts), max_len)
    return tokens, mask.sum(1).clamp(min=1)


def clip_text_embeddings(clip: LoadedModel, texts: Sequence[str]) -> Tensor:
    """Normalised caption embeddings [B, D] from a loaded noised CLIP."""
    model = clip.model
    if not isinstance(model, NoisedCLIP):
        raise TypeError(f"{clip.version} is not a noised CLIP")
    tokens, lens = clip_tokens(clip.tokenizer, texts, clip.text_ctx)
    device = next(model.parameters()).device
    with torch.no_grad():
        return model.text_embeddings(tokens.to(device), lens.to(device))


def _known_rows(image: Tensor, mask: Tensor, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Known pixels (``image * mask``) and mask on ``device``, [n, ...] each (a shared row is
    expanded)."""
    known, mask = (image * mask).to(device), mask.to(device)
    if known.shape[0] == 1:
        known, mask = known.expand(n, -1, -1, -1), mask.expand(n, -1, -1, -1)
    return known, mask


def _resized_encoder(clip: NoisedCLIP, size: int) -> Callable[[Tensor, Tensor], Tensor]:
    def encode(x: Tensor, t: Tensor) -> Tensor:
        if x.shape[-1] != size:
            x = F.interpolate(x, (size, size), mode="bilinear", align_corners=False, antialias=True)
        return clip.image_encoder(x, t)

    return encode


@dataclass
class Stage:
    """One stage of the cascade as its sampler sees it: the model callable (guided, and in
    float32 output), its kwargs, the batch shape, and the sampler's settings."""

    model: Model
    model_kwargs: dict[str, Any]
    shape: tuple[int, ...]
    diffusion: DiffusionSpec
    sampler: SamplerSpec
    cond_fn: CondFn | None = None
    denoised_fn: DenoisedFn | None = None
    noise_temperature: float = 1.0

    def sample(
        self,
        *,
        generator: NoiseGenerator | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Run the stage's sampler from fresh noise: [rows, C, H, W] in [-1, 1]."""
        return run_sampler(
            self.model,
            self.shape,
            diffusion=self.diffusion,
            sampler=self.sampler,
            model_kwargs=self.model_kwargs,
            cond_fn=self.cond_fn,
            denoised_fn=self.denoised_fn,
            noise_temperature=self.noise_temperature,
            generator=generator,
            device=device,
            progress=progress,
        )


class _Float32Output:
    """Returns the model's output in float32, so the sampler's arithmetic never runs in bf16."""

    def __init__(self, model: Model) -> None:
        self.model = model

    def __call__(self, x: Tensor, t: Tensor, **kwargs: Any) -> Tensor:
        return self.model(x, t, **kwargs).float()


def _encode_text(model: Model, kwargs: dict[str, Any], cache: bool) -> dict[str, Any]:
    """``kwargs`` with ``tokens`` / ``mask`` replaced by the caption encoded once (``text``)."""
    if not cache or not isinstance(model, Text2ImUNet) or not model.text_config.xf_width:
        return kwargs
    out = dict(kwargs)
    out["text"] = model.condition(out.pop("tokens"), out.pop("mask"))
    return out


class Cascade:
    """Base model, optional upsampler and optional noised CLIP, sampled the release's way."""

    def __init__(
        self,
        base: LoadedModel,
        *,
        upsampler: LoadedModel | None = None,
        clip: LoadedModel | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        if base.super_res:
            raise ValueError(f"{base.version} is an upsampler, not a base model")
        if upsampler is not None and not upsampler.super_res:
            raise ValueError(f"{upsampler.version} is not an upsampler (super_res is off)")
        self.base, self.upsampler, self.clip = base, upsampler, clip
        self.device = torch.device(device)
        self._precisions: dict[tuple[str, ...], Precision] = {}

    def precision(self, execution: Execution) -> Precision:
        """The precision ``execution`` resolves to on this cascade's device; ``auto`` times this
        cascade's networks (:mod:`glide.precision`), once per cascade and execution levers."""
        key = (execution.precision, *execution.levers())
        if key not in self._precisions:
            self._precisions[key] = resolve_precision(
                execution.precision, self.device, workload=lambda: self.workload(execution)
            )
        return self._precisions[key]

    def workload(self, execution: Execution) -> Workload:
        """What ``auto`` times: the networks prepared for ``execution``, the base on a guided
        sample's two rows, the upsampler on one, each at the size it samples at."""
        variant = ",".join(execution.levers())
        parts = []
        for loaded, rows in ((self.base, 2), (self.upsampler, 1)):
            if loaded is not None:
                prepare_model(loaded.model, execution)
                parts.append(
                    Workload.for_network(
                        loaded.model, batch=rows, image_size=loaded.image_size, variant=variant
                    )
                )
        work = parts[0]
        for part in parts[1:]:
            work = work.extend(part)
        return work

    @contextmanager
    def running(self, config: GenerationConfig) -> Iterator[Precision]:
        """Prepare the networks for ``config.execution`` and enter its gradient and autocast
        contexts (what :meth:`generate` samples in); yields the resolved precision."""
        execution = config.execution
        for loaded in (self.base, self.upsampler):
            if loaded is not None:
                prepare_model(loaded.model, execution)
        precision = self.precision(execution)
        needs_grad = bool(config.clip_guidance_scale)
        with grad_context(execution, needs_grad=needs_grad), precision.autocast():
            yield precision

    def _network(self, loaded: LoadedModel, config: GenerationConfig) -> Model:
        if self.precision(config.execution).dtype is None:
            return loaded.model
        return _Float32Output(loaded.model)

    def _tokens(self, loaded: LoadedModel, prompts: Sequence[str]) -> dict[str, Tensor]:
        tokens, mask = loaded.tokenizer.batch(list(prompts), loaded.text_ctx)
        return {"tokens": tokens.to(self.device), "mask": mask.to(self.device)}

    def base_stage(
        self,
        prompts: Sequence[str],
        config: GenerationConfig,
        *,
        inpaint: InpaintInputs | None = None,
    ) -> Stage:
        """What :meth:`sample_base` runs for ``prompts``: the (guided) model and its inputs.

        Encodes the caption when ``config.execution.cache_text``: build it inside
        :meth:`running`, so it is made under the precision the steps use.
        """
        n, size = len(prompts), self.base.image_size
        if inpaint is not None and not self.base.inpaint:
            raise ValueError(f"{self.base.version} is not an inpainting model")
        cond = self._tokens(self.base, prompts)
        uncond = self._tokens(self.base, [""])
        # A guidance-distilled base takes w as an input: one row per image, at any scale.
        distilled = bool(getattr(self.base.model.text_config, "guidance_embed", False))
        guided = config.guidance_scale != 1.0 and not distilled
        denoised_fn = None
        if inpaint is not None:
            known, m = _known_rows(inpaint.image_lr, inpaint.mask_lr, n, self.device)
            for d in (cond, uncond):  # both halves of a guided batch see the known pixels
                d["inpaint_image"], d["inpaint_mask"] = known, m
            reps = 2 if guided else 1
            denoised_fn = inpaint_denoised_fn(known.repeat(reps, 1, 1, 1), m.repeat(reps, 1, 1, 1))

        cond_fn = None
        if config.clip_guidance_scale:
            if self.clip is None:
                raise ValueError("CLIP guidance needs a noised CLIP model (--clip SOURCE)")
            assert isinstance(self.clip.model, NoisedCLIP)
            emb = clip_text_embeddings(self.clip, prompts)
            if guided:
                emb = torch.cat([emb, emb])
            cond_fn = CLIPGuidance(
                _resized_encoder(self.clip.model, self.clip.image_size),
                emb,
                grad_scale=config.clip_guidance_scale,
                logit_scale=self.clip.model.logit_scale,
            )

        network = self._network(self.base, config)
        if distilled:
            model: Model = WeightConditioned(network, config.guidance_scale)
            kwargs, rows = cond, n
        elif guided:
            model = ClassifierFreeGuidance(network, config.guidance_scale)
            kwargs, rows = classifier_free_batch(cond, uncond), 2 * n
        else:
            model, kwargs, rows = network, cond, n
        return Stage(
            model=model,
            model_kwargs=_encode_text(self.base.model, kwargs, config.execution.cache_text),
            shape=(rows, 3, size, size),
            diffusion=self.base.diffusion,
            sampler=config.sampler,
            cond_fn=cond_fn,
            denoised_fn=denoised_fn,
        )

    def upsample_stage(
        self,
        low_res: Tensor,
        prompts: Sequence[str],
        config: GenerationConfig,
        *,
        inpaint: InpaintInputs | None = None,
    ) -> Stage:
        """What :meth:`upsample` runs for base samples ``low_res``: the upsampler and its inputs."""
        if self.upsampler is None:
            raise ValueError("no upsampler loaded: sample base-only or pass an upsampler")
        up = self.upsampler
        kwargs: dict[str, Any] = self._tokens(up, prompts)
        kwargs["low_res"] = quantize(low_res).to(self.device)
        denoised_fn = None
        if inpaint is not None:
            known, m = _known_rows(inpaint.image_hr, inpaint.mask_hr, len(prompts), self.device)
            if up.inpaint:
                kwargs["inpaint_image"], kwargs["inpaint_mask"] = known, m
            denoised_fn = inpaint_denoised_fn(known, m)
        size = up.image_size
        return Stage(
            model=self._network(up, config),
            model_kwargs=_encode_text(up.model, kwargs, config.execution.cache_text),
            shape=(len(prompts), 3, size, size),
            diffusion=up.diffusion,
            sampler=config.upsample_sampler,
            denoised_fn=denoised_fn,
            noise_temperature=config.upsample_temperature,
        )

    def sample_base(
        self,
        prompts: Sequence[str],
        config: GenerationConfig,
        *,
        generator: NoiseGenerator | None = None,
        inpaint: InpaintInputs | None = None,
    ) -> Tensor:
        """One batch of base samples in [-1, 1], [len(prompts), 3, s, s]."""
        stage = self.base_stage(prompts, config, inpaint=inpaint)
        out = stage.sample(generator=generator, device=self.device, progress=config.progress)
        return out[: len(prompts)]

    def upsample(
        self,
        low_res: Tensor,
        prompts: Sequence[str],
        config: GenerationConfig,
        *,
        generator: NoiseGenerator | None = None,
        inpaint: InpaintInputs | None = None,
    ) -> Tensor:
        """Upsample base samples [B, 3, s, s] in [-1, 1] to [B, 3, S, S].

        With ``inpaint``, an inpainting upsampler also reads the known pixels; a plain one keeps
        them by replacement alone (they are pasted into every ``x_0`` prediction either way).
        """
        stage = self.upsample_stage(low_res, prompts, config, inpaint=inpaint)
        return stage.sample(generator=generator, device=self.device, progress=config.progress)

    def generate_batch(
        self,
        prompts: Sequence[str],
        config: GenerationConfig,
        *,
        keys: Sequence[tuple[int, int]],
        inpaint: InpaintInputs | None = None,
        upsample_first: int | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """One batch, inside :meth:`running`: uint8 base samples [B, 3, s, s] and the first
        ``upsample_first`` of them upsampled (default: all when ``config.upsample``, else none).

        Image ``i`` draws its noise from its own generator, seeded with
        ``image_seed(config.seed, *keys[i])`` (``keys``: (caption index, image index) per prompt),
        and its upsampler noise from the same generator after the base's.
        """
        if len(keys) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(keys)} keys")
        if upsample_first is None:
            upsample_first = len(prompts) if config.upsample else 0
        if upsample_first and self.upsampler is None:
            raise ValueError("the full cascade needs an upsampler; pass one or sample base-only")
        noise = ImageGenerators.seeded([image_seed(config.seed, c, i) for c, i in keys])
        low = self.sample_base(prompts, config, generator=noise, inpaint=inpaint)
        if not upsample_first:
            return to_uint8(low).cpu(), None
        k = min(upsample_first, len(prompts))
        rows = inpaint.rows(0, k) if inpaint is not None else None
        high = self.upsample(
            low[:k],
            list(prompts[:k]),
            config,
            generator=ImageGenerators(noise.generators[:k]),
            inpaint=rows,
        )
        return to_uint8(low).cpu(), to_uint8(high).cpu()

    def generate(
        self,
        prompts: Sequence[str],
        config: GenerationConfig,
        *,
        inpaint: InpaintInputs | None = None,
        keys: Sequence[tuple[int, int]] | None = None,
    ) -> CascadeOutput:
        """Sample every prompt in batches of ``config.batch_size``.

        Each image has its own noise generator (:meth:`generate_batch`), keyed by ``keys`` (default
        ``(i, 0)`` for prompt ``i``): an image's noise is the same in any batch and any process.
        Batched kernels still round differently from unbatched ones, so images agree across batch
        sizes to float round-off, and bit for bit for the same batches.
        """
        if not prompts:
            raise ValueError("no prompts to sample")
        if config.upsample and self.upsampler is None:
            raise ValueError("the full cascade needs an upsampler; pass one or sample base-only")
        if inpaint is not None and inpaint.image_lr.shape[0] not in (1, len(prompts)):
            raise ValueError("inpainting inputs need one row, or one row per prompt")
        keys = list(keys) if keys is not None else [(i, 0) for i in range(len(prompts))]
        bases, finals = [], []
        with self.running(config):
            for start in range(0, len(prompts), config.batch_size):
                stop = min(start + config.batch_size, len(prompts))
                rows = inpaint.rows(start, stop) if inpaint is not None else None
                low, high = self.generate_batch(
                    prompts[start:stop], config, keys=keys[start:stop], inpaint=rows
                )
                bases.append(low)
                if high is not None:
                    finals.append(high)
        base = torch.cat(bases)
        return CascadeOutput(base=base, final=torch.cat(finals) if finals else base)
