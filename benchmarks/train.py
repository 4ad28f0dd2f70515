"""Training throughput: images/s of one training step (tiny and filtered base shapes) next to
the datamodule's samples/s alone, which must be >= 3x what the tiny step consumes.

    python benchmarks/train.py [--shards data/shards] [--steps 3] [--skip-filtered]

Uses the prepare stage's shards (run it first) and the tiny preset's training config
(conf/train/base.yaml). The filtered (385M) step is timed at batch size 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from typing import Any

import torch

from glide.config import compose, find_conf_dir
from glide.models import load_preset
from glide.training import (
    ShardStream,
    TrainConfig,
    build_module,
    model_options,
    train_config_from_dict,
)
from glide.training.datamodule import list_shards
from glide.training.run import set_threads


def step_rate(cfg: TrainConfig, preset: dict[str, Any], batch: dict[str, Any], steps: int) -> float:
    """Images/s of forward + backward + AdamW step (first step excluded: warm-up)."""
    module = build_module(cfg, model_options(cfg, preset)).train()
    opt = torch.optim.AdamW(module.model.parameters(), lr=1e-4)
    n = batch["image"].shape[0]
    for i in range(steps + 1):
        if i == 1:
            start = time.perf_counter()
        loss = module.losses(module.model, batch)["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * n / (time.perf_counter() - start)


def loader_rate(cfg: TrainConfig, seconds: float = 10.0) -> float:
    """Samples/s of the train DataLoader alone (its configured workers), after the first batch."""
    from torch.utils.data import DataLoader

    stream = ShardStream(list_shards(cfg.data.shards_dir, "train"), cfg.data, seed=cfg.seed)
    workers = cfg.data.num_workers
    loader = DataLoader(
        stream, batch_size=None, num_workers=workers, prefetch_factor=4 if workers else None
    )
    it = iter(loader)
    next(it)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        n += next(it)["image"].shape[0]
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shards", default="data/shards")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--skip-filtered", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = train_config_from_dict(compose("config", [])["train"])
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, shards_dir=args.shards))
    threads = set_threads(cfg)
    batch = next(iter(ShardStream(list_shards(args.shards, "train"), cfg.data)))
    print(
        f"{os.cpu_count()} CPU cores, {threads} torch threads, {cfg.data.num_workers} data workers"
    )

    tiny = step_rate(cfg, load_preset("tiny", find_conf_dir() / "model"), batch, args.steps)
    print(f"tiny base step      : {tiny:8.2f} images/s (batch {cfg.data.batch_size}, 64x64)")
    if not args.skip_filtered:
        one = {k: v[:1] for k, v in batch.items() if k in ("image", "tokens", "mask")}
        filtered = load_preset("filtered", find_conf_dir() / "model")
        cfg_f = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, text_ctx=128))
        tok = torch.zeros(1, 128, dtype=torch.long)
        mask = torch.zeros(1, 128, dtype=torch.bool)
        one.update(tokens=tok, mask=mask)
        rate = step_rate(cfg_f, filtered, one, max(1, args.steps - 2))
        print(f"filtered base step  : {rate:8.3f} images/s (batch 1, 64x64, 385M parameters)")
    data = loader_rate(cfg)
    print(f"datamodule alone    : {data:8.2f} samples/s ({data / tiny:.1f}x the tiny step's need)")


if __name__ == "__main__":
    main()
