"""Does a training recipe make the tiny base model draw what the caption says, and how fast?

Trains each recipe for a budget of training time (or steps) on freshly rendered ``shapes`` data
(in memory: no shards, no pipeline), pausing at evenly spaced points to sample held-out
single-object captions with classifier-free guidance and score them with the oracle: accuracy of
each attribute the caption names (colour, shape, size, position, background) and exact match,
with 95% intervals. Writes labelled sample grids per point, a JSON of every number and a
learning-curve plot, and prints one table comparing the recipes.

Everything that matters is the library's own: ``TrainingObjective`` (parametrization, timestep
sampler, loss weighting), the tiny preset's U-Net, ``EMA``, the LR schedule of the training
modules, the ``Cascade`` sampler and ``caption_accuracy`` of the evaluate stage.

    python benchmarks/learning.py --recipes default,glide --minutes 8
    python benchmarks/learning.py --recipes v --steps 600 --evals 3 --set world.max_objects=3
    python benchmarks/learning.py --list                     # the named recipes

``default`` is the pipeline's own recipe, composed from ``conf/`` (``train=base``, the ``tiny``
preset, the data stage's ``world``); ``glide`` is the same with GLIDE's training recipe (eps
prediction, uniform timesteps, no loss weighting).

``--set key=value`` (repeatable) changes every recipe: recipe fields (``lr=2e-3``,
``resolution=64``), ``world.<field>`` (``world.backgrounds=[black,white]``) or ``model.<option>``
(``model.num_channels=64``). Training time excludes the evaluation pauses. One run per recipe:
treat differences of a few points as noise (the intervals say how many).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from glide.data.shapes import World, make_example, to_base_resolution
from glide.diffusion import TrainingObjective, create_gaussian_diffusion
from glide.evaluation.captions import ATTRIBUTES, caption_accuracy, is_single_object
from glide.models import from_openai_options, load_preset
from glide.sampling import Cascade, GenerationConfig, LoadedModel, parse_sampler, to_pil
from glide.sampling.io import labelled_grid
from glide.sampling.samplers import DiffusionSpec
from glide.text import EMPTY_CAPTION, get_tokenizer
from glide.training.ema import EMA
from glide.training.modules import lr_lambda, step_seed


@dataclass(frozen=True)
class Recipe:
    """One way to train the base model; GLIDE's recipe is the defaults' eps/uniform/none."""

    name: str
    preset: str = "tiny"
    parametrization: str = "eps"
    timestep_sampler: str = "uniform"
    timestep_bins: int = 0
    loss_weighting: str = "none"
    min_snr_gamma: float = 5.0
    resolution: int = 0  # 0: the preset's base resolution
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 50
    lr_schedule: str = "constant"  # or cosine (to min_lr_ratio over the budget)
    min_lr_ratio: float = 0.1
    ema_decay: float = 0.99
    caption_dropout: float = 0.2
    grad_clip: float = 1.0
    precision: str = "fp32"  # fp32 | bf16 (CPU autocast)
    model: dict[str, Any] = field(default_factory=dict)  # overrides of the tiny base's options
    world: dict[str, Any] = field(default_factory=lambda: {"max_objects": 1})


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("eps"),  # eps, uniform t, unweighted: the release's recipe, harness defaults
        Recipe("x0", parametrization="x0"),
        Recipe("v", parametrization="v"),
        Recipe("v-minsnr", parametrization="v", loss_weighting="min_snr"),
        Recipe(
            "v-importance",
            parametrization="v",
            timestep_sampler="loss_second_moment",
            timestep_bins=20,
        ),
        Recipe(
            "eps-importance",
            timestep_sampler="loss_second_moment",
            timestep_bins=20,
        ),
    )
}


def set_field(recipe: Recipe, assignment: str) -> Recipe:
    """Apply ``key=value`` (value parsed as YAML) to a recipe; ``world.x`` / ``model.x`` nest."""
    key, _, text = assignment.partition("=")
    if not _:
        raise ValueError(f"--set expects key=value, got {assignment!r}")
    value = yaml.safe_load(text)
    head, _, sub = key.partition(".")
    if head in ("world", "model") and sub:
        return dataclasses.replace(recipe, **{head: {**getattr(recipe, head), sub: value}})
    if head not in {f.name for f in dataclasses.fields(Recipe)}:
        raise ValueError(f"unknown recipe field {key!r}")
    current = getattr(recipe, head)
    if isinstance(current, float) and isinstance(value, int | str):
        value = float(value)  # YAML 1.1 reads "2e-3" as a string
    return dataclasses.replace(recipe, **{head: value})


def base_options(recipe: Recipe) -> dict[str, Any]:
    """The preset's base options (at the recipe's resolution, if set) plus its overrides."""
    options = dict(load_preset(recipe.preset)["base"])
    if recipe.resolution and recipe.resolution != options["image_size"]:
        options["image_size"] = recipe.resolution
        if "channel_mult" not in recipe.model:  # one level per halving down to 8x8
            levels = max(1, int(math.log2(recipe.resolution // 8)) + 1)
            options["channel_mult"] = ",".join(["1"] + ["2"] * (levels - 1))
    options.update(recipe.model)
    return options


def default_recipe() -> Recipe:
    """The pipeline's recipe: ``train=base`` and the data stage's world, composed from conf/."""
    from glide.config import compose

    cfg = compose("config", ["train=base"])
    train, world = cfg["train"], (cfg["data"].get("options") or {}).get("world") or {}
    optim = train["optim"]
    return Recipe(
        name="default",
        preset=train["preset"],
        parametrization=train["parametrization"],
        timestep_sampler=train["timestep_sampler"],
        timestep_bins=train["timestep_bins"],
        loss_weighting=train["loss_weighting"],
        min_snr_gamma=train["min_snr_gamma"],
        batch_size=train["data"]["batch_size"],
        lr=optim["lr"],
        warmup_steps=optim["warmup_steps"],
        lr_schedule=optim["schedule"],
        min_lr_ratio=optim["min_lr_ratio"],
        ema_decay=train["ema_decay"],
        caption_dropout=train["data"]["caption_dropout"],
        grad_clip=optim["grad_clip"],
        model=dict(train.get("model_overrides") or {}),
        world=dict(world),
    )


def named_recipe(name: str) -> Recipe:
    """``default``, ``glide`` (the default with GLIDE's recipe) or one of :data:`RECIPES`."""
    if name in ("default", "glide"):
        recipe = default_recipe()
        if name == "glide":
            recipe = dataclasses.replace(
                recipe,
                name="glide",
                parametrization="eps",
                timestep_sampler="uniform",
                loss_weighting="none",
            )
        return recipe
    if name not in RECIPES:
        raise SystemExit(f"unknown recipe {name!r}; known: default, glide, {', '.join(RECIPES)}")
    return RECIPES[name]


def render(world: World, n: int, resolution: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """``n`` examples rendered at 256 px and resized as the data stage does: uint8 [n,3,R,R]."""
    images, captions = [], []
    for i in range(n):
        img, caption, _ = make_example(seed, i, size=256, world=world)
        images.append(np.asarray(to_base_resolution(img, resolution)))
        captions.append(caption)
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), captions


def eval_captions(world: World, n: int, seed: int) -> list[str]:
    """``n`` single-object captions of held-out scenes of ``world``."""
    out: list[str] = []
    i = 0
    while len(out) < n:
        caption = make_example(seed, i, size=16, world=world)[1]
        if is_single_object(caption):
            out.append(caption)
        i += 1
        if i > 100 * n:
            raise ValueError("this world has (almost) no single-object scenes to evaluate")
    return out


class Run:
    """One recipe: its data, model, EMA, optimiser, objective and evaluation."""

    def __init__(self, recipe: Recipe, *, num_train: int, seed: int) -> None:
        self.recipe = r = recipe
        self.world = World(**r.world)
        self.seed = seed
        self.tokenizer = get_tokenizer("clip")
        options = base_options(r)
        self.text_ctx = int(options["text_ctx"])
        self.images, captions = render(self.world, num_train, int(options["image_size"]), seed)
        self.tokens, self.mask = self.tokenizer.batch(captions, self.text_ctx)
        self.empty = self.tokenizer.batch([EMPTY_CAPTION], self.text_ctx)
        torch.manual_seed(seed)
        self.model = from_openai_options(options)
        self.ema = EMA(self.model, r.ema_decay)
        self.options = options
        self.diffusion = create_gaussian_diffusion(parametrization=r.parametrization)
        self.objective = TrainingObjective.from_recipe(self.diffusion, r)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=r.lr, weight_decay=0.0)
        self.step = 0
        self.n_params = sum(p.numel() for p in self.model.parameters())

    def lr_factor(self, progress: float) -> float:
        r = self.recipe
        if r.warmup_steps and self.step < r.warmup_steps:
            return (self.step + 1) / r.warmup_steps
        # The budget's fraction stands in for the step fraction of lr_lambda's cosine.
        total = 10_000
        return lr_lambda(
            r.warmup_steps + int(progress * (total - r.warmup_steps)),
            warmup=r.warmup_steps,
            total=total,
            schedule=r.lr_schedule,
            min_ratio=r.min_lr_ratio,
        )

    def train_step(self, progress: float) -> float:
        r = self.recipe
        torch.manual_seed(step_seed(self.seed, self.step, 0))
        idx = torch.randint(0, self.images.shape[0], (r.batch_size,))
        x0 = self.images[idx].float() / 127.5 - 1.0
        drop = torch.rand(r.batch_size) < r.caption_dropout
        tokens = torch.where(drop[:, None], self.empty[0], self.tokens[idx])
        mask = torch.where(drop[:, None], self.empty[1], self.mask[idx])
        for group in self.opt.param_groups:
            group["lr"] = r.lr * self.lr_factor(progress)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=r.precision == "bf16")
        with autocast:
            out = self.objective.losses(
                self.model, x0, model_kwargs={"tokens": tokens, "mask": mask}
            )
        self.opt.zero_grad(set_to_none=True)
        out["objective"].backward()
        if r.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), r.grad_clip)
        self.opt.step()
        self.ema.update(self.model)
        self.step += 1
        return float(out["objective"].detach())

    def export(self, path: Path) -> Path:
        """The EMA model in the export format ``glide sample`` and ``evaluate`` read."""
        from glide.models.export import save_model

        return save_model(
            path,
            self.ema.model,
            kind="base",
            options=self.options,
            tokenizer="clip",
            diffusion={
                "steps": self.diffusion.num_timesteps,
                "noise_schedule": "squaredcos_cap_v2",
                "parametrization": self.recipe.parametrization,
            },
            extra={"step": self.step, "name": self.recipe.name, "recipe": self.recipe.name},
        )

    @torch.no_grad()
    def evaluate(
        self, captions: Sequence[str], scales: Sequence[float], sampler: str, out_dir: Path
    ) -> dict[str, Any]:
        loaded = LoadedModel(
            model=self.ema.model,
            kind="base",
            options=self.options,
            tokenizer=self.tokenizer,
            diffusion=DiffusionSpec(parametrization=self.recipe.parametrization),
            version=self.recipe.name,
        )
        cascade = Cascade(loaded)
        bg = self.world.backgrounds[0] if len(self.world.backgrounds) == 1 else None
        results: dict[str, Any] = {}
        for scale in scales:
            gen = GenerationConfig(
                guidance_scale=scale,
                sampler=parse_sampler(sampler),
                upsample=False,
                batch_size=64,
                seed=0,
            )
            images = to_pil(cascade.generate(list(captions), gen).base)
            acc = caption_accuracy(images, captions, world_background=bg)
            metrics = acc.as_dict()
            results[f"{scale:g}"] = metrics
            grid = labelled_grid(
                images[:16],
                list(captions[:16]),
                verdicts=[v.label for v in acc.verdicts[:16]],
            )
            out_dir.mkdir(parents=True, exist_ok=True)
            grid.save(out_dir / f"step-{self.step:05d}_cfg{scale:g}.png")
        return results


