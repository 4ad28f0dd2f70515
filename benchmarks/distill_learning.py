"""How fast does a guidance-distilled student catch up with its teacher's caption accuracy?

Guided distillation (``train=distill``; ``glide.guidance.distilled``) starts a student with a
guidance-weight input from the trained base (``models/base``: the teacher) and trains it to give,
in one row per image, the teacher's classifier-free-guided output at any ``w`` in
``[w_min, w_max]``. This benchmark runs that training in memory, on freshly rendered ``shapes``
data of the pipeline's world at the teacher's resolution (as ``benchmarks/learning.py`` does for
the base), and pauses at evenly spaced steps (step 0 included) to sample held-out single-object
captions with the student's EMA weights (what ``train=distill`` exports and ``learning.py``
scores) at guidance ``--scale``, base only, scored by the oracle (``caption_accuracy``): exact
match and each attribute, with 95% intervals. The teacher is scored once, with its guided pair
of rows at the same scale, sampler, captions and per-image noise seeds. Every point also records
the distillation loss: the mean training loss since the previous point, and the EMA student's
loss on a fixed held-out probe batch (fixed images, timesteps, weights and noise; the table's
``loss``). Training seconds exclude the evaluation pauses.

    make run                                              # the teacher: models/base/model.pt
    python benchmarks/distill_learning.py                 # 300 steps, 4 evaluations + step 0
    python benchmarks/distill_learning.py --steps 600 --evals 6 --num-eval 128 --scale 3
    python benchmarks/distill_learning.py --teacher models/base/model.pt --json distill.json

Defaults (steps, batch, LR and its schedule, EMA decay, w range) are ``conf/train/distill.yaml``'s;
the options override them. Writes ``<out>/results.json``, ``<out>/curves.png`` and labelled
sample grids ``<out>/grids/``, and prints one table.

Reading it: at step 0 the student is the teacher's *conditional* model (its guidance embedding
is zero), so its accuracy is that of unguided sampling, and the gap to the guided teacher is what
guidance buys. The gap should close as the loss falls; the student has matched its teacher when
the gap is inside the intervals (at 64 captions about +-12 points: a few points is noise). One run
per seed: rerun with another ``--seed`` before trusting a small difference.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from PIL import Image

from glide.data.shapes import World
from glide.diffusion import create_gaussian_diffusion
from glide.evaluation.captions import caption_accuracy
from glide.guidance.distilled import guided_distillation_loss, student_from_teacher
from glide.precision import detect_hardware
from glide.sampling import Cascade, GenerationConfig, LoadedModel, parse_sampler, to_pil
from glide.sampling.io import labelled_grid
from glide.text import EMPTY_CAPTION
from glide.training.ema import EMA
from glide.training.modules import lr_lambda, step_seed


def _learning() -> ModuleType:
    """``benchmarks/learning.py`` (its data, evaluation captions and training loop)."""
    name = "learning_benchmark"  # the name tests/test_learning.py registers it under
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("learning.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[name]


learning = _learning()


@dataclass(frozen=True)
class Settings:
    """The distillation run's recipe: ``conf/train/distill.yaml``'s unless overridden."""

    steps: int = 300
    batch_size: int = 32
    lr: float = 2e-4
    w_min: float = 1.0
    w_max: float = 8.0
    warmup_steps: int = 20
    lr_schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    ema_decay: float = 0.995
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)


def conf_settings() -> Settings:
    """:class:`Settings` of ``train=distill`` composed from conf/."""
    from glide.config import compose

    train = compose("config", ["train=distill"])["train"]
    optim = train["optim"]
    return Settings(
        steps=int(train["max_steps"]),
        batch_size=int(train["data"]["batch_size"]),
        lr=float(optim["lr"]),
        w_min=float(train["distill"]["w_min"]),
        w_max=float(train["distill"]["w_max"]),
        warmup_steps=int(optim["warmup_steps"]),
        lr_schedule=str(optim["schedule"]),
        min_lr_ratio=float(optim["min_lr_ratio"]),
        ema_decay=float(train["ema_decay"]),
        grad_clip=float(optim["grad_clip"]),
        weight_decay=float(optim["weight_decay"]),
        betas=(float(optim["betas"][0]), float(optim["betas"][1])),
    )


def pipeline_world() -> World:
    """The data stage's world (the one the default teacher was trained on)."""
    return World(**learning.default_recipe().world)


