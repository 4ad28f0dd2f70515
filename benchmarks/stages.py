"""Where a training step's time goes, for each of the four default training stages, and what the
step-time levers buy, measured side by side in one run.

    python benchmarks/stages.py [--stages base,upsampler,inpaint,clip] [--steps 6]
                                [--threads 1,2] [--compile] [--crops 64,48,32]
                                [--fit-steps 30] [--workers 0,1] [--processes 1,2]
                                [--json out.json]

Parts (each prints a table; ratios are against the row marked 1.00x):

- **profile**: one optimizer step of each stage at its configured batch, split into data
  (the loader's decode of one batch in this process), forward (loss), backward, optimizer
  (AdamW + LR schedule) and EMA update; ms per step and images/s;
- **threads**: the same step with each ``--threads`` count;
- **compile** (``--compile``): ``torch.compile`` of the network: the cold build's seconds, the
  steady step, and after how many steps the build pays back;
- **crops**: the upsampler step at each ``--crops`` size (its training crop of the 128 px image);
- **fit** (``--fit-steps``): the real Lightning loop (ShardDataModule, its loader workers, EMA,
  no logger) for ``--fit-steps`` steps with each ``--workers`` count, timed after the first 5
  steps: what a stage's step really costs with the loader beside it; ``--processes 1,2`` adds
  DDP rows (``ddp_spawn`` on gloo, one thread per process, the same global batch).

Uses the prepare stage's shards (``dvc repro prepare`` first) and conf/train/<stage>.yaml.
The CPU is named in the first line; absolute ms vary with the machine, ratios travel.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch

from glide.config import compose, find_conf_dir
from glide.models import load_preset
from glide.precision import detect_hardware
from glide.training import (
    ShardStream,
    TrainConfig,
    build_module,
    model_options,
    train_config_from_dict,
)
from glide.training.datamodule import ShardDataModule, list_shards
from glide.training.modules import GlideModule

STAGES = ("base", "upsampler", "inpaint", "clip")
PHASES = ("data", "forward", "backward", "optimizer", "ema")


def stage_config(stage: str, shards: str, **data: Any) -> TrainConfig:
    """conf/train/<stage>.yaml composed, reading ``shards``; ``data`` overrides data keys."""
    cfg = train_config_from_dict(compose("config", [f"train={stage}"])["train"])
    return dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, shards_dir=shards, **data), progress=False
    )


def _module(cfg: TrainConfig) -> GlideModule:
    preset = load_preset(cfg.preset, find_conf_dir() / "model")
    module = build_module(cfg, model_options(cfg, preset)).train()
    if hasattr(module, "setup"):
        module.setup("fit")
    return module


def _loss(module: GlideModule, model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    if module.kind == "clip":
        x0 = batch["image"]
        t = torch.randint(0, module.diffusion.num_timesteps, (x0.shape[0],))
        img, txt = module.features(model, batch, t)
        return module._loss_fn(img, txt, module.log_logit_scale.exp().clamp(max=100.0))
    return module.losses(model, batch)["objective"]


def profile_step(
    cfg: TrainConfig, *, steps: int, model_fn: Callable[[torch.nn.Module], Any] | None = None
) -> dict[str, Any]:
    """Median ms of each phase of ``steps`` optimizer steps (one warm-up step excluded)."""
    torch.manual_seed(0)
    module = _module(cfg)
    model = model_fn(module.model) if model_fn else module.model
    opt = module.configure_optimizers()
    optimizer, sched = opt["optimizer"], opt["lr_scheduler"]["scheduler"]
    stream = iter(ShardStream(list_shards(cfg.data.shards_dir, "train"), cfg.data, seed=0))
    times: dict[str, list[float]] = {p: [] for p in PHASES}
    first = 0.0
    for i in range(steps + 1):
        marks = [time.perf_counter()]
        batch = next(stream)
        marks.append(time.perf_counter())
        loss = _loss(module, model, batch)
        marks.append(time.perf_counter())
        loss.backward()
        marks.append(time.perf_counter())
        optimizer.step()
        sched.step()
        optimizer.zero_grad(set_to_none=True)
        marks.append(time.perf_counter())
        module.ema.update(module.model)
        marks.append(time.perf_counter())
        if i == 0:
            first = marks[-1] - marks[0]
            continue
        for phase, a, b in zip(PHASES, marks, marks[1:], strict=False):
            times[phase].append(1e3 * (b - a))
    out = {p: statistics.median(v) for p, v in times.items()}
    out["step"] = sum(out.values())
    out["compute"] = out["step"] - out["data"]
    out["first_s"] = first
    out["images_per_s"] = 1e3 * cfg.data.batch_size / out["compute"]
    return out


class _StepClock(pl.Callback):
    """Rank 0's wall time between the end of step ``skip`` and the end of the last step, written
    to ``out`` (a spawned DDP rank cannot hand it back otherwise); ``threads`` per process."""

    def __init__(self, skip: int, out: str, threads: int) -> None:
        self.skip, self.out, self.threads = skip, out, threads
        self.t0, self.t1, self.steps = 0.0, 0.0, 0

    def setup(self, trainer: pl.Trainer, *args: Any) -> None:
        torch.set_num_threads(self.threads)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.skip:
            self.t0 = time.perf_counter()
        self.t1, self.steps = time.perf_counter(), trainer.global_step - self.skip

    def on_train_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_rank == 0:
            with open(self.out, "w") as f:
                json.dump({"ms": 1e3 * (self.t1 - self.t0) / max(1, self.steps)}, f)


def fit_rate(cfg: TrainConfig, *, steps: int, skip: int = 5, processes: int = 1) -> float:
    """ms per step of the real Lightning loop (loader workers included), after ``skip`` steps.

    ``processes`` > 1: that many DDP ranks (``ddp_spawn``, gloo) of one thread each, each with
    ``batch_size / processes`` examples, so the global batch is the same."""
    cores = os.cpu_count() or 1
    data = cfg.data
    if processes > 1:
        data = dataclasses.replace(data, batch_size=max(1, data.batch_size // processes))
    cfg = dataclasses.replace(cfg, max_steps=steps + skip, data=data)
    module = _module(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "clock.json")
        clock = _StepClock(skip, out, threads=max(1, cores // processes))
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=processes,
            strategy="ddp_spawn" if processes > 1 else "auto",
            max_steps=cfg.max_steps,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[clock],
            limit_val_batches=0,
            num_sanity_val_steps=0,
            use_distributed_sampler=False,
            gradient_clip_val=cfg.optim.grad_clip or None,
        )
        trainer.fit(module, datamodule=ShardDataModule(cfg.data, seed=cfg.seed))
        with open(out) as f:
            return float(json.load(f)["ms"])


def _table(title: str, rows: list[tuple[str, float, str]], ref: float) -> None:
    print(f"\n{title}")
    for label, ms, note in rows:
        print(f"  {label:<34} {ms:9.1f} ms  {ref / ms:5.2f}x  {note}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shards", default="data/shards")
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--steps", type=int, default=6, help="timed steps per measurement")
    p.add_argument("--threads", default="", help="comma-separated thread counts to compare")
    p.add_argument("--compile", action="store_true", help="time torch.compile of each network")
    p.add_argument(
        "--channels-last", action="store_true", help="time channels_last weights and activations"
    )
    p.add_argument("--crops", default="", help="upsampler crop sizes to compare, e.g. 64,48,32")
    p.add_argument("--fit-steps", type=int, default=0, help="time the Lightning loop too")
    p.add_argument("--workers", default="0,1", help="loader workers for the fit rows")
    p.add_argument(
        "--processes", default="1", help="fit rows with these DDP process counts (1 thread each)"
    )
    p.add_argument("--json", default="", help="write every measurement here")
    args = p.parse_args()

    hw = detect_hardware()
    default_threads = os.cpu_count() or 1
    torch.set_num_threads(default_threads)
    print(f"CPU: {hw.cpu_name or 'unknown'}; {hw.describe()}; torch {torch.__version__}")
    results: dict[str, Any] = {"machine": hw.as_dict(), "stages": {}}
    for stage in args.stages.split(","):
        cfg = stage_config(stage, args.shards)
        res: dict[str, Any] = {"batch": cfg.data.batch_size, "max_steps": cfg.max_steps}
        prof = profile_step(cfg, steps=args.steps)
        res["profile"] = prof
        size = cfg.data.crop_size or cfg.data.image_size
        print(
            f"\n== {stage}: batch {cfg.data.batch_size} at {size}px, {default_threads} threads: "
            f"{prof['step']:.0f} ms/step ({prof['images_per_s']:.1f} images/s computing); "
            f"{cfg.max_steps} steps ~ {cfg.max_steps * prof['step'] / 1e3:.0f} s"
        )
        for phase in PHASES:
            share = 100 * prof[phase] / prof["step"]
            print(f"  {phase:<10} {prof[phase]:8.1f} ms  {share:5.1f}%")
        if args.threads:
            rows = []
            for n in (int(x) for x in args.threads.split(",")):
                torch.set_num_threads(n)
                r = profile_step(cfg, steps=args.steps)
                res[f"threads_{n}"] = r
                rows.append((f"{n} threads (compute only)", r["compute"], ""))
            torch.set_num_threads(default_threads)
            _table(f"{stage}: threads", rows, rows[0][1])
        if args.compile:
            eager = profile_step(cfg, steps=args.steps)
            comp = profile_step(cfg, steps=args.steps, model_fn=torch.compile)
            gain = eager["compute"] - comp["compute"]
            payback = comp["first_s"] * 1e3 / gain if gain > 0 else float("inf")
            res["compile"] = {"eager": eager, "compiled": comp, "payback_steps": payback}
            _table(
                f"{stage}: torch.compile",
                [
                    ("eager", eager["compute"], ""),
                    (
                        "compiled",
                        comp["compute"],
                        f"cold build {comp['first_s']:.0f} s, pays back after {payback:.0f} steps",
                    ),
                ],
                eager["compute"],
            )
        if args.channels_last:
            eager = profile_step(cfg, steps=args.steps)
            cl = profile_step(
                cfg, steps=args.steps, model_fn=lambda m: m.to(memory_format=torch.channels_last)
            )
            res["channels_last"] = {"eager": eager, "channels_last": cl}
            _table(
                f"{stage}: memory format",
                [("contiguous (NCHW)", eager["compute"], ""), ("channels_last", cl["compute"], "")],
                eager["compute"],
            )
        if args.crops and cfg.data.crop_size:
            rows = []
            for crop in (int(x) for x in args.crops.split(",")):
                r = profile_step(stage_config(stage, args.shards, crop_size=crop), steps=args.steps)
                res[f"crop_{crop}"] = r
                rows.append((f"crop {crop}px", r["compute"], ""))
            _table(f"{stage}: upsampler crop", rows, rows[0][1])
        if args.fit_steps:
            rows = []
            for procs in (int(x) for x in args.processes.split(",")):
                for w in (int(x) for x in args.workers.split(",")):
                    ms = fit_rate(
                        stage_config(stage, args.shards, num_workers=w),
                        steps=args.fit_steps,
                        processes=procs,
                    )
                    label = f"{procs} process(es), {w} loader workers"
                    res[f"fit_p{procs}_w{w}"] = ms
                    rows.append((f"Lightning loop, {label}", ms, ""))
            _table(f"{stage}: real loop ({default_threads} cores)", rows, rows[0][1])
        results["stages"][stage] = res
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
