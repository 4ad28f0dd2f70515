"""LightningModules for the four GLIDE networks.

- :class:`Text2ImModule` (kind ``base``): hybrid loss (prediction MSE + variational bound) with
  GLIDE's eps prediction at uniform timesteps, or the recipe's parametrization, timestep sampler
  and loss weighting (:class:`~glide.diffusion.TrainingObjective`); the loss is also logged per
  timestep quartile;
- :class:`UpsampleModule` (``upsample``): the same loss conditioned on an 8-bit low-res image,
  optionally blurred / noised;
- :class:`InpaintModule` (``inpaint``): initialised from a trained base (new input channels at
  zero), trained on random rectangular / free-form masks;
- :class:`DistillModule` (``distill``): a guidance-conditioned student of a trained base learns
  the teacher's classifier-free-guided output at weights drawn from a range, or halves such a
  student's steps (:mod:`glide.guidance.distilled`); exported as a base with ``guidance_embed``;
  :class:`UpsampleDistillModule` (``distill`` with ``part: upsample``) halves the upsampler's;
- :class:`ClipModule` (``clip``): open_clip's ``ClipLoss`` between captions and images noised at
  random timesteps, the timestep fed to the image encoder.

Every module keeps an :class:`~glide.training.ema.EMA` copy, used for validation, samples and
export. Randomness inside a step (timesteps, noise, masks, augmentation, dropout) comes from the
global RNG reseeded from ``(seed, step, rank)`` at the start of each step, so a resumed run
repeats the uninterrupted one exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import partial
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glide.diffusion import (
    TrainingObjective,
    create_gaussian_diffusion,
    distillation_grid,
    dpm_solver_pp_2m_sample,
)
from glide.diffusion.inpaint import inpaint_denoised_fn
from glide.guidance import ClassifierFreeGuidance, classifier_free_batch
from glide.guidance.distilled import (
    WeightConditioned,
    guided_distillation_loss,
    load_teacher_weights,
    progressive_distillation_loss,
)
from glide.models.export import build_model
from glide.text import EMPTY_CAPTION, Tokenizer, get_tokenizer
from glide.training.config import TrainConfig
from glide.training.datamodule import quantize_8bit
from glide.training.ema import EMA
from glide.training.masks import random_masks


def step_seed(seed: int, step: int, rank: int) -> int:
    """A distinct 63-bit seed per (run seed, optimizer step, rank)."""
    return (seed * 1_000_003 + step * 8_191 + rank * 131_071 + 12_345) % (2**63 - 1)


def lr_lambda(step: int, *, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the base LR: linear warmup, then constant or cosine to ``min_ratio``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"unknown lr schedule {schedule!r} (constant | cosine)")
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class _LRLambda:
    """Picklable LR multiplier (a closure would not survive ``ddp_spawn``)."""

    def __init__(self, cfg: TrainConfig) -> None:
        o = cfg.optim
        self.kw = {
            "warmup": o.warmup_steps,
            "total": cfg.max_steps,
            "schedule": o.schedule,
            "min_ratio": o.min_lr_ratio,
        }

    def __call__(self, step: int) -> float:
        return lr_lambda(step, **self.kw)


def init_from_smaller_inputs(model: nn.Module, state: Mapping[str, Tensor]) -> list[str]:
    """Load ``state`` into ``model``; tensors with fewer input channels (dim 1) fill the first
    channels and the rest start at zero (GLIDE's inpainting init). Returns the widened names."""
    own = model.state_dict()
    widened = []
    for name, value in state.items():
        if name not in own:
            raise KeyError(f"{name} of the initial weights is not in the model")
        target = own[name]
        if value.shape == target.shape:
            target.copy_(value)
        elif value.dim() >= 2 and value.shape[0] == target.shape[0] and value.dim() == target.dim():
            target.zero_()
            target[:, : value.shape[1]].copy_(value)
            widened.append(name)
        else:
            raise ValueError(
                f"{name}: cannot initialise {tuple(target.shape)} from {tuple(value.shape)}"
            )
    missing = sorted(set(own) - set(state))
    if missing:
        raise KeyError(f"initial weights lack {missing[:5]}")
    model.load_state_dict(own)
    return widened


def _grid_batch(batch: Mapping[str, Any], n: int = 8) -> dict[str, Any]:
    """The first ``n`` examples of a batch, kept as inputs of the upsampler / inpainting grid."""
    keys = ("image", "low_res", "tokens", "mask")
    return {k: batch[k][:n].detach().clone() for k in keys if k in batch}


class GlideModule(pl.LightningModule):
    """Shared machinery: the network, its EMA, optimiser, per-step seeding, sample hooks."""

    def __init__(self, config: TrainConfig, options: Mapping[str, Any], *, kind: str) -> None:
        super().__init__()
        self.config = config
        self.options = dict(options)
        self.kind = kind
        self.model = build_model(kind, self.options)
        self.ema = EMA(self.model, config.ema_decay)
        self.diffusion = create_gaussian_diffusion(
            steps=config.diffusion_steps,
            noise_schedule=config.noise_schedule,
            parametrization=config.parametrization,
        )
        self.objective = TrainingObjective.from_recipe(self.diffusion, config)
        self._tokenizer: Tokenizer | None = None
        self.corrupt_total = 0  # corrupt samples the data stream skipped so far

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = get_tokenizer(
                self.config.data.tokenizer, self.config.data.tokenizer_path
            )
        return self._tokenizer

    # ------------------------------------------------------------------ hooks
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        torch.manual_seed(step_seed(self.config.seed, self.global_step, self.global_rank))
        self.corrupt_total += int(batch["corrupt"])

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # Here, not in on_train_batch_end: callbacks (the checkpoint) run before the module's
        # batch-end hook, and a checkpoint must hold the EMA of the step it is named after.
        self.ema.update(self.model)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.log("data/corrupt_total", float(self.corrupt_total))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["corrupt_total"] = self.corrupt_total
        checkpoint["timestep_sampler"] = self.objective.sampler.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.corrupt_total = int(checkpoint.get("corrupt_total", 0))
        self.objective.sampler.load_state_dict(checkpoint.get("timestep_sampler") or {})

    def configure_optimizers(self) -> Any:
        o = self.config.optim
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(
            params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _LRLambda(self.config))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.global_step % max(1, self.config.log_every) == 0:
            self.log("train/lr", optimizer.param_groups[0]["lr"])

    def sample_grid(self) -> Tensor | None:
        """Images in [-1, 1] from the EMA weights for the logged grid (None: nothing to show)."""
        return None


class Text2ImModule(GlideModule):
    """Base 64x64 text-to-image model (also the parent of the upsampler and inpainting)."""

    def __init__(
        self, config: TrainConfig, options: Mapping[str, Any], *, kind: str = "base"
    ) -> None:
        super().__init__(config, options, kind=kind)
        self._val_batch: dict[str, Any] | None = None

    def conditioning(self, batch: Mapping[str, Any], x0: Tensor) -> dict[str, Tensor]:
        """Model kwargs besides ``x_t`` and ``t`` for a training batch."""
        return {"tokens": batch["tokens"], "mask": batch["mask"]}

    def losses(self, model: nn.Module, batch: Mapping[str, Any], t: Tensor | None = None) -> dict:
        """Per-example losses; ``t=None`` draws timesteps from the recipe's sampler."""
        x0 = batch["image"]
        noise = torch.randn_like(x0)
        kwargs = self.conditioning(batch, x0)
        return self.objective.losses(model, x0, model_kwargs=kwargs, t=t, noise=noise)

    def _log_losses(self, prefix: str, out: Mapping[str, Tensor], n: int) -> None:
        for name in ("loss", "mse", "vb"):
            self.log(f"{prefix}/{name}", out[name].mean(), batch_size=n, prog_bar=name == "loss")
        quartile = (out["t"] * 4) // self.diffusion.num_timesteps
        for q in range(4):
            sel = quartile == q
            if sel.any():
                self.log(f"{prefix}/loss_q{q}", out["loss"][sel].mean(), batch_size=int(sel.sum()))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        if self._val_batch is None:  # grid inputs until a validation batch replaces them
            self._val_batch = _grid_batch(batch)
        out = self.losses(self.model, batch)
        self._log_losses("train", out, batch["image"].shape[0])
        return out["objective"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if batch_idx == 0:
            self._val_batch = _grid_batch(batch)
        n = batch["image"].shape[0]
        # Fixed timesteps spread over [0, T) and fixed noise: comparable across validations.
        t = torch.linspace(0, self.diffusion.num_timesteps - 1, n, device=self.device).long()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed + batch_idx)
            out = self.losses(self.ema.model, batch, t)
        self._log_losses("val", out, n)
        if self.kind == "base" and n > 1:
            self.log("val/caption_gain", self.caption_gain(batch, t), batch_size=n)

    @torch.no_grad()
    def caption_gain(self, batch: Mapping[str, Any], t: Tensor) -> Tensor:
        """How much the EMA model's captions help: relative eps-MSE drop, right vs shuffled.

        Each image is scored with its own caption and with its neighbour's (the batch rolled by
        one), under the same ``t`` and noise. ~0 means the text pathway is unused, however low
        the loss; a model that follows captions scores clearly above 0.
        """
        shuffled = {**batch, "tokens": batch["tokens"].roll(1, 0), "mask": batch["mask"].roll(1, 0)}
        mse = []
        for b in (batch, shuffled):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.config.seed)
                mse.append(self.losses(self.ema.model, b, t)["mse"].mean())
        return (mse[1] - mse[0]) / mse[0].clamp_min(1e-12)

    # ------------------------------------------------------------------ samples
    def _sample(self, shape: tuple[int, ...], cond: dict[str, Tensor], **kw: Any) -> Tensor:
        """DPM-Solver++ samples from the EMA model; classifier-free guided unless the scale is 1."""
        s = self.config.sample
        g = torch.Generator(device=self.device).manual_seed(s.seed)
        noise = torch.randn(shape, generator=g, device=self.device)
        denoised = kw.pop("denoised_fn", None)
        if s.guidance_scale == 1.0:
            return dpm_solver_pp_2m_sample(
                self.diffusion,
                self.ema.model,
                shape,
                steps=s.steps,
                noise=noise,
                model_kwargs=cond,
                denoised_fn=denoised,
                generator=g,
            )
        empty_tokens, empty_mask = self.tokenizer.batch([EMPTY_CAPTION], self.config.data.text_ctx)
        uncond = {"tokens": empty_tokens.to(self.device), "mask": empty_mask.to(self.device)}
        kwargs = classifier_free_batch({k: cond[k] for k in uncond}, uncond)
        kwargs.update({k: torch.cat([v, v]) for k, v in cond.items() if k not in uncond})
        if denoised is not None:  # the known pixels are pasted into both halves
            known, mask = denoised.keywords["known"], denoised.keywords["mask"]
            denoised = partial(
                _paste, known=torch.cat([known, known]), mask=torch.cat([mask, mask])
            )
        out = dpm_solver_pp_2m_sample(
            self.diffusion,
            ClassifierFreeGuidance(self.ema.model, s.guidance_scale),
            (2 * shape[0], *shape[1:]),
            steps=s.steps,
            noise=torch.cat([noise, noise]),
            model_kwargs=kwargs,
            denoised_fn=denoised,
            generator=g,
        )
        return out[: shape[0]]

    def grid_labels(self, images: Tensor) -> tuple[list[str], list[str] | None] | None:
        """Each prompt, and the oracle's verdict when every prompt is in the built-in grammar."""
        if self.kind not in ("base", "distill"):
            return None  # upsampler / inpainting grids are rows of inputs and outputs
        from glide.evaluation.captions import is_builtin_caption, judge
        from glide.sampling.cascade import to_pil, to_uint8

        prompts = list(self.config.sample.prompts)
        if not all(is_builtin_caption(p) for p in prompts):
            return prompts, None
        pil = to_pil(to_uint8(images.float().cpu()))
        return prompts, [judge(img, p).label for img, p in zip(pil, prompts, strict=True)]

    @torch.no_grad()
    def sample_grid(self) -> Tensor | None:
        prompts = list(self.config.sample.prompts)
        if not prompts:
            return None
        tokens, mask = self.tokenizer.batch(prompts, self.config.data.text_ctx)
        cond = {"tokens": tokens.to(self.device), "mask": mask.to(self.device)}
        size = self.config.data.image_size
        return self._sample((len(prompts), 3, size, size), cond)