def load_teacher(path: str | Path) -> LoadedModel:
    """The exported base to distil, frozen; exits with one line when it is not there."""
    from glide.sampling import load_model_source

    if not str(path).startswith(("models:/", "openai:")) and not Path(path).exists():
        raise SystemExit(f"teacher {path} not found: train it first: make run")
    teacher = load_model_source(path)
    if teacher.kind != "base" or getattr(teacher.model.text_config, "guidance_embed", False):
        raise SystemExit(f"{path} is not a plain base model (kind {teacher.kind})")
    teacher.model.eval().requires_grad_(False)
    return teacher


class DistillRun:
    """The student, its EMA and optimiser, the rendered data and a fixed probe batch.

    ``step`` and ``train_step(progress)`` are what ``learning.train_for`` drives.
    """

    def __init__(
        self,
        teacher: LoadedModel,
        settings: Settings,
        *,
        world: World,
        num_train: int,
        probe_size: int = 64,
        seed: int = 0,
    ) -> None:
        self.teacher, self.settings, self.world, self.seed = teacher, settings, world, seed
        size, ctx = teacher.image_size, teacher.text_ctx
        spec = teacher.diffusion
        self.diffusion = create_gaussian_diffusion(
            steps=spec.steps,
            noise_schedule=spec.noise_schedule,
            parametrization=spec.parametrization,
        )
        self.images, captions = learning.render(world, num_train, size, seed)
        self.tokens, self.mask = teacher.tokenizer.batch(captions, ctx)
        empty = teacher.tokenizer.batch([EMPTY_CAPTION], ctx)
        self.uncond = {"tokens": empty[0], "mask": empty[1]}
        torch.manual_seed(seed)
        self.model = student_from_teacher(teacher.model, teacher.options).train()
        self.ema = EMA(self.model, settings.ema_decay)
        self.options = {**teacher.options, "guidance_embed": True}
        self.opt = torch.optim.AdamW(
            self.model.parameters(),
            lr=settings.lr,
            betas=settings.betas,
            weight_decay=settings.weight_decay,
        )
        self.step = 0
        self.probe = self._probe_batch(probe_size, seed + 2000)

    def _probe_batch(self, n: int, seed: int) -> dict[str, Any]:
        """Held-out images with fixed timesteps, weights and noise (spread over their ranges)."""
        images, captions = learning.render(self.world, n, self.teacher.image_size, seed)
        tokens, mask = self.teacher.tokenizer.batch(captions, self.teacher.text_ctx)
        s, steps = self.settings, self.diffusion.num_timesteps
        g = torch.Generator().manual_seed(seed)
        x0 = images.float() / 127.5 - 1.0
        return {
            "x0": x0,
            "t": torch.linspace(0, steps - 1, n).round().long()[torch.randperm(n, generator=g)],
            "w": torch.linspace(s.w_min, s.w_max, n)[torch.randperm(n, generator=g)],
            "noise": torch.randn(x0.shape, generator=g),
            "cond": {"tokens": tokens, "mask": mask},
        }

    def lr_factor(self) -> float:
        s = self.settings
        return lr_lambda(
            self.step,
            warmup=s.warmup_steps,
            total=s.steps,
            schedule=s.lr_schedule,
            min_ratio=s.min_lr_ratio,
        )

    def loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        """Per-example guided-distillation loss [B] of ``model`` on ``batch``."""
        return guided_distillation_loss(
            model,
            self.teacher.model,
            self.diffusion,
            batch["x0"],
            batch["t"],
            batch["w"],
            cond=batch["cond"],
            uncond=self.uncond,
            noise=batch["noise"],
        )

    def train_step(self, progress: float = 0.0) -> float:
        """One step of ``DistillModule``'s guided loss (``progress`` is unused: the schedule
        follows steps, as ``train=distill``'s does)."""
        s = self.settings
        torch.manual_seed(step_seed(self.seed, self.step, 0))
        n = s.batch_size
        idx = torch.randint(0, self.images.shape[0], (n,))
        x0 = self.images[idx].float() / 127.5 - 1.0
        batch = {
            "x0": x0,
            "t": torch.randint(0, self.diffusion.num_timesteps, (n,)),
            "w": s.w_min + (s.w_max - s.w_min) * torch.rand(n),
            "noise": torch.randn_like(x0),
            "cond": {"tokens": self.tokens[idx], "mask": self.mask[idx]},
        }
        for group in self.opt.param_groups:
            group["lr"] = s.lr * self.lr_factor()
        loss = self.loss(self.model, batch).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if s.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), s.grad_clip)
        self.opt.step()
        self.ema.update(self.model)
        self.step += 1
        return float(loss.detach())

    @torch.no_grad()
    def probe_loss(self) -> float:
        """The EMA student's mean distillation loss on the fixed probe batch."""
        return float(self.loss(self.ema.model, self.probe).mean())

    def student(self) -> LoadedModel:
        """The EMA student as a sampler's base (the cascade samples it with one row per image)."""
        return dataclasses.replace(
            self.teacher,
            model=self.ema.model,
            options=self.options,
            version=f"{self.teacher.version}, distilled step {self.step}",
        )


