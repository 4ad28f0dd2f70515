"""Images per second of bulk sampling (``glide sample --prompts-file``) at batch 1 and batch 8.

Side by side in one process, alternating the batch sizes ``--repeats`` times (the machine is
noisy): the same captions through :func:`glide.sampling.bulk.sample_captions`, the code path of
``glide sample --prompts-file``, writing PNGs to a temporary folder. Two model sets:

- ``tiny``: the trained default models in ``--models`` (``models/base``, ``models/upsampler``)
  when they exist, else the tiny preset with random weights; ``--captions`` built-in captions,
  the full cascade with the ``balanced`` recipe;
- ``filtered``: the released architecture with random weights, ``--steps-only N`` sampler steps
  per stage (times are for N steps, not extrapolated: the batch ratio is what this measures).

Each row also reports how far batch 8's images are from batch 1's (mean absolute difference in
levels of 255): the same per-image noise, so only batched-kernel round-off separates them.

``--processes`` adds the other lever on a CPU, timed as a user runs it (wall clock of the
``glide sample`` command, model loading included): one process using every core against one
shard process per core (``--num-shards N``, one thread each), both at batch 8, on the trained
tiny models, and whether the two wrote the same bytes.

    python benchmarks/bulk_sample.py                          # tiny + filtered --steps-only 2
    python benchmarks/bulk_sample.py --sets tiny --captions 32 --repeats 3
    python benchmarks/bulk_sample.py --sets filtered --steps-only 1 --json bulk.json
    python benchmarks/bulk_sample.py --sets tiny --processes 2      # + shard processes vs threads
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from glide.data.shapes import make_example
from glide.precision import detect_hardware
from glide.sampling import Cascade, GenerationConfig, get_recipe, load_model_source
from glide.sampling.bulk import Caption, sample_captions

HERE = Path(__file__).resolve().parent


@functools.cache
def _sample_benchmark() -> Any:
    """benchmarks/sample.py (its random-weight model builder), loaded by path once."""
    spec = importlib.util.spec_from_file_location("benchmark_sample", HERE / "sample.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_cascade(models: Path) -> tuple[Cascade, str]:
    base, up = models / "base", models / "upsampler"
    if (base / "model.pt").is_file() and (up / "model.pt").is_file():
        return Cascade(
            load_model_source(str(base)), upsampler=load_model_source(str(up))
        ), "trained"
    b, u = _sample_benchmark().build_models("tiny", None)
    return Cascade(b, upsampler=u), "random weights"


def filtered_cascade() -> Cascade:
    b, u = _sample_benchmark().build_models("filtered", None)
    return Cascade(b, upsampler=u)


def generation(recipe: str, steps: int | None, batch: int) -> GenerationConfig:
    config = GenerationConfig(guidance_scale=3.0, batch_size=batch, seed=0)
    config = dataclasses.replace(config, **get_recipe(recipe).generation_kwargs())
    if steps is not None:
        shortened = _sample_benchmark().shortened
        config = dataclasses.replace(
            config,
            sampler=shortened(config.sampler, steps),
            upsample_sampler=shortened(config.upsample_sampler, steps),
        )
    return config


def timed_run(
    cascade: Cascade, config: GenerationConfig, captions: list[str], out: Path
) -> tuple[float, dict[str, np.ndarray]]:
    """Seconds to draw one image per caption into ``out``, and the images drawn."""
    items = [
        Caption(text=t, number=i, out=out / f"c{i:04d}.png", metadata={"settings": "bench"})
        for i, t in enumerate(captions)
    ]
    start = time.perf_counter()
    sample_captions(cascade, config, items, num_images=1, overwrite=True, log=lambda _: None)
    seconds = time.perf_counter() - start
    images = {p.name: np.asarray(Image.open(p)) for p in sorted(out.glob("c*_000.png"))}
    return seconds, images


def measure(
    name: str,
    cascade: Cascade,
    captions: list[str],
    *,
    recipe: str,
    steps: int | None,
    repeats: int,
) -> dict[str, Any]:
    """Batch 1 and batch 8 alternated ``repeats`` times; the best time of each."""
    best: dict[int, float] = {}
    images: dict[int, dict[str, np.ndarray]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            for batch in (1, 8):
                out = Path(tmp) / f"b{batch}"
                seconds, drawn = timed_run(cascade, generation(recipe, steps, batch), captions, out)
                best[batch] = min(best.get(batch, float("inf")), seconds)
                images[batch] = drawn
                print(
                    f"  {name} repeat {r + 1}: batch {batch}: {seconds:.1f} s, "
                    f"{len(captions) / seconds:.3f} images/s",
                    flush=True,
                )
    diffs = [
        float(np.abs(images[8][k].astype(int) - images[1][k].astype(int)).mean()) for k in images[1]
    ]
    return {
        "set": name,
        "recipe": recipe,
        "steps_only": steps,
        "images": len(captions),
        "batch1_images_per_s": len(captions) / best[1],
        "batch8_images_per_s": len(captions) / best[8],
        "ratio": best[1] / best[8],
        "batch8_vs_batch1_mean_abs_diff": max(diffs),
    }


def process_row(models: Path, captions: list[str], processes: int) -> dict[str, Any]:
    """``glide sample --prompts-file`` in one process (every core) against ``processes`` shard
    processes of one thread each, at batch 8: wall seconds of the commands, outputs compared."""
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "captions.txt"
        prompts.write_text("\n".join(captions) + "\n")
        command = [sys.executable, "-m", "glide.cli", "sample", "--prompts-file", str(prompts)]
        common = ["-n", "1", "--batch-size", "8", "--no-progress"]
        common += ["--base", str(models / "base"), "--upsampler", str(models / "upsampler")]
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
        start = time.perf_counter()
        subprocess.run([*command, "--out", f"{tmp}/one", *common], env=env, check=True,
                       capture_output=True)  # fmt: skip
        one = time.perf_counter() - start
        start = time.perf_counter()
        shards = [
            subprocess.Popen(
                [
                    *command,
                    "--out",
                    f"{tmp}/many",
                    *common,
                    "--num-shards",
                    str(processes),
                    "--shard-index",
                    str(i),
                ],
                env={**env, "OMP_NUM_THREADS": "1"},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for i in range(processes)
        ]
        assert all(p.wait() == 0 for p in shards)
        many = time.perf_counter() - start
        same = all(
            (Path(tmp) / "many" / p.name).read_bytes() == p.read_bytes()
            for p in (Path(tmp) / "one").glob("*.png")
        )
    print(
        f"  glide sample, {len(captions)} captions: 1 process {one:.1f} s, "
        f"{processes} shard processes x 1 thread {many:.1f} s ({one / many:.2f}x), "
        f"same bytes: {same}",
        flush=True,
    )
    return {
        "set": f"tiny, glide sample: 1 process vs {processes} shards x 1 thread",
        "images": len(captions),
        "one_process_s": one,
        "shard_processes_s": many,
        "ratio": one / many,
        "identical_outputs": same,
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sets", default="tiny,filtered", help="tiny,filtered")
    p.add_argument("--models", default="models", help="trained default models (tiny set)")
    p.add_argument("--captions", type=int, default=16, help="captions per run (tiny set)")
    p.add_argument("--filtered-captions", type=int, default=8, help="captions (filtered set)")
    p.add_argument("--recipe", default="balanced")
    p.add_argument("--steps-only", type=int, default=2, help="steps per stage (filtered set)")
    p.add_argument("--tiny-steps", type=int, default=None, help="steps per stage (tiny set)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument(
        "--processes", type=int, default=0, help="also time N shard processes (trained tiny)"
    )
    p.add_argument("--json", default=None, metavar="PATH")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sets = [s for s in args.sets.split(",") if s]
    print(
        f"bulk sampling, {time.strftime('%Y-%m-%d')}, {detect_hardware().cpu_name}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    rows = []
    for name in sets:
        n = args.captions if name == "tiny" else args.filtered_captions
        captions = [make_example(11, i, size=64)[1] for i in range(n)]
        if name == "tiny":
            cascade, weights = tiny_cascade(Path(args.models))
            print(f"tiny ({weights}), recipe {args.recipe}, {n} captions")
            rows.append(
                measure(
                    name,
                    cascade,
                    captions,
                    recipe=args.recipe,
                    steps=args.tiny_steps,
                    repeats=args.repeats,
                )
            )
        elif name == "filtered":
            print(f"filtered (random weights), {args.steps_only} steps per stage, {n} captions")
            rows.append(
                measure(
                    name,
                    filtered_cascade(),
                    captions,
                    recipe=args.recipe,
                    steps=args.steps_only,
                    repeats=args.repeats,
                )
            )
        else:
            raise SystemExit(f"unknown set {name!r} (tiny, filtered)")
    if args.processes:
        if not (Path(args.models) / "base" / "model.pt").is_file():
            raise SystemExit(f"--processes needs the trained models in {args.models}")
        captions = [make_example(11, i, size=64)[1] for i in range(args.captions)]
        extra = process_row(Path(args.models), captions, args.processes)
    print("\n| set | batch 1 images/s | batch 8 images/s | batch 8 / batch 1 | max mean |diff| |")
    print("|---|---|---|---|---|")
    for r in rows:
        label = r["set"] + (f" (--steps-only {r['steps_only']})" if r["steps_only"] else "")
        print(
            f"| {label} | {r['batch1_images_per_s']:.3f} | {r['batch8_images_per_s']:.3f} | "
            f"{r['ratio']:.2f}x | {r['batch8_vs_batch1_mean_abs_diff']:.4f} |"
        )
    if args.processes:
        print(
            f"\n| {extra['set']} | 1 process {extra['one_process_s']:.1f} s | "
            f"shards {extra['shard_processes_s']:.1f} s | {extra['ratio']:.2f}x | "
            f"identical: {extra['identical_outputs']} |"
        )
        rows.append(extra)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
