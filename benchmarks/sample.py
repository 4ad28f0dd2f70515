"""Seconds per 256x256 GLIDE sample: the release recipe against the fast recipe, and each lever.

Side by side in one process, on the ``filtered`` architecture (random weights by default, the
released ``base.pt`` / ``upsample.pt`` with ``--weights DIR``), one caption, guidance scale 3:

1. ``release`` (the baseline): base ``ancestral-100`` with classifier-free guidance (batch 2),
   upsampler ``fast27`` (batch 1) from noise x 0.997, eager float32, einsum attention: this
   project's parity-tested code, numerically the release;
2. ``fast`` (DPM-Solver++ on both stages) and ``balanced`` (``glide sample``'s default: the fast
   base, the release's upsampler), from :data:`glide.sampling.RECIPES`;
3. each lever alone on top of the release recipe, so the table shows where the time went;
4. ``distilled``: the same architectures distilled (random weights, or ``--distilled FILE`` /
   ``--distilled-upsampler FILE``, exports of ``make distill``): the base with a guidance-weight
   input, one row per image, in the recipe's 4 steps (``pd-4``), the upsampler in 2 (``pd-2``);
   ``--distilled-sampler`` / ``--distilled-upsample-sampler`` change them. Other networks, so
   no one-step difference to the release is reported.

Each stage's time is its setup (token batches; the caption's encoding when cached) plus its
sampler steps. ``--steps-only N`` runs N steps of each stage's sampler and extrapolates to the
recipe's step count (a quick run takes minutes); without it the release and fast recipes run
their full trajectories, and the levers are timed over ``--lever-steps`` steps. Every recipe also
runs one denoising step on the same input as the baseline, and the table reports how far its
output is from the baseline's in float32 (``max |diff|`` and RMS relative to the output's std:
0 where the math is the same, round-off for channels_last / sdpa, more for bf16); a full run also
reports the final images' distance (fewer steps change the trajectory; with random weights
this only checks sanity, the quality guard is ``evaluate``'s sampler table).

    python benchmarks/sample.py                         # full run, filtered, random weights
    python benchmarks/sample.py --steps-only 2          # quick: 2 steps per stage, extrapolated
    python benchmarks/sample.py --weights ~/.cache/glide/openai --json sample.json
    python benchmarks/sample.py --preset tiny --steps-only 1    # seconds (the test suite's)
    python benchmarks/sample.py --threads 1 --clock cpu --steps-only 2   # on a busy machine

Where bf16 is emulated (a CPU whose flags list neither ``avx512_bf16`` nor ``amx_bf16``: ~8x
slower than float32) the rows that force bf16 (``fast, bf16`` and the bf16 autocast lever) are
skipped, saying so on stdout and under ``skipped`` in the JSON (``--emulated-bf16`` times them
anyway); ``precision: auto`` keeps float32 there without timing.

On a shared machine, wall times swing with the other load; ``--threads 1 --clock cpu`` times
this process's CPU seconds instead, which other processes barely move (report its ratios, and
say so: one thread's ratios are close to, not equal to, two threads').
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from glide.models import from_openai_options, load_openai_checkpoint, load_preset
from glide.models.export import load_model
from glide.models.nn import perturb_
from glide.precision import detect_hardware
from glide.sampling import (
    RECIPES,
    Cascade,
    DiffusionSpec,
    GenerationConfig,
    LoadedModel,
    Recipe,
    SamplerSpec,
    parse_sampler,
    to_uint8,
)
from glide.text import Tokenizer

PROMPT = "a corgi wearing a red bowtie and a purple party hat"
GUIDANCE = 3.0


class ByteTokenizer(Tokenizer):
    """Token ids from the caption's bytes: timing does not depend on which ids a caption has, and
    the released models' GPT-2 BPE files are not needed to time them."""

    def __init__(self, n_vocab: int) -> None:
        self._n_vocab = n_vocab

    @property
    def n_vocab(self) -> int:
        return self._n_vocab

    @property
    def pad_token(self) -> int:
        return self._n_vocab - 1

    def encode(self, text: str) -> list[int]:
        return [b % (self._n_vocab - 1) for b in text.encode()]

    def decode(self, tokens: Sequence[int]) -> str:
        return bytes(t % 256 for t in tokens).decode(errors="replace")