def sample_and_score(
    loaded: LoadedModel,
    captions: Sequence[str],
    *,
    scale: float,
    sampler: str,
    world: World,
    seed: int = 0,
) -> tuple[dict[str, Any], list[Image.Image], list[str], float]:
    """Base-only samples of ``captions`` at guidance ``scale`` (image ``i``'s noise from its own
    seed: the same for every model), scored by the oracle. Returns (metrics, images, verdict
    labels, sampling seconds)."""
    gen = GenerationConfig(
        guidance_scale=scale,
        sampler=parse_sampler(sampler),
        upsample=False,
        batch_size=64,
        seed=seed,
    )
    t0 = time.perf_counter()
    with torch.no_grad():
        images = to_pil(Cascade(loaded).generate(list(captions), gen).base)
    seconds = time.perf_counter() - t0
    bg = world.backgrounds[0] if len(world.backgrounds) == 1 else None
    acc = caption_accuracy(images, list(captions), world_background=bg)
    return acc.as_dict(), images, [v.label for v in acc.verdicts], seconds


def _save_grid(
    path: Path, images: list[Image.Image], captions: Sequence[str], labels: list[str]
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    labelled_grid(images[:16], list(captions[:16]), verdicts=labels[:16]).save(path)


def _exact(metrics: dict[str, Any]) -> float:
    return float(metrics.get("caption_accuracy_single", math.nan))


def _attr(metrics: dict[str, Any], name: str) -> float:
    return float(metrics.get("attributes_single", {}).get(name, math.nan))


def _pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:.0f}"


def _exact_ci(metrics: dict[str, Any]) -> str:
    lo, hi = metrics.get("caption_accuracy_single_ci95", [math.nan, math.nan])
    return f"{_pct(_exact(metrics))} ({_pct(lo)}-{_pct(hi)})"


