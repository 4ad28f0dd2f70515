"""Speed of GLIDE's U-Nets under different execution settings, as ratios to eager float32.

For each model (the ``tiny`` and ``filtered`` presets' base and upsampler) it times a training
step (forward + backward) and a sampling step (forward, no grad) under:

- ``fp32``: eager float32 with the release's einsum attention (the baseline);
- ``bf16``: ``torch.autocast`` to bfloat16 (what ``precision: bf16`` trains and samples with);
- ``bf16w``: the weights and inputs themselves in bfloat16 (no per-call casts; GroupNorm32 /
  LayerNorm32 still normalise in float32), to separate autocast's cast overhead from bf16 compute;
- ``sdpa``: ``F.scaled_dot_product_attention``;
- ``channels_last``: NHWC memory format for weights and inputs;
- ``compile``: ``torch.compile`` (with sdpa). Inductor's cold build of the tiny base's training
  and sampling graphs took ~390 s on a 2-core CPU (a warm ``TORCHINDUCTOR_CACHE_DIR``: seconds);
  the tiny upsampler's took over 8 minutes; large presets only with ``--compile-big``;
- combinations joined by ``+``, e.g. ``bf16+channels_last``;

and reports the achieved GFLOP/s, counting FLOPs with ``torch.utils.flop_counter``, plus, for every
mode, the RMS error of its sampling-step output against float32 relative to the output's standard
deviation (bf16 is accepted within ``BF16_TOLERANCE``; float32 modes should be ~1e-6), and the
untimed first calls ("first s": warm-up, and for ``compile`` the build).

    python benchmarks/model.py                      # every mode (~20+ minutes on 2 cores)
    python benchmarks/model.py --presets filtered --compile-big
    python benchmarks/model.py --presets tiny --modes fp32,sdpa --reps 5
    python benchmarks/model.py --presets tiny --parts base --batch 32 --sizes 64,32   # training's

The first lines name the CPU kind and what ``precision: auto`` (:mod:`glide.precision`) picks
there for the tiny base, with the timings behind it (measured, or read from the cache; where bf16
is emulated, why it was not timed); each model's table ends with the decision ``auto`` would make
from that table's own float32 and bf16 sampling-step timings.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from glide.models import from_openai_options, load_preset, set_attention_impl
from glide.models.nn import BF16_TOLERANCE, perturb_
from glide.precision import decide_precision, detect_hardware, resolve_precision

MODES = ("fp32", "bf16", "bf16w", "sdpa", "channels_last", "compile")
DEFAULT_MODES = ("fp32", "bf16", "sdpa", "channels_last", "bf16+channels_last", "compile")


@dataclass(frozen=True)
class Case:
    name: str
    options: dict
    batch: int
    size: int  # the resolution we run at (convolutional, so it may be below the trained size)


def cases(
    presets: list[str],
    big_upsample_size: int,
    *,
    parts: tuple[str, ...] = ("base", "upsample"),
    batch: int | None = None,
    sizes: list[int] | None = None,
) -> list[Case]:
    """Per preset and part: the default batch and size (base: 8 tiny / 2 large at its image size;
    upsampler: 2 tiny at 256 / 1 large at ``big_upsample_size``), or ``batch`` x each of ``sizes``."""
    out = []
    for preset in presets:
        p = load_preset(preset)
        big = preset != "tiny"
        defaults = {
            "base": (2 if big else 8, p["base"]["image_size"]),
            "upsample": (
                1 if big else 2,
                big_upsample_size if big else p["upsample"]["image_size"],
            ),
        }
        for part in parts:
            b, size = defaults[part]
            for s in sizes or [size]:
                suffix = f"@{s}" if sizes else ""
                out.append(Case(f"{preset}/{part}{suffix}", p[part], batch or b, s))
    return out


def make_inputs(case: Case, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    ctx, b, s = case.options["text_ctx"], case.batch, case.size
    mask = torch.ones(b, ctx, dtype=torch.bool)
    mask[:, ctx // 2 :] = False
    kw = {
        "x": torch.randn(b, 3, s, s),
        "timesteps": torch.randint(0, 1000, (b,)),
        "tokens": torch.randint(0, case.options["n_vocab"], (b, ctx)),
        "mask": mask,
    }
    if case.options.get("super_res"):
        kw["low_res"] = torch.randn(b, 3, s // 4, s // 4)
    return kw


def prepare(
    case: Case, mode: str
) -> tuple[Callable[..., torch.Tensor], dict, Callable[[], AbstractContextManager]]:
    parts = set(mode.split("+"))
    if not parts <= set(MODES):
        raise ValueError(f"unknown mode {mode!r}; modes: {', '.join(MODES)} (join with +)")
    torch.manual_seed(0)
    model = perturb_(from_openai_options(case.options))  # zero-init output layers: give signal
    torch.manual_seed(1)
    inputs = make_inputs(case, model)
    ctx: Callable[[], AbstractContextManager] = nullcontext
    if "bf16" in parts:
        ctx = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    if "bf16w" in parts:
        model = model.to(torch.bfloat16)
        inputs = {
            k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in inputs.items()
        }
    if parts & {"sdpa", "compile"}:
        set_attention_impl(model, "sdpa")
    if "channels_last" in parts:
        model = model.to(memory_format=torch.channels_last)
        inputs["x"] = inputs["x"].contiguous(memory_format=torch.channels_last)
    fn: Callable[..., torch.Tensor] = model
    if "compile" in parts:
        fn = torch.compile(model)
    return fn, inputs, ctx


def output_error(
    fn: Callable[..., torch.Tensor], inputs: dict, ctx, reference: torch.Tensor
) -> float:
    """RMS difference to the float32 output, relative to its standard deviation."""
    with torch.no_grad(), ctx():
        out = fn(**inputs).float()
    return float((out - reference).pow(2).mean().sqrt() / reference.std())


def cpu_kind() -> str:
    """Which kind of CPU was measured: its name and what decides the precision."""
    hw = detect_hardware()
    return f"{hw.cpu_name or 'unknown CPU'}, {hw.describe()}"


def train_step(fn: Callable[..., torch.Tensor], inputs: dict) -> None:
    fn(**inputs).float().square().mean().backward()


def sample_step(fn: Callable[..., torch.Tensor], inputs: dict) -> None:
    with torch.no_grad():
        fn(**inputs)


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def best_time(
    step: Callable[[], None], reps: int, clock: Callable[[], float] = time.perf_counter
) -> tuple[float, float]:
    """(fastest of ``reps`` timed calls, the untimed first call: warm-up and compilation)."""
    t0 = clock()
    step()
    first = clock() - t0
    times = []
    for _ in range(reps):
        t0 = clock()
        step()
        times.append(clock() - t0)
    return min(times), first


def count_flops(case: Case) -> tuple[int, int]:
    fn, inputs, _ = prepare(case, "fp32")
    with FlopCounterMode(display=False) as counter:
        sample_step(fn, inputs)
    fwd = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        train_step(fn, inputs)
    return counter.get_total_flops(), fwd


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", default="tiny,filtered")
    parser.add_argument(
        "--modes", default=",".join(DEFAULT_MODES), help=f"any of {','.join(MODES)}"
    )
    parser.add_argument(
        "--reps", type=int, default=3, help="timed repetitions for tiny (min taken)"
    )
    parser.add_argument(
        "--big-reps", type=int, default=1, help="timed repetitions for large presets"
    )
    parser.add_argument(
        "--big-upsample-size", type=int, default=128, help="resolution for large upsamplers"
    )
    parser.add_argument("--parts", default="base,upsample", help="base and/or upsample")
    parser.add_argument("--batch", type=int, default=None, help="batch size for every case")
    parser.add_argument(
        "--sizes", default=None, help="comma list of resolutions (default: each part's own)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall time, or this process's CPU time (with --threads 1: steady on a busy machine)",
    )
    parser.add_argument(
        "--compile-big",
        action="store_true",
        help="also torch.compile the large presets (off by default to keep the run short)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    modes = args.modes.split(",")
    auto = resolve_precision("auto", "cpu")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock; "
        f"{cpu_kind()}"
    )
    print(f"precision auto on this CPU (tiny base, batch 2): {auto.name} ({auto.reason})")
    header = (
        f"{'model':18s} {'mode':20s} {'train s':>9s} {'x fp32':>7s} {'GFLOP/s':>8s} "
        f"{'sample s':>9s} {'x fp32':>7s} {'GFLOP/s':>8s} {'rel err':>8s} {'first s':>8s}"
    )
    summary: list[str] = []
    sizes = [int(v) for v in args.sizes.split(",")] if args.sizes else None
    parts = tuple(args.parts.split(","))
    for case in cases(
        args.presets.split(","), args.big_upsample_size, parts=parts, batch=args.batch, sizes=sizes
    ):
        big = not case.name.startswith("tiny")
        reps = args.big_reps if big else args.reps
        train_flops, fwd_flops = count_flops(case)
        n_params = sum(p.numel() for p in from_openai_options(case.options).parameters())
        print(
            f"\n{case.name}: {n_params / 1e6:.1f}M params, batch {case.batch} at {case.size}px, "
            f"{fwd_flops / 1e9:.1f} GFLOP forward, {train_flops / 1e9:.1f} GFLOP train step"
        )
        print(header)
        base: tuple[float, float] | None = None
        reference: torch.Tensor | None = None
        speedups: dict[str, float] = {}
        sampled: dict[str, tuple[float, float]] = {}  # mode -> (sampling step s, rel err)
        for mode in modes:
            if mode == "compile" and big and not args.compile_big:
                print(f"{case.name:18s} {mode:20s} skipped (pass --compile-big)")
                continue
            try:
                fn, inputs, ctx = prepare(case, mode)

                def run_train(fn=fn, inputs=inputs, ctx=ctx) -> None:
                    with ctx():
                        train_step(fn, inputs)

                def run_sample(fn=fn, inputs=inputs, ctx=ctx) -> None:
                    with ctx():
                        sample_step(fn, inputs)

                clock = CLOCKS[args.clock]
                (t_train, first_train), (t_sample, first_sample) = (
                    best_time(run_train, reps, clock),
                    best_time(run_sample, reps, clock),
                )
                if reference is None:
                    with torch.no_grad():
                        reference = fn(**inputs).float()
                err = output_error(fn, inputs, ctx, reference)
            except Exception as exc:  # e.g. no compiler toolchain for torch.compile
                print(f"{case.name:18s} {mode:20s} failed: {type(exc).__name__}: {str(exc)[:80]}")
                continue
            if base is None:
                base = (t_train, t_sample)
            speedups[mode] = base[0] / t_train
            sampled[mode] = (t_sample, err)
            print(
                f"{case.name:18s} {mode:20s} {t_train:9.3f} {base[0] / t_train:7.2f} "
                f"{train_flops / t_train / 1e9:8.1f} {t_sample:9.3f} {base[1] / t_sample:7.2f} "
                f"{fwd_flops / t_sample / 1e9:8.1f} {err:8.1e} {first_train + first_sample:8.1f}"
            )
        if "fp32" in sampled and "bf16" in sampled:
            picked = decide_precision(sampled["fp32"][0], *sampled["bf16"])
            print(
                f"{case.name}: precision auto from these sampling steps: {picked.name} "
                f"({picked.reason})"
            )
        if speedups:
            best = max(speedups, key=speedups.__getitem__)
            summary.append(
                f"{case.name}: fastest training step {best} at {speedups[best]:.2f}x fp32"
            )
    print("\n" + "\n".join(summary))
    print(f"bf16 output tolerance: RMS error <= {BF16_TOLERANCE} of the float32 output's std")


if __name__ == "__main__":
    main()