def build_models(
    preset: str, weights: Path | None, upsample_size: int | None = None
) -> tuple[LoadedModel, LoadedModel]:
    """The preset's base and upsampler: random (seeded, perturbed so every layer has signal) or
    the released checkpoints in ``weights``; the upsampler samples at ``upsample_size`` when given
    (it is convolutional: a smaller size only makes a quicker check)."""
    options = load_preset(preset)
    loaded = []
    for part, file, schedule in (
        ("base", "base.pt", "squaredcos_cap_v2"),
        ("upsample", "upsample.pt", "linear"),
    ):
        opts = dict(options[part])
        if weights is not None:
            model = load_openai_checkpoint(weights / file, opts)
            version = str(weights / file)
        else:
            torch.manual_seed(0 if part == "base" else 1)
            model = perturb_(from_openai_options(opts))
            version = f"{preset}/{part} (random weights)"
        if part == "upsample" and upsample_size:
            opts["image_size"] = upsample_size  # after building: the architecture is unchanged
        loaded.append(
            LoadedModel(
                model=model.eval(),
                kind=part,
                options=opts,
                tokenizer=ByteTokenizer(int(opts["n_vocab"])),
                diffusion=DiffusionSpec(1000, schedule),
                version=version,
            )
        )
    return loaded[0], loaded[1]


def build_student(base: LoadedModel, path: Path | None = None) -> LoadedModel:
    """A guidance-distilled base of ``base``'s architecture: random (its weight embedding
    perturbed like every other layer) or the exported student at ``path``."""
    from glide.guidance.distilled import student_from_teacher

    if path is not None:
        model, _ = load_model(path)
        version = str(path)
    else:
        torch.manual_seed(2)
        model = student_from_teacher(base.model, base.options)
        with torch.no_grad():
            for p in model.guidance_embed.parameters():
                p.normal_(std=0.02)
        version = f"{base.version}, guidance-distilled"
    options = {**base.options, "guidance_embed": True}
    return dataclasses.replace(base, model=model.eval(), options=options, version=version)


def with_execution(recipe: Recipe, **changes: Any) -> Recipe:
    return dataclasses.replace(recipe, execution=dataclasses.replace(recipe.execution, **changes))


def recipes_to_time(levers: bool) -> dict[str, Recipe]:
    """``release``, ``fast`` and (with ``levers``) each of the fast recipe's levers alone."""
    release, fast = RECIPES["release"], RECIPES["fast"]
    out = {"release": release, "fast": fast, "balanced": RECIPES["balanced"]}
    out["distilled"] = RECIPES["distilled"]
    # The fast recipe with each precision forced, so the table shows what auto's choice cost
    # or saved on this machine (auto resolves to one of them).
    out["fast, fp32"] = with_execution(fast, precision="fp32")
    out["fast, bf16"] = with_execution(fast, precision="bf16")
    if not levers:
        return out
    alone: dict[str, Recipe] = {
        f"base {fast.sampler.label}": dataclasses.replace(release, sampler=fast.sampler),
        f"upsampler {fast.upsample_sampler.label}": dataclasses.replace(
            release, upsample_sampler=fast.upsample_sampler
        ),
        "text cache": with_execution(release, cache_text=True),
        "channels_last": with_execution(release, channels_last=True),
        "sdpa": with_execution(release, attention="sdpa"),
        "inference_mode": with_execution(release, inference_mode=True),
        "bf16 autocast": with_execution(release, precision="bf16"),
    }
    out.update({f"lever: {k}": v for k, v in alone.items()})
    return out


def skip_emulated_bf16(recipes: dict[str, Recipe]) -> dict[str, str]:
    """Remove the recipes forcing bf16 where this CPU emulates it; returns {name: why}."""
    if not detect_hardware().cpu_bf16_emulated:
        return {}
    why = (
        "bf16 is emulated on this CPU (no avx512_bf16 / amx_bf16 flag): ~8x slower than float32, "
        "not timed (--emulated-bf16 times it)"
    )
    names = [name for name, r in recipes.items() if r.execution.precision == "bf16"]
    for name in names:
        del recipes[name]
    return dict.fromkeys(names, why)