class UpsampleModule(Text2ImModule):
    """64 -> 256 upsampler (or any 4x pair): low-res made from the high-res training image."""

    def __init__(self, config: TrainConfig, options: Mapping[str, Any]) -> None:
        super().__init__(config, options, kind="upsample")

    def augment_low_res(self, low: Tensor) -> Tensor:
        """Random Gaussian blur / noise per example, then back to 8 bits (as at sampling)."""
        a = self.config.upsample
        out = low.clone()
        n = low.shape[0]
        blur = torch.rand(n) < a.blur_prob
        sigma = a.blur_sigma[0] + torch.rand(n) * (a.blur_sigma[1] - a.blur_sigma[0])
        noisy = torch.rand(n) < a.noise_prob
        for i in torch.nonzero(blur).flatten().tolist():
            out[i] = gaussian_blur(out[i : i + 1], float(sigma[i]))[0]
        if noisy.any():
            eps = torch.randn_like(out) * a.noise_std
            out = torch.where(noisy.to(out.device)[:, None, None, None], out + eps, out)
        return quantize_8bit(out.clamp(-1, 1))

    def conditioning(self, batch: Mapping[str, Any], x0: Tensor) -> dict[str, Tensor]:
        low = batch["low_res"]
        if self.training:
            low = self.augment_low_res(low)
        return {"tokens": batch["tokens"], "mask": batch["mask"], "low_res": low}

    @torch.no_grad()
    def sample_grid(self) -> Tensor | None:
        if self._val_batch is None:
            return None
        b = {k: v[:4] for k, v in self._val_batch.items()}  # 256x256 samples are costly on CPU
        low = b["low_res"].to(self.device)
        cond = {
            "tokens": b["tokens"].to(self.device),
            "mask": b["mask"].to(self.device),
            "low_res": low,
        }
        size = b["image"].shape[-1]
        up = self._sample((low.shape[0], 3, size, size), cond)
        low_up = F.interpolate(low, size=size, mode="nearest")
        return torch.cat([low_up, up, b["image"].to(self.device)])