def plot_curves(result: dict[str, Any], path: Path) -> None:
    """Student exact match and colour accuracy against training seconds; the teacher's as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points, teacher = result["points"], result["teacher"]["metrics"]
    xs = [p["train_seconds"] / 60 for p in points]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (key, title) in zip(
        axes, (("exact", "exact match, single-object"), ("color", "colour")), strict=True
    ):
        pick = _exact if key == "exact" else (lambda m: _attr(m, "color"))
        ys = [100 * pick(p["metrics"]) for p in points]
        ax.plot(xs, ys, marker="o", label="student (EMA, one row)")
        if key == "exact":
            lows = [100 * p["metrics"]["caption_accuracy_single_ci95"][0] for p in points]
            highs = [100 * p["metrics"]["caption_accuracy_single_ci95"][1] for p in points]
            ax.fill_between(xs, lows, highs, alpha=0.15)
        ax.axhline(100 * pick(teacher), color="k", linestyle="--", label="teacher (guided pair)")
        ax.set_xlabel("distillation minutes (evaluation excluded)")
        ax.set_ylabel("% of captions")
        ax.set_title(f"{title} (guidance {result['scale']:g}, {result['sampler']})")
        ax.set_ylim(0, 104)  # a teacher at 100% stays visible
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def table(result: dict[str, Any]) -> str:
    """The printed table: one row per evaluation point."""
    teacher = result["teacher"]["metrics"]
    rows = [
        "| step | train s | loss | student exact (95% CI) | teacher exact | gap | "
        "colour s/t | background s/t |",
        "|---" * 8 + "|",
    ]
    for p in result["points"]:
        m = p["metrics"]
        gap = _exact(teacher) - _exact(m)
        rows.append(
            f"| {p['step']} | {p['train_seconds']:.1f} | {p['probe_loss']:.4f} | "
            f"{_exact_ci(m)} | {_exact_ci(teacher)} | {100 * gap:+.0f} | "
            f"{_pct(_attr(m, 'color'))}/{_pct(_attr(teacher, 'color'))} | "
            f"{_pct(_attr(m, 'background'))}/{_pct(_attr(teacher, 'background'))} |"
        )
    return "\n".join(rows)


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    teacher = load_teacher(args.teacher)
    overrides = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "w_min": args.w_min,
        "w_max": args.w_max,
        "warmup_steps": args.warmup,
    }
    settings = dataclasses.replace(
        conf_settings(), **{k: v for k, v in overrides.items() if v is not None}
    )
    if settings.steps < 1 or args.evals < 1:
        raise SystemExit("--steps and --evals must be >= 1")
    hw = detect_hardware()
    machine = {**hw.as_dict(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    print(
        f"machine: {hw.cpu_name or 'unknown CPU'}; {hw.describe()}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    world = pipeline_world()
    num_train = min(args.num_train, settings.steps * settings.batch_size)
    dr = DistillRun(
        teacher, settings, world=world, num_train=num_train, probe_size=args.probe, seed=args.seed
    )
    captions = learning.eval_captions(world, args.num_eval, args.seed + 1000)
    out = Path(args.out)
    score = {"scale": args.scale, "sampler": args.sampler, "world": world, "seed": args.seed}
    print(f"teacher {teacher.version}: {teacher.image_size}px, {teacher.diffusion}\n{settings}")

    t_metrics, images, labels, t_seconds = sample_and_score(teacher, captions, **score)
    _save_grid(out / "grids" / "teacher.png", images, captions, labels)
    print(f"teacher (guided pair, cfg {args.scale:g}): exact {_exact_ci(t_metrics)}", flush=True)

    points: list[dict[str, Any]] = []
    seen = [0]  # losses already averaged into a point

    def mark(trained: float, losses: list[float]) -> None:
        metrics, images, labels, seconds = sample_and_score(dr.student(), captions, **score)
        _save_grid(out / "grids" / f"step-{dr.step:05d}.png", images, captions, labels)
        recent = losses[seen[0] :]
        seen[0] = len(losses)
        point = {
            "step": dr.step,
            "train_seconds": round(trained, 2),
            "train_loss": float(np.mean(recent)) if recent else None,
            "probe_loss": dr.probe_loss(),
            "sample_seconds": round(seconds, 2),
            "gap": _exact(t_metrics) - _exact(metrics),
            "metrics": metrics,
        }
        points.append(point)
        print(
            f"  step {dr.step:5d}  {trained:7.1f} s  probe loss {point['probe_loss']:.5f}  "
            f"student exact {_exact_ci(metrics)}  gap {100 * point['gap']:+.0f}",
            flush=True,
        )

    mark(0.0, [])
    learning.train_for(dr, steps=settings.steps, evals=args.evals, on_mark=mark)

    result: dict[str, Any] = {
        "teacher": {
            "path": str(args.teacher),
            "version": teacher.version,
            "metrics": t_metrics,
            "sample_seconds": round(t_seconds, 2),
        },
        "student": "EMA weights (what train=distill exports), one row per image",
        "settings": dataclasses.asdict(settings),
        "scale": args.scale,
        "sampler": args.sampler,
        "num_eval": len(captions),
        "num_train": num_train,
        "probe_size": args.probe,
        "seed": args.seed,
        "world": dataclasses.asdict(world),
        "machine": machine,
        "points": points,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    plot_curves(result, out / "curves.png")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\n{table(result)}")
    print(
        "\nloss: the EMA student's distillation loss on the fixed probe batch; gap: teacher "
        "minus student exact match, in points; s/t: student/teacher %"
    )
    print(f"wrote {out / 'results.json'}, {out / 'curves.png'} and {out / 'grids'}/")
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    conf = "default: conf/train/distill.yaml's"
    p.add_argument("--teacher", default="models/base/model.pt", help="the exported base")
    p.add_argument("--steps", type=int, default=None, help=f"distillation steps ({conf}, 300)")
    p.add_argument("--evals", type=int, default=4, help="evaluation points after step 0")
    p.add_argument("--num-eval", type=int, default=64, help="held-out single-object captions")
    p.add_argument("--num-train", type=int, default=4000, help="rendered training examples")
    p.add_argument("--probe", type=int, default=64, help="fixed held-out batch for the loss")
    p.add_argument("--batch-size", type=int, default=None, help=f"{conf} (32)")
    p.add_argument("--lr", type=float, default=None, help=f"{conf} (2e-4)")
    p.add_argument("--warmup", type=int, default=None, help=f"LR warmup steps ({conf}, 20)")
    p.add_argument("--w-min", type=float, default=None, help=f"{conf} (1)")
    p.add_argument("--w-max", type=float, default=None, help=f"{conf} (8)")
    p.add_argument("--scale", type=float, default=3.0, help="guidance scale sampled")
    p.add_argument("--sampler", default="dpm++-10", help="base sampler (no upsampler)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: every core)")
    p.add_argument("--out", default="reports/distill_learning", help="results.json, curves, grids")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results here")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return run(parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
