"""Quality guard for fast sampling: the release recipe against the fast one on trained models.

Speed that changes the picture is not speed. This draws the same captions of the val set through
the full cascade with each sampling recipe (``glide.sampling.RECIPES``, plus upsampler-step
variants of ``fast``), for several seeds, and prints what ``evaluate``'s sampler table reports:
oracle caption accuracy with its 95% interval, per-attribute accuracy on single-object captions,
``fd_clip`` and seconds per image. The seeds give the noise: a recipe is "within noise" of the
release when its difference is no larger than the release's own spread across seeds.

    python benchmarks/recipe_quality.py                       # models/ of `make run`, seeds 0,1
    python benchmarks/recipe_quality.py --seeds 0,1,2 --base-samplers dpm++-8 --upsamplers dpm++-8,ancestral-10
    python benchmarks/recipe_quality.py --json reports/recipe_quality.json
    python benchmarks/recipe_quality.py --only-variants --recipes balanced \
        --distilled models/base-distilled-pd4 --distilled-upsampler models/upsampler-distilled-pd2

``--distilled PATH`` adds the ``distilled`` recipe on that guidance-distilled base, with the
upsampler ``--distilled-upsampler PATH`` (default: the teacher's), each on the grid its export
names (``pd-4``, ``pd-2``; a stage-one student ``dpm++-10``, a plain upsampler ``fast27``), drawn
from the same captions and seeds as the teacher's rows; ``--distilled-sampler`` /
``--distilled-upsample-sampler`` override them.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import time
from pathlib import Path
from typing import Any

import torch

from glide.config import compose, project_root
from glide.evaluation import EvaluateConfig, Evaluator
from glide.sampling import RECIPES, Recipe, for_models, load_model_source, parse_sampler


def _stage_overrides(argv: list[str]) -> list[str]:
    """The evaluate stage's own composition (``pipelines/evaluate.py``)."""
    path = project_root() / "pipelines" / "evaluate.py"
    spec = importlib.util.spec_from_file_location("evaluate_stage", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._overrides(argv)


def recipes(base: list[str], upsample: list[str]) -> dict[str, Recipe]:
    """``release``, ``fast``, and ``fast`` with each other base / upsampler sampler."""
    fast = RECIPES["fast"]
    out = {"release": RECIPES["release"], "fast": fast}
    for label in base:
        spec = parse_sampler(label)
        if spec != fast.sampler:
            out[f"fast, base {spec.label}"] = dataclasses.replace(fast, sampler=spec)
    for label in upsample:
        spec = parse_sampler(label)
        if spec != fast.upsample_sampler:
            out[f"fast, upsampler {spec.label}"] = dataclasses.replace(fast, upsample_sampler=spec)
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--num-images", type=int, default=64, help="captions per recipe and seed")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--base-samplers", default="", help="fast variants' base, e.g. dpm++-8")
    p.add_argument("--upsamplers", default="", help="fast variants' upsampler, e.g. ancestral-10")
    p.add_argument("--only-variants", action="store_true", help="skip release and fast")
    p.add_argument("--recipes", default="", help="extra named recipes, e.g. balanced")
    p.add_argument("--distilled", default=None, help="a guidance-distilled base (recipe distilled)")
    p.add_argument(
        "--distilled-sampler", default=None, help="its base sampler (default: its export's)"
    )
    p.add_argument("--distilled-upsampler", default=None, help="a distilled upsampler for that row")
    p.add_argument(
        "--distilled-upsample-sampler", default=None, help="its sampler (default: its export's)"
    )
    p.add_argument("--guidance-scale", type=float, default=3.0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", default=None, metavar="PATH")
    p.add_argument("overrides", nargs="*", help="evaluate config overrides, e.g. evaluate.base=...")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = compose("config", _stage_overrides(args.overrides))
    raw = dict(cfg["evaluate"])
    raw.update(num_captions=args.num_images, min_single_object=args.num_images, inpaint=None)
    raw["cache_dir"] = None  # time every image: no images reused from an earlier run
    table = recipes(
        [s for s in args.base_samplers.split(",") if s],
        [s for s in args.upsamplers.split(",") if s],
    )
    if args.only_variants:
        table = {k: v for k, v in table.items() if k not in ("release", "fast")}
    for name in (n for n in args.recipes.split(",") if n):
        table[name] = RECIPES[name]
    load = {"tokenizer_path": raw.get("tokenizer_path"), "device": raw.get("device", "cpu")}
    models = {
        k: load_model_source(raw[k], **load) if raw.get(k) else None
        for k in ("base", "upsampler", "clip")
    }
    distilled = load_model_source(args.distilled, **load) if args.distilled else None
    up = args.distilled_upsampler
    distilled_up = load_model_source(up, **load) if distilled is not None and up else None
    if distilled is not None:
        # each student on the grid it learned (its export's sampler), unless told otherwise
        row = for_models(RECIPES["distilled"], distilled, distilled_up or models["upsampler"])
        if args.distilled_sampler:
            row = dataclasses.replace(row, sampler=parse_sampler(args.distilled_sampler))
        if args.distilled_upsample_sampler:
            spec = parse_sampler(args.distilled_upsample_sampler)
            row = dataclasses.replace(row, upsample_sampler=spec)
        table["distilled"] = row
    results: dict[str, dict[str, Any]] = {name: {} for name in table}
    for seed in (int(s) for s in args.seeds.split(",")):
        config = EvaluateConfig.from_dict({**raw, "seed": seed})
        ev = Evaluator(config, base=models["base"], upsampler=models["upsampler"], clip=models["clip"], distilled=distilled, distilled_upsampler=distilled_up, log=lambda _: None)  # fmt: skip
        n = min(args.num_images, len(ev.captions))
        for name, recipe in table.items():
            gen = ev._generation(
                guidance_scale=args.guidance_scale, upsample=True, **recipe.generation_kwargs()
            )
            start = time.perf_counter()
            cascade = ev.distilled if name == "distilled" else None
            point = ev.run_point("sampler", f"recipe:{name}", gen, n, cascade=cascade)
            m = point.metrics
            results[name][str(seed)] = {**m, "wall_s": time.perf_counter() - start}
            lo, hi = m.get("caption_accuracy_ci95", (float("nan"), float("nan")))
            attrs = m.get("attributes_single", {})
            print(
                f"seed {seed}  {name:28s} caption accuracy {m['caption_accuracy']:.3f} "
                f"({lo:.2f}-{hi:.2f})  single {m.get('caption_accuracy_single', float('nan')):.3f}  "
                + " ".join(f"{k} {v:.2f}" for k, v in attrs.items())
                + f"  fd_clip {m.get('fd_clip', float('nan')):.3f}  "
                f"{m.get('seconds_per_image', float('nan')):.2f} s/image",
                flush=True,
            )
    print(f"\n| recipe | {' | '.join(f'seed {s}' for s in args.seeds.split(','))} | fd_clip |")
    print("|---" * (2 + len(args.seeds.split(","))) + "|")
    for name, by_seed in results.items():
        accs = " | ".join(f"{r['caption_accuracy']:.3f}" for r in by_seed.values())
        fds = ", ".join(f"{r.get('fd_clip', float('nan')):.2f}" for r in by_seed.values())
        print(f"| {name} | {accs} | {fds} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