class InpaintModule(Text2ImModule):
    """Text-guided inpainting fine-tune of the base model."""

    def __init__(self, config: TrainConfig, options: Mapping[str, Any]) -> None:
        super().__init__(config, {**options, "inpaint": True}, kind="inpaint")

    def init_from_base(self, state: Mapping[str, Tensor]) -> list[str]:
        """Copy a base model's weights in; the 4 extra input channels start at zero."""
        widened = init_from_smaller_inputs(self.model, state)
        self.ema.model.load_state_dict(self.model.state_dict())
        return widened

    def masks(self, x0: Tensor) -> Tensor:
        a = self.config.inpaint
        g = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ()).item()))
        m = random_masks(
            x0.shape[0],
            x0.shape[-2],
            x0.shape[-1],
            g,
            unmasked_fraction=a.unmasked_fraction,
            rect_fraction=a.rect_fraction,
        )
        return m.to(x0.device)

    def conditioning(self, batch: Mapping[str, Any], x0: Tensor) -> dict[str, Tensor]:
        return {
            "tokens": batch["tokens"],
            "mask": batch["mask"],
            "inpaint_image": x0,
            "inpaint_mask": self.masks(x0),
        }

    @torch.no_grad()
    def sample_grid(self) -> Tensor | None:
        if self._val_batch is None:
            return None
        b = self._val_batch
        image = b["image"].to(self.device)
        n, _, h, w = image.shape
        mask = torch.ones(n, 1, h, w, device=self.device)
        mask[:, :, h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 0  # fill the centre
        cond = {
            "tokens": b["tokens"].to(self.device),
            "mask": b["mask"].to(self.device),
            "inpaint_image": image,
            "inpaint_mask": mask,
        }
        out = self._sample(
            tuple(image.shape), cond, denoised_fn=partial(_paste, known=image, mask=mask)
        )
        return torch.cat([image * mask, out])


class _Distilling:
    """The teacher of a distillation module: frozen, held outside the module's parameters (not
    trained, not checkpointed) and loaded from ``distill.teacher`` before every run, resumed
    ones included; and sampling on the grid a progressive student learns."""

    config: TrainConfig
    model: nn.Module
    ema: EMA
    diffusion: Any
    device: torch.device
    _teacher: list[nn.Module]  # a list: not registered as a submodule

    @property
    def teacher(self) -> nn.Module:
        if not self._teacher:
            raise RuntimeError("no teacher set: call set_teacher() before training")
        return self._teacher[0]

    def set_teacher(self, teacher: nn.Module, *, init_student: bool) -> None:
        """Freeze ``teacher``; with ``init_student`` the student (and its EMA) start as it."""
        teacher.eval().requires_grad_(False)
        self._teacher[:] = [teacher]
        if init_student:
            load_teacher_weights(self.model, teacher)
            self.ema.model.load_state_dict(self.model.state_dict())

    def on_fit_start(self) -> None:
        self.teacher.to(self.device)

    def progressive_losses(self, model: nn.Module, x0: Tensor, w: Tensor | None, cond: Any) -> dict:
        """One progressive round's per-example loss at random positions of the student's grid."""
        n, d = x0.shape[0], self.config.distill
        step = torch.randint(0, d.steps, (n,), device=x0.device)
        loss = progressive_distillation_loss(
            model, self.teacher, self.diffusion, x0, step, w,
            steps=d.steps, cond=cond, noise=torch.randn_like(x0),
        )  # fmt: skip
        grid = torch.tensor(distillation_grid(self.diffusion.num_timesteps, d.steps))
        t = grid.to(x0.device)[step]  # per-quartile logging reads timesteps
        return _distill_out(loss, t)

    def pd_sample(self, model: Any, shape: tuple[int, ...], cond: dict[str, Tensor]) -> Tensor:
        """DDIM on the ``distill.steps`` grid (sampler ``pd-N``) from the sample seed's noise."""
        from glide.sampling.samplers import DiffusionSpec, SamplerSpec, run_sampler

        c = self.config
        return run_sampler(
            model,
            shape,
            diffusion=DiffusionSpec(c.diffusion_steps, c.noise_schedule, c.parametrization),
            sampler=SamplerSpec("pd", c.distill.steps),
            model_kwargs=cond,
            generator=torch.Generator(device=self.device).manual_seed(c.sample.seed),
            device=self.device,
        )


def _distill_out(loss: Tensor, t: Tensor) -> dict[str, Tensor]:
    return {"loss": loss, "mse": loss, "vb": torch.zeros_like(loss), "t": t,
            "objective": loss.mean()}  # fmt: skip


class DistillModule(_Distilling, Text2ImModule):
    """Distillation of a base: ``guided`` (the student, the base network plus a guidance-weight
    embedding, matches the teacher's classifier-free-guided output) or ``progressive`` (such a
    student halves its DDIM steps); one forward per row to sample."""

    def __init__(self, config: TrainConfig, options: Mapping[str, Any]) -> None:
        super().__init__(config, {**options, "guidance_embed": True}, kind="base")
        self.kind = "distill"
        self._teacher = []

    def losses(self, model: nn.Module, batch: Mapping[str, Any], t: Tensor | None = None) -> dict:
        x0 = batch["image"]
        n = x0.shape[0]
        d = self.config.distill
        if t is None:
            t = torch.randint(0, self.diffusion.num_timesteps, (n,), device=x0.device)
        w = d.w_min + (d.w_max - d.w_min) * torch.rand(n, device=x0.device)
        cond = self.conditioning(batch, x0)
        if d.mode == "progressive":
            return self.progressive_losses(model, x0, w, cond)
        empty = self.tokenizer.batch([EMPTY_CAPTION], self.config.data.text_ctx)
        uncond = {"tokens": empty[0].to(x0.device), "mask": empty[1].to(x0.device)}
        loss = guided_distillation_loss(
            model, self.teacher, self.diffusion, x0, t, w,
            cond=cond, uncond=uncond, noise=torch.randn_like(x0),
        )  # fmt: skip
        return _distill_out(loss, t)

    def _sample(self, shape: tuple[int, ...], cond: dict[str, Tensor], **kw: Any) -> Tensor:
        s = self.config.sample
        student = WeightConditioned(self.ema.model, s.guidance_scale)
        if self.config.distill.mode == "progressive":  # the grid the student learns
            return self.pd_sample(student, shape, cond)
        g = torch.Generator(device=self.device).manual_seed(s.seed)
        return dpm_solver_pp_2m_sample(
            self.diffusion,
            student,
            shape,
            steps=s.steps,
            noise=torch.randn(shape, generator=g, device=self.device),
            model_kwargs=cond,
            generator=g,
        )


class UpsampleDistillModule(_Distilling, UpsampleModule):
    """Progressive distillation of the upsampler (``train.part: upsample``): sampled unguided,
    as the release samples it, so the student has no guidance input; each round halves its DDIM
    steps on the same low-res conditioning (augmented as in upsampler training). Exported as an
    upsampler."""

    def __init__(self, config: TrainConfig, options: Mapping[str, Any]) -> None:
        super().__init__(config, options)
        self._teacher = []

    def losses(self, model: nn.Module, batch: Mapping[str, Any], t: Tensor | None = None) -> dict:
        x0 = batch["image"]
        return self.progressive_losses(model, x0, None, self.conditioning(batch, x0))

    def _sample(self, shape: tuple[int, ...], cond: dict[str, Tensor], **kw: Any) -> Tensor:
        return self.pd_sample(self.ema.model, shape, cond)


class ClipModule(GlideModule):
    """Noised CLIP: contrastive loss between captions and noisy images ``x_t`` at timestep ``t``."""

    def __init__(self, config: TrainConfig, options: Mapping[str, Any]) -> None:
        super().__init__(config, options, kind="clip")
        # Learned temperature for training (CLIP's init 1/0.07, capped at 100); the exported
        # model keeps the release's fixed guidance logit_scale from its options.
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self._loss_fn: nn.Module | None = None

    def setup(self, stage: str) -> None:
        from open_clip.loss import ClipLoss

        world = self.trainer.world_size if self._trainer is not None else 1
        rank = self.global_rank if self._trainer is not None else 0
        # gather_with_grad: gradients flow through the other ranks' features too.
        self._loss_fn = ClipLoss(gather_with_grad=world > 1, rank=rank, world_size=world)

    def features(
        self, clip: nn.Module, batch: Mapping[str, Any], t: Tensor
    ) -> tuple[Tensor, Tensor]:
        x0 = batch["image"]
        x_t = self.diffusion.q_sample(x0, t, noise=torch.randn_like(x0))
        lens = batch["mask"].sum(dim=1).clamp(min=1)
        img = F.normalize(clip.image_encoder(x_t, t), dim=-1)
        txt = F.normalize(clip.text_encoder(batch["tokens"], lens), dim=-1)
        return img, txt

    def _step(self, clip: nn.Module, batch: Mapping[str, Any], t: Tensor, prefix: str) -> Tensor:
        if self._loss_fn is None:
            self.setup("fit")
        assert self._loss_fn is not None
        img, txt = self.features(clip, batch, t)
        scale = self.log_logit_scale.exp().clamp(max=100.0)
        loss = self._loss_fn(img, txt, scale)
        n = img.shape[0]
        acc = ((img @ txt.T).argmax(dim=1) == torch.arange(n, device=img.device)).float().mean()
        self.log(f"{prefix}/loss", loss, batch_size=n, prog_bar=True)
        self.log(f"{prefix}/acc", acc, batch_size=n)
        if prefix == "train":
            self.log("train/logit_scale", scale, batch_size=n)
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        x0 = batch["image"]
        t = torch.randint(0, self.diffusion.num_timesteps, (x0.shape[0],), device=x0.device)
        return self._step(self.model, batch, t, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        n = batch["image"].shape[0]
        # Low-noise half of the schedule: where retrieval accuracy is informative.
        t = torch.linspace(0, self.diffusion.num_timesteps // 2, n, device=self.device).long()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed + batch_idx)
            self._step(self.ema.model, batch, t, "val")


def _paste(x0: Tensor, *, known: Tensor, mask: Tensor) -> Tensor:
    """Inpainting by replacement (as ``inpaint_denoised_fn``), as a partial we can re-batch."""
    return inpaint_denoised_fn(known, mask)(x0)


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of [B, C, H, W] with reflect padding (kernel radius 3 sigma)."""
    radius = max(1, math.ceil(3 * sigma))
    coords = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (coords / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    pad = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    if pad < radius:  # reflect padding cannot exceed the image; trim the kernel instead
        k = k[radius - pad : radius + pad + 1]
        k = k / k.sum()
        radius = pad
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


MODULES: dict[str, type[GlideModule]] = {
    "base": Text2ImModule,
    "upsample": UpsampleModule,
    "inpaint": InpaintModule,
    "clip": ClipModule,
    "distill": DistillModule,
}


def build_module(config: TrainConfig, options: Mapping[str, Any]) -> GlideModule:
    """The LightningModule for ``config.kind`` over a network built from ``options``."""
    cls = MODULES[config.kind]
    if config.kind == "distill" and config.part == "upsample":
        return UpsampleDistillModule(config, options)
    if cls is Text2ImModule:
        return Text2ImModule(config, options)
    return cls(config, options)  # type: ignore[call-arg]