def train_for(
    run: Run,
    *,
    seconds: float = 0.0,
    steps: int = 0,
    evals: int = 1,
    on_mark: Callable[[float, list[float]], None] | None = None,
) -> float:
    """Train ``steps`` steps (else ``seconds`` of training time), calling ``on_mark(training
    seconds, losses)`` at ``evals`` evenly spaced points (the last at the end); evaluation time
    inside ``on_mark`` does not count. Returns the training seconds."""
    budget = steps if steps else seconds
    if budget <= 0:
        raise ValueError("give a positive number of steps or seconds")
    marks = [budget * (k + 1) / evals for k in range(evals)]
    trained, losses = 0.0, []
    while marks:
        progress = (run.step if steps else trained) / budget
        t0 = time.perf_counter()
        losses.append(run.train_step(min(1.0, progress)))
        trained += time.perf_counter() - t0
        if (run.step if steps else trained) >= marks[0]:
            marks.pop(0)
            if on_mark is not None:
                on_mark(trained, losses)
    return trained


def _fmt(metrics: dict[str, Any]) -> str:
    attrs = metrics.get("attributes_single", {})
    cells = [f"{100 * attrs[a]:.0f}" if a in attrs else "-" for a in ATTRIBUTES]
    exact = metrics.get("caption_accuracy_single", float("nan"))
    lo, hi = metrics.get("caption_accuracy_single_ci95", [math.nan, math.nan])
    return " | ".join([*cells, f"{100 * exact:.0f} ({100 * lo:.0f}-{100 * hi:.0f})"])