def shortened(spec: SamplerSpec, steps: int) -> SamplerSpec:
    """The same kind of sampler with ``steps`` model evaluations (fast27 -> ancestral)."""
    name = "ancestral" if spec.name == "fast27" else spec.name
    return SamplerSpec(name, min(steps, spec.steps))


def generation(recipe: Recipe, steps: int | None, seed: int) -> GenerationConfig:
    config = GenerationConfig(guidance_scale=GUIDANCE, batch_size=1, seed=seed)
    config = dataclasses.replace(config, **recipe.generation_kwargs())
    if steps is None:
        return config
    return dataclasses.replace(
        config,
        sampler=shortened(config.sampler, steps),
        upsample_sampler=shortened(config.upsample_sampler, steps),
    )


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = CLOCKS["wall"]


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = _clock()
    out = fn()
    return out, _clock() - start


def time_recipe(
    cascade: Cascade, recipe: Recipe, *, steps: int | None, seed: int = 0
) -> dict[str, Any]:
    """Run both stages (``steps`` steps each, or the recipe's); seconds extrapolated to the
    recipe's step counts as setup + steps x seconds per step."""
    config = generation(recipe, steps, seed)
    prompts = [PROMPT]
    generator = torch.Generator().manual_seed(seed)
    result: dict[str, Any] = {}
    with cascade.running(config) as precision:
        stage, setup = _timed(lambda: cascade.base_stage(prompts, config))
        low, run = _timed(lambda: stage.sample(generator=generator)[:1])
        result["base"] = _stage_seconds(setup, run, config.sampler, recipe.sampler)
        stage, setup = _timed(lambda: cascade.upsample_stage(low, prompts, config))
        high, run = _timed(lambda: stage.sample(generator=generator))
        result["upsample"] = _stage_seconds(
            setup, run, config.upsample_sampler, recipe.upsample_sampler
        )
    result["total_s"] = result["base"]["seconds"] + result["upsample"]["seconds"]
    result["precision"] = precision.name
    result["image"] = to_uint8(high)
    return result


def _stage_seconds(
    setup: float, run: float, measured: SamplerSpec, target: SamplerSpec
) -> dict[str, float]:
    per_step = run / measured.steps
    return {
        "seconds": setup + per_step * target.steps,
        "setup_s": setup,
        "step_s": per_step,
        "steps": target.steps,
        "measured_steps": measured.steps,
    }


def step_outputs(cascade: Cascade, recipe: Recipe, seed: int = 0) -> dict[str, torch.Tensor]:
    """One denoising step of each stage on fixed inputs, as float32 on CPU."""
    config = generation(recipe, 1, seed)
    g = torch.Generator().manual_seed(seed)
    assert cascade.upsampler is not None
    s, big = cascade.base.image_size, cascade.upsampler.image_size
    low = torch.rand(1, 3, s, s, generator=g) * 2 - 1
    x_base = torch.randn(2, 3, s, s, generator=g)
    x_up = torch.randn(1, 3, big, big, generator=g)
    out = {}
    with cascade.running(config):
        for name, stage, x in (
            ("base", cascade.base_stage([PROMPT], config), x_base),
            ("upsample", cascade.upsample_stage(low, [PROMPT], config), x_up),
        ):
            t = torch.full((x.shape[0],), 500, dtype=torch.long)
            out[name] = stage.model(x, t, **stage.model_kwargs).float().contiguous().clone()
    return out


