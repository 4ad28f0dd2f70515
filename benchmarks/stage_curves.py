"""How many steps each training stage needs: its checkpoints along one run, scored by the measure
that stage serves in the evaluate stage. The learning curves of ``benchmarks/learning.py`` for
the base, and their equivalents for the upsampler, inpainting and the noised CLIP.

    python benchmarks/stage_curves.py base,upsampler,inpaint,clip [--models models]
        [--num-images 64] [--seeds 0] [--json reports/stage_curves.json]

Train with every checkpoint kept first (the default run keeps two), e.g.
``dvc repro`` after ``train.checkpoint_every=100 train.keep_checkpoints=-1`` in conf/train, or
``python pipelines/train.py train=upsampler train.checkpoint_every=100 train.keep_checkpoints=-1``.
Each ``models/<stage>/checkpoints/step-N.ckpt`` is exported to a temporary model and scored:

- **base**: classifier-free guidance at scale 3 (``dpm++-15``): single-object exact match and
  per-attribute accuracy (the evaluate stage's ``cfg`` sweep);
- **upsampler**: the trained base (``models/base``) through the upsampler checkpoint with
  ``glide sample``'s ``balanced`` recipe (the evaluate stage's ``recipe:balanced`` row):
  accuracy of the 128 px result, background above all;
- **inpaint**: the evaluate stage's inpainting task (``inpaint_accuracy``, ``inpaint_preserved``);
- **clip**: noised-CLIP top-1 retrieval among 32 captions at t=0 and t=500, and CLIP guidance at
  scale 3 against the unguided ``ddim-15`` baseline.

A step's cost is ``benchmarks/stages.py``'s to measure; this one counts steps only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from glide.config import compose, find_conf_dir
from glide.evaluation import EvaluateConfig, Evaluator
from glide.models import load_preset
from glide.sampling import get_recipe, load_model_source, parse_sampler
from glide.training import TrainConfig, build_module, model_options, train_config_from_dict
from glide.training.run import _export


def checkpoints(model_dir: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``step-N.ckpt``, by step."""
    found = []
    for path in (model_dir / "checkpoints").glob("step-*.ckpt"):
        match = re.fullmatch(r"step-(\d+)\.ckpt", path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def stage_config(stage: str) -> TrainConfig:
    """conf/train/<stage>.yaml composed."""
    return train_config_from_dict(compose("config", [f"train={stage}"])["train"])


def export_checkpoint(cfg: TrainConfig, ckpt: Path, out_dir: Path) -> Path:
    """The EMA weights of a Lightning checkpoint of ``cfg``'s run as a glide export in
    ``out_dir`` (what the stage would have exported, had it stopped at that step)."""
    cfg = dataclasses.replace(cfg, out_dir=str(out_dir))
    preset = load_preset(cfg.preset, find_conf_dir() / "model")
    module = build_module(cfg, model_options(cfg, preset))
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    module.load_state_dict(state["state_dict"])
    out_dir.mkdir(parents=True, exist_ok=True)
    return _export(cfg, module, step=int(state["global_step"]), extra={"source": str(ckpt)})


def score(stage: str, model: Path, raw: dict[str, Any], seed: int, models: Path) -> dict:
    """The stage's measure for one exported model."""
    # cache_dir off: each checkpoint is scored on fresh images, timed as it runs
    config = EvaluateConfig.from_dict({**raw, "seed": seed, "cache_dir": None})
    load = {"tokenizer_path": raw.get("tokenizer_path")}
    base = load_model_source(model if stage == "base" else models / "base", **load)
    kwargs: dict[str, Any] = {"log": lambda _: None}
    if stage == "upsampler":
        kwargs["upsampler"] = load_model_source(model, **load)
    if stage == "inpaint":
        kwargs["inpaint"] = load_model_source(model, **load)
    if stage == "clip":
        kwargs["clip"] = load_model_source(model, **load)
    ev = Evaluator(config, base=base, **kwargs)
    n = len(ev.captions)
    if stage == "base":
        gen = ev._generation(guidance_scale=3.0, sampler=parse_sampler(raw["sweep"]["sampler"]))
        return _point(ev.run_point("cfg", "3", gen, n).metrics)
    if stage == "upsampler":
        recipe = get_recipe("balanced")
        gen = ev._generation(guidance_scale=3.0, upsample=True, **recipe.generation_kwargs())
        return _point(ev.run_point("sampler", "recipe:balanced", gen, n).metrics)
    if stage == "inpaint":
        point = ev.run_inpaint()
        assert point is not None, ev.unavailable
        m = point.metrics
        return {"inpaint_accuracy": m["inpaint_accuracy"], "preserved": m["inpaint_preserved"]}
    out = {k: v for k, v in ev.run_clip_retrieval().items() if k.startswith("retrieval_top1_t")}
    out = {k: v for k, v in out.items() if not k.endswith("ci95")}
    sampler = parse_sampler(raw["sweep"]["clip_sampler"])
    for scale in (0.0, 3.0):
        gen = ev._generation(guidance_scale=1.0, clip_guidance_scale=scale, sampler=sampler)
        out[f"clip{scale:g}_exact"] = _point(ev.run_point("clip", f"{scale:g}", gen, n).metrics)[
            "exact"
        ]
    return out


def _point(m: dict[str, Any]) -> dict[str, float]:
    attrs = m.get("attributes_single", {})
    return {
        "exact": m.get("caption_accuracy_single", float("nan")),
        **{k: v for k, v in attrs.items() if k in ("color", "shape", "background", "size")},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("stages", help="comma-separated: base,upsampler,inpaint,clip")
    p.add_argument("--models", default="models")
    p.add_argument("--num-images", type=int, default=64)
    p.add_argument("--seeds", default="0")
    p.add_argument("--every", type=int, default=1, help="score every k-th checkpoint")
    p.add_argument("--json", default="")
    args = p.parse_args()
    torch.manual_seed(0)
    raw = dict(compose("config", [])["evaluate"])
    raw.update(num_captions=args.num_images, min_single_object=args.num_images)
    raw["inpaint_eval"] = {**raw["inpaint_eval"], "num_images": args.num_images}
    models = Path(args.models)
    results: dict[str, Any] = {}
    for stage in args.stages.split(","):
        cfg = stage_config(stage)
        found = checkpoints(models / stage)[:: args.every]
        if not found:
            raise SystemExit(
                f"no checkpoints under {models / stage}/checkpoints: train with "
                "train.checkpoint_every=100 train.keep_checkpoints=-1 first"
            )
        print(f"\n== {stage} ({cfg.max_steps} steps configured, {len(found)} checkpoints)")
        rows = {}
        with tempfile.TemporaryDirectory() as tmp:
            for step, ckpt in found:
                export_checkpoint(cfg, ckpt, Path(tmp) / f"step-{step}")
                for seed in (int(s) for s in args.seeds.split(",")):
                    m = score(stage, Path(tmp) / f"step-{step}", raw, seed, models)
                    rows[f"{step}/{seed}"] = m
                    cells = "  ".join(f"{k} {v:.3f}" for k, v in m.items())
                    print(f"  step {step:5d}  seed {seed}  {cells}", flush=True)
        results[stage] = rows
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