def plot_curves(results: dict[str, Any], path: Path, scale: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, res in results.items():
        xs = [p["train_seconds"] / 60 for p in res["points"]]
        for ax, key in zip(axes, ("caption_accuracy_single", "color"), strict=True):
            ys = [
                p["scales"][scale].get(key, p["scales"][scale]["attributes_single"].get(key))
                for p in res["points"]
            ]
            ax.plot(xs, [100 * y for y in ys], marker="o", label=name)
    for ax, title in zip(axes, ("exact match, single-object", "colour"), strict=True):
        ax.set_xlabel("training minutes (2-core CPU)")
        ax.set_ylabel("% of captions")
        ax.set_title(f"{title} (CFG {scale})")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--recipes", default="glide,v", help="comma-separated names (see --list)")
    p.add_argument("--list", action="store_true", help="print the named recipes and exit")
    p.add_argument("--minutes", type=float, default=8.0, help="training time per recipe")
    p.add_argument("--steps", type=int, default=0, help="train this many steps instead of time")
    p.add_argument("--evals", type=int, default=3, help="evaluation points (evenly spaced)")
    p.add_argument("--set", action="append", default=[], help="key=value for every recipe")
    p.add_argument("--num-train", type=int, default=4000, help="rendered training examples")
    p.add_argument("--num-eval", type=int, default=64, help="single-object eval captions")
    p.add_argument("--scales", default="1,3", help="classifier-free guidance scales")
    p.add_argument("--sampler", default="dpm++-15")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: every core)")
    p.add_argument("--out", default="reports/learning", help="grids, results.json, curves.png")
    p.add_argument(
        "--save-models",
        action="store_true",
        help="also export each recipe's final EMA model to <out>/<recipe>/model.pt (glide sample)",
    )
    args = p.parse_args()
    if args.list:
        for r in (default_recipe(), *RECIPES.values()):
            print(r)
        return
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    scales = [float(s) for s in args.scales.split(",")]
    out = Path(args.out)
    results: dict[str, Any] = {}
    for name in args.recipes.split(","):
        recipe = named_recipe(name)
        for assignment in args.set:
            recipe = set_field(recipe, assignment)
        run = Run(recipe, num_train=args.num_train, seed=args.seed)
        captions = eval_captions(run.world, args.num_eval, args.seed + 1000)
        print(f"\n== {name}: {recipe}\n   {run.n_params / 1e6:.2f}M parameters", flush=True)
        points: list[dict[str, Any]] = []

        def mark(trained: float, losses: list[float], run: Run = run, recipe: Recipe = recipe,
                 captions: list[str] = captions, points: list = points) -> None:  # fmt: skip
            scores = run.evaluate(captions, scales, args.sampler, out / recipe.name)
            point = {
                "step": run.step,
                "train_seconds": round(trained, 1),
                "images_per_second": round(run.step * recipe.batch_size / trained, 2),
                "loss": float(np.mean(losses[-50:])),
                "scales": scores,
            }
            points.append(point)
            print(
                f"   step {run.step:5d}  {trained / 60:5.1f} min  "
                f"{point['images_per_second']:5.1f} img/s  loss {point['loss']:.4f}",
                flush=True,
            )
            for s, m in scores.items():
                print(f"     cfg {s:>3s}: {_fmt(m)}", flush=True)

        train_for(run, seconds=args.minutes * 60, steps=args.steps, evals=args.evals, on_mark=mark)
        results[name] = {"recipe": dataclasses.asdict(recipe), "points": points}
        if args.save_models:
            run.export(out / recipe.name / "model.pt")

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    best = f"{max(scales):g}"
    plot_curves(results, out / "curves.png", best)
    header = " | ".join(ATTRIBUTES)
    print(f"\n| recipe | steps | min | img/s | cfg | {header} | exact single (95% CI) |")
    print("|---" * (6 + len(ATTRIBUTES)) + "|")
    for name, res in results.items():
        last = res["points"][-1]
        for s, m in last["scales"].items():
            print(
                f"| {name} | {last['step']} | {last['train_seconds'] / 60:.1f} | "
                f"{last['images_per_second']:.1f} | {s} | {_fmt(m)} |"
            )
    print(f"\nwrote {out / 'results.json'}, {out / 'curves.png'} and grids under {out}/<recipe>/")


if __name__ == "__main__":
    main()