def difference(out: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Max |out - ref| and RMS(out - ref) / std(ref)."""
    diff = (out - ref).double()
    return {
        "max_abs": float(diff.abs().max()),
        "rel_rms": float(diff.pow(2).mean().sqrt() / ref.double().std()),
    }


def machine() -> dict[str, Any]:
    """What decides the choice of levers on this machine."""
    info = detect_hardware().as_dict()
    info.update(
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        mkldnn=torch.backends.mkldnn.is_available(),
    )
    return info


def run(args: argparse.Namespace) -> dict[str, Any]:
    global _clock
    _clock = CLOCKS[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu" and torch.get_num_threads() != 1:
        print("note: --clock cpu sums every thread's CPU time (spin-waits too): use --threads 1")
    hw = machine()
    print(
        f"machine: {hw['cpu']}; {detect_hardware().describe()}; torch {hw['torch']}, "
        f"{hw['threads']} threads"
    )
    weights = Path(args.weights).expanduser() if args.weights else None
    base, up = build_models(args.preset, weights, args.upsample_size)
    cascade = Cascade(base, upsampler=up)
    recipes = recipes_to_time(not args.no_levers)
    student = build_student(base, Path(args.distilled) if args.distilled else None)
    if args.distilled_sampler:
        spec = parse_sampler(args.distilled_sampler)
        recipes["distilled"] = dataclasses.replace(recipes["distilled"], sampler=spec)
    if args.distilled_upsample_sampler:
        spec = parse_sampler(args.distilled_upsample_sampler)
        recipes["distilled"] = dataclasses.replace(recipes["distilled"], upsample_sampler=spec)
    student_up = up  # the distilled upsampler is the upsampler's network: the same cost
    if args.distilled_upsampler:
        model, _ = load_model(Path(args.distilled_upsampler))
        student_up = dataclasses.replace(up, model=model.eval(), version=args.distilled_upsampler)
    cascades = {"distilled": Cascade(student, upsampler=student_up)}
    skipped = skip_emulated_bf16(recipes) if not args.emulated_bf16 else {}
    mode = (
        f"{args.steps_only} step(s) per stage, extrapolated"
        if args.steps_only
        else f"release and fast: full trajectories; levers: {args.lever_steps} step(s) per stage"
    ) + f"; {args.clock} clock"
    print(
        f"{args.preset} ({base.version}, {up.version}); {mode}; guidance {GUIDANCE:g}; "
        f"{base.image_size}px base, {up.image_size}px upsampler\n"
    )

    if skipped:
        print(f"skipped {', '.join(skipped)}: {next(iter(skipped.values()))}\n")
    for name, recipe in recipes.items():  # warm-up: allocations, oneDNN primitives, lazy inits
        time_recipe(cascades.get(name, cascade), recipe, steps=1)
    reference = step_outputs(cascade, recipes["release"])
    rows: dict[str, dict[str, Any]] = {}
    for _ in range(args.rounds):  # interleaved rounds: the fastest of each is kept
        for name, recipe in recipes.items():
            full = name in ("release", "balanced", "distilled") or name.startswith("fast")
            steps = args.steps_only or (None if full else args.lever_steps)
            timing = time_recipe(cascades.get(name, cascade), recipe, steps=steps)
            if name not in rows or timing["total_s"] < rows[name]["total_s"]:
                rows[name] = timing
    for name, recipe in recipes.items():
        if name in cascades:  # another network: no difference to the release's to report
            rows[name]["step_diff"] = None
            continue
        outputs = step_outputs(cascade, recipe)
        rows[name]["step_diff"] = {k: difference(outputs[k], reference[k]) for k in outputs}

    baseline = rows["release"]["total_s"]
    print(
        f"{'recipe':28s} {'base s':>8s} {'upsamp s':>9s} {'total s':>8s} {'x release':>9s} "
        f"{'precision':>9s}  one-step diff to release: base, upsampler (max |d|, rel RMS)"
    )
    for name, row in rows.items():
        d = row["step_diff"]
        diff = "n/a (another network)"
        if d is not None:
            diff = (
                f"{d['base']['max_abs']:.1e} {d['base']['rel_rms']:.1e}, "
                f"{d['upsample']['max_abs']:.1e} {d['upsample']['rel_rms']:.1e}"
            )
        print(
            f"{name:28s} {row['base']['seconds']:8.1f} {row['upsample']['seconds']:9.1f} "
            f"{row['total_s']:8.1f} {baseline / row['total_s']:9.2f} {row['precision']:>9s}  "
            + diff
        )
    fast = RECIPES["fast"]
    fastest = rows["fast"]  # glide sample's default; the forced-precision rows say what auto chose
    ratio = baseline / fastest["total_s"]
    best = min((n for n in rows if n.startswith("fast")), key=lambda n: rows[n]["total_s"])
    print(
        f"\nrelease recipe {baseline:.1f} s per {up.image_size}x{up.image_size} image; fast recipe "
        f"{fastest['total_s']:.1f} s ({ratio:.2f}x): base {fast.sampler.label} + upsampler "
        f"{fast.upsample_sampler.label} x{fast.upsample_temperature:g}, precision "
        f"{fastest['precision']}, {', '.join(fast.execution.levers())}"
    )
    image_diff = None
    if not args.steps_only:
        a, b = rows["fast"]["image"].float(), rows["release"]["image"].float()
        image_diff = {
            "mean_abs_8bit": float((a - b).abs().mean()),
            "rms_8bit": float((a - b).pow(2).mean().sqrt()),
        }
        print(
            f"final images, fast vs release from the same seed: mean |diff| "
            f"{image_diff['mean_abs_8bit']:.1f} / 255 (different trajectories: fewer steps)"
        )
    distilled = rows["distilled"]
    dist = recipes["distilled"]
    print(
        f"distilled recipe {distilled['total_s']:.1f} s "
        f"({baseline / distilled['total_s']:.2f}x release, {distilled['total_s'] / baseline:.4f} "
        f"of its cost): base {dist.sampler.label} one row + upsampler "
        f"{dist.upsample_sampler.label}"
    )
    precision = cascade.precision(fast.execution)
    print(f"precision auto: {precision.name} ({precision.reason})")
    if best != "fast":
        print(f"fastest row: {best!r}, {baseline / rows[best]['total_s']:.2f}x release")

    levers = {
        name.removeprefix("lever: "): baseline / row["total_s"]
        for name, row in rows.items()
        if name.startswith("lever: ")
    }
    return {
        "baseline_s_per_image": baseline,
        "fastest_s_per_image": fastest["total_s"],
        "ratio": ratio,
        "fastest_row": {"name": best, "s_per_image": rows[best]["total_s"]},
        "distilled": {
            "s_per_image": distilled["total_s"],
            "ratio": baseline / distilled["total_s"],
            "sampler": dist.sampler.label,
            "upsample_sampler": dist.upsample_sampler.label,
        },
        "recipe": {
            "name": fast.name,
            "sampler": fast.sampler.label,
            "upsample_sampler": fast.upsample_sampler.label,
            "upsample_temperature": fast.upsample_temperature,
            "precision": precision.name,
            "precision_reason": precision.reason,
            "execution": dataclasses.asdict(fast.execution),
        },
        "machine": hw,
        "levers": levers,
        "stages": {
            name: {k: v for k, v in row.items() if k != "image"} for name, row in rows.items()
        },
        "image_diff": image_diff,
        "skipped": skipped,
        "mode": {
            "preset": args.preset,
            "weights": args.weights,
            "steps_only": args.steps_only,
            "lever_steps": None if args.steps_only else args.lever_steps,
            "rounds": args.rounds,
            "upsample_size": up.image_size,
            "clock": args.clock,
        },
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--preset", default="filtered", help="model preset (filtered | tiny | ...)")
    p.add_argument("--weights", default=None, help="folder with the released base.pt, upsample.pt")
    p.add_argument("--steps-only", type=int, default=None, metavar="N", help="N steps per stage")
    p.add_argument("--lever-steps", type=int, default=2, help="steps per stage for the levers")
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds (fastest kept)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument(
        "--upsample-size", type=int, default=None, help="upsampler resolution (default: 256)"
    )
    p.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall time, or this process's CPU time (with --threads 1: steady on a busy machine)",
    )
    p.add_argument("--no-levers", action="store_true", help="time release and fast only")
    p.add_argument("--distilled", default=None, help="a train=distill export (default: random)")
    p.add_argument("--distilled-sampler", default=None, help="its base sampler, e.g. pd-8")
    p.add_argument(
        "--distilled-upsampler", default=None, help="a distilled upsampler export (default: random)"
    )
    p.add_argument(
        "--distilled-upsample-sampler", default=None, help="its sampler, e.g. pd-4 (default pd-2)"
    )
    p.add_argument(
        "--emulated-bf16",
        action="store_true",
        help="time the forced-bf16 rows even where this CPU emulates bf16 (~8x slower)",
    )
    p.add_argument("--json", default=None, metavar="PATH", help="write the result as JSON")
    args = p.parse_args(argv)
    if args.steps_only is not None and args.steps_only < 1:
        p.error("--steps-only must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    result = run(args)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
