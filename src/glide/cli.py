"""The ``glide`` command: sample and inpaint with trained, registered or released models.

    glide sample --prompt "a red circle" --out samples/            # grid.png + 000.png ...
    glide sample --prompt "a red circle" --out red.png --recipe release   # the release's recipe
    glide sample --prompt "a red circle" --out red.png --sampler dpm++ --steps 20 --base-only
    glide sample --prompt "..." --base models:/glide-base@champion --out out.png
    glide sample --prompts-file captions.txt --out samples/        # line-0001.png, line-0001_000.png
    glide sample --prompts-file captions.json --out coco/ --num-shards 4 --shard-index 0
    torchrun --nproc-per-node 4 -m glide.cli sample --prompts-file captions.json --out coco/
    glide inpaint --image in.png --mask mask.png --prompt "a blue star" --out painted.png

Each subcommand is a ``(name, help, add_arguments, run)`` entry: :data:`COMMANDS` here, plus
``promote`` / ``compare`` from :mod:`glide.tracking.commands` when that module is present.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from glide.precision import Precision
    from glide.sampling import GenerationConfig, LoadedModel, Recipe, SamplerSpec
    from glide.sampling.prompts import PromptEntry

__all__ = ["COMMANDS", "all_commands", "build_parser", "main"]


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


RECIPE_HELP = {
    "balanced": "the fast recipe's 10-step DPM-Solver++ base and execution levers, the "
    "release's fast27 upsampler",
    "fast": "DPM-Solver++ on both stages, caption encoded once, channels_last, sdpa, auto "
    "precision",
    "release": "the release's ancestral-100 + fast27, eager float32",
    "distilled": "the distilled models of make distill: a one-row base in 4 steps (pd-4), "
    "an upsampler in 2 (pd-2); --base/--upsampler default to models/base-distilled-pd4 and "
    "models/upsampler-distilled-pd2",
}
DEFAULT_RECIPE = "balanced"  # glide.sampling.DEFAULT_RECIPE (not imported: --help stays fast)
DISTILLED_BASE = "models/base-distilled-pd4"  # glide.sampling.recipes.DISTILLED_BASE
DISTILLED_UPSAMPLER = "models/upsampler-distilled-pd2"  # ... .DISTILLED_UPSAMPLER


def _add_model_options(p: argparse.ArgumentParser, *, base: str, upsampler: str) -> None:
    g = p.add_argument_group("models (a path, models:/<name>@<alias>, or openai:<name>)")
    g.add_argument(
        "--base",
        "--model",
        dest="base",
        default=None,
        help=f"base model source (default: {base}; {DISTILLED_BASE} with --recipe distilled)",
    )
    p.set_defaults(default_base=base, default_upsampler=upsampler)
    g.add_argument(
        "--upsampler",
        default=None,
        help=f"upsampler source (default: {upsampler}; {DISTILLED_UPSAMPLER} with --recipe "
        "distilled)",
    )
    g.add_argument(
        "--tokenizer-path", default=None, help="GPT-2 BPE folder (released OpenAI models)"
    )
    g.add_argument("--device", default="cpu", help="torch device (default: cpu)")


def _add_sampling_options(
    p: argparse.ArgumentParser, *, guidance: float, prompts_file: bool = False
) -> None:
    g = p.add_argument_group("sampling")
    prompt = g.add_mutually_exclusive_group(required=True) if prompts_file else g
    prompt.add_argument(
        "--prompt", required=not prompts_file, help="caption; empty samples unconditionally"
    )
    if prompts_file:
        prompt.add_argument(
            "--prompts-file",
            help="captions to draw with one model load: one per line, or a COCO captions .json; "
            "--out is then a folder of line-NNNN[_iii].png (ann-NNNN for .json)",
        )
    g.add_argument("--out", required=True, help="grid file (x.png) or output folder")
    g.add_argument("-n", "--num-images", type=int, default=4, help="images to draw (default: 4)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    g.add_argument(
        "--guidance-scale",
        type=float,
        default=guidance,
        help=f"classifier-free guidance scale, 1 = off (default: {guidance:g})",
    )
    g.add_argument(
        "--recipe",
        choices=sorted(RECIPE_HELP),
        default=DEFAULT_RECIPE,
        help="; ".join(f"{k}: {v}" for k, v in RECIPE_HELP.items())
        + f" (default: {DEFAULT_RECIPE})",
    )
    g.add_argument(
        "--sampler", default=None, help="ancestral | fast27 | ddim | dpm++ (default: the recipe's)"
    )
    g.add_argument("--steps", type=int, default=None, help="sampler steps (default: per sampler)")
    g.add_argument(
        "--base-only", action="store_true", help="stop at the base samples (64x64; 32x32 tiny)"
    )
    g.add_argument(
        "--upsample-sampler", default=None, help="upsampler's sampler (default: the recipe's)"
    )
    g.add_argument("--upsample-steps", type=int, default=None, help="upsampler sampler steps")
    g.add_argument(
        "--upsample-temperature",
        type=float,
        default=None,
        help="upsampler noise scale (default: the recipe's, 0.997; 1 for distilled students)",
    )
    g.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default=None,
        help="auto: bf16 where timing the models here shows it faster, else fp32 (cached in "
        "~/.cache/glide/precision.json); default: the recipe's",
    )
    g.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="images per forward batch, across captions (8); each image keeps its own noise",
    )
    if prompts_file:
        g.add_argument(
            "--num-shards",
            type=int,
            default=_env_int("WORLD_SIZE", 1),
            help="split the batches over this many processes (default: $WORLD_SIZE or 1)",
        )
        g.add_argument(
            "--shard-index",
            type=int,
            default=_env_int("RANK", 0),
            help="this process's shard (default: $RANK or 0; torchrun sets both)",
        )
        g.add_argument(
            "--overwrite",
            action="store_true",
            help="draw images again even when a PNG with the same settings is on disk",
        )
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() else default


def _add_sample(p: argparse.ArgumentParser) -> None:
    _add_sampling_options(p, guidance=3.0, prompts_file=True)
    p.add_argument(
        "--clip-guidance-scale", type=float, default=0.0, help="CLIP guidance scale (0: off)"
    )
    p.add_argument("--clip", default="models/clip", help="noised CLIP source for CLIP guidance")
    _add_model_options(p, base="models/base", upsampler="models/upsampler")


def _add_inpaint(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", required=True, help="image to edit (any mode and size)")
    p.add_argument("--mask", required=True, help="mask image: white = keep, black = repaint")
    p.add_argument("--invert-mask", action="store_true", help="white = repaint instead")
    _add_sampling_options(p, guidance=5.0)
    _add_model_options(p, base="models/inpaint", upsampler="models/upsampler")


def _open_image(path: str, what: str) -> object:
    from PIL import Image, UnidentifiedImageError

    file = Path(path)
    if not file.is_file():
        raise CLIError(f"{what} {file} not found")
    try:
        with Image.open(file) as img:
            img.load()
            return img.copy()
    except (UnidentifiedImageError, OSError) as exc:
        raise CLIError(f"{what} {file} is not a readable image ({exc})") from None


def _prompts(args: argparse.Namespace) -> list[PromptEntry]:
    """What to draw: ``--prompt`` (written to ``--out`` as given), or every caption of
    ``--prompts-file`` (read before any model loads, so a bad file costs nothing)."""
    from glide.sampling.prompts import PromptEntry, PromptsFileError, read_prompts

    path = getattr(args, "prompts_file", None)
    if path is None:
        return [PromptEntry("", args.prompt)]
    if Path(args.out).suffix.lower() == ".png":
        raise CLIError("--out must be a folder with --prompts-file (one file set per caption)")
    try:
        entries, skipped = read_prompts(path)
    except PromptsFileError as exc:
        raise CLIError(str(exc)) from None
    if skipped:
        print(f"glide sample: skipped {skipped} annotation(s) without a caption", file=sys.stderr)
    return entries


def _load(source: str, args: argparse.Namespace, what: str) -> object:
    from glide.sampling import ModelSourceError, load_model_source
    from glide.tracking import TrackingUnavailableError

    try:
        return load_model_source(source, tokenizer_path=args.tokenizer_path, device=args.device)
    except (FileNotFoundError, ModelSourceError, ValueError, TrackingUnavailableError) as exc:
        raise CLIError(f"cannot load {what} {source!r}: {exc}") from None


def _generate(args: argparse.Namespace, *, inpaint: bool) -> int:
    from glide.sampling import (
        Cascade,
        GenerationConfig,
        InpaintInputs,
        LoadedModel,
        for_models,
        get_recipe,
    )
    from glide.sampling.bulk import Caption, sample_captions

    if args.num_images < 1:
        raise CLIError("--num-images must be >= 1")
    if args.device == "cuda" and os.environ.get("LOCAL_RANK", "").isdigit():
        args.device = f"cuda:{os.environ['LOCAL_RANK']}"  # torchrun: one GPU per process
    recipe = get_recipe(args.recipe)
    clip_scale = float(getattr(args, "clip_guidance_scale", 0.0))
    execution = recipe.execution
    if args.precision is not None:
        execution = dataclasses.replace(execution, precision=args.precision)

    _samplers(args, recipe, clip=bool(clip_scale))  # a mistyped sampler fails before loading
    distilled = args.recipe == "distilled" and not inpaint
    if args.base is None:
        args.base = DISTILLED_BASE if distilled else args.default_base
    if args.upsampler is None:
        args.upsampler = DISTILLED_UPSAMPLER if distilled else args.default_upsampler
    for source in (args.base, None if args.base_only else args.upsampler):
        defaults = (DISTILLED_BASE, DISTILLED_UPSAMPLER)
        if distilled and source in defaults and not Path(source).exists():
            raise CLIError(
                f"--recipe distilled reads {source}, which is missing: run `make distill` "
                "(pipelines/distill/dvc.yaml), or name the models with --base / --upsampler"
            )
    if inpaint and args.recipe == "distilled":
        raise CLIError("--recipe distilled has no inpainting model: use balanced or fast")
    inputs = None
    prompts = _prompts(args)
    if inpaint:
        image, mask = _open_image(args.image, "image"), _open_image(args.mask, "mask")
    base = _load(args.base, args, "base model")
    assert isinstance(base, LoadedModel)
    upsampler = None if args.base_only else _load(args.upsampler, args, "upsampler")
    clip = _load(args.clip, args, "CLIP model") if clip_scale else None
    if args.recipe == "distilled" and not base.options.get("guidance_embed"):
        raise CLIError(
            f"--recipe distilled needs a guidance-distilled base (python pipelines/train.py "
            f"train=distill); {base.version} is not one"
        )
    recipe = for_models(recipe, base, upsampler)  # distilled students: the grids they learned
    sampler, up_sampler = _samplers(args, recipe, clip=bool(clip_scale))
    temperature = args.upsample_temperature
    temperature = recipe.upsample_temperature if temperature is None else temperature
    if inpaint and not base.inpaint:
        raise CLIError(
            f"{base.version} is not an inpainting model (train=inpaint, openai:base-inpaint)"
        )
    if inpaint:
        high = upsampler.image_size if isinstance(upsampler, LoadedModel) else base.image_size
        for what, img in (("image", image), ("mask", mask)):
            if img.size != (high, high) or img.mode not in ("RGB", "L"):  # type: ignore[attr-defined]
                print(
                    f"glide inpaint: {what} {img.size[0]}x{img.size[1]} {img.mode} is "  # type: ignore[attr-defined]
                    f"converted and resized to {high}x{high}",
                    file=sys.stderr,
                )
        inputs = InpaintInputs.from_pil(
            image,  # type: ignore[arg-type]
            mask,  # type: ignore[arg-type]
            low=base.image_size,
            high=high,
            invert=args.invert_mask,
        )
    if args.prompt is not None and not args.prompt.strip():
        print("glide: empty prompt: sampling unconditionally", file=sys.stderr)

    config = GenerationConfig(
        guidance_scale=args.guidance_scale,
        clip_guidance_scale=clip_scale,
        sampler=sampler,
        upsample=not args.base_only,
        upsample_sampler=up_sampler,
        upsample_temperature=temperature,
        batch_size=max(1, args.batch_size),
        seed=args.seed,
        progress=not args.no_progress,
        execution=execution,
    )
    try:
        cascade = Cascade(
            base,
            upsampler=upsampler,  # type: ignore[arg-type]
            clip=clip,  # type: ignore[arg-type]
            device=args.device,
        )
        precision = cascade.precision(execution)
        _report_choice(args, config, precision)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    metadata = {
        "seed": args.seed,
        "sampler": sampler.label,
        "upsample_sampler": None if args.base_only else up_sampler.label,
        "recipe": args.recipe,
        "precision": precision.name,
        "guidance_scale": f"{args.guidance_scale:g}",
        "clip_guidance_scale": f"{clip_scale:g}",
        "model_version": base.version,
        "upsampler_version": None if upsampler is None else upsampler.version,  # type: ignore[attr-defined]
    }
    if inpaint:
        metadata.update(source_image=str(args.image), mask=str(args.mask))
    nets = [m for m in (base, upsampler, clip) if isinstance(m, LoadedModel)]
    settings = _settings_digest(metadata, config, nets)
    captions = [
        Caption(
            text=entry.caption,
            number=entry.number,
            out=Path(args.out) / f"{entry.stem}.png" if entry.stem else Path(args.out),
            metadata={
                "prompt": entry.caption,
                **metadata,
                **entry.provenance,
                "settings": settings,
            },
        )
        for entry in prompts
    ]
    shards = getattr(args, "num_shards", 1), getattr(args, "shard_index", 0)
    try:
        report = sample_captions(
            cascade,
            config,
            captions,
            num_images=args.num_images,
            num_shards=shards[0],
            shard_index=shards[1],
            overwrite=getattr(args, "overwrite", False) or args.prompt is not None,
            inpaint=inputs,
            progress=config.progress and getattr(args, "prompts_file", None) is not None,
            log=lambda msg: print(f"glide {args.command}: {msg}", file=sys.stderr),
        )
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    for grid in report.grids:
        print(f"wrote {grid} and {args.num_images} image(s) beside it")
    if shards[0] > 1:
        print(
            f"shard {shards[1]}/{shards[0]}: wrote {report.written} image(s), "
            f"{report.skipped} already on disk"
        )
    return 0


def _settings_digest(
    metadata: dict[str, object], config: GenerationConfig, nets: list[LoadedModel]
) -> str:
    """What determines a drawn image besides its caption, as 16 hex digits (PNG ``settings``):
    the settings, the batch size (batched kernels round differently) and the weights."""
    from glide.config import config_digest
    from glide.models.export import model_digest

    fields = {**metadata, "generation": dataclasses.asdict(config)}
    fields["weights"] = [model_digest(m.model) for m in nets]
    fields["generation"].pop("progress")
    return config_digest(fields)


def _samplers(
    args: argparse.Namespace, recipe: Recipe, *, clip: bool
) -> tuple[SamplerSpec, SamplerSpec]:
    """The base and upsampler samplers: the recipe's unless given. CLIP guidance needs a sampler
    with a ``cond_fn``, so the fast recipe then samples the base with DDIM at its step count."""
    from glide.sampling import parse_sampler

    base = args.sampler
    if base is None:
        base = recipe.sampler.label
        if clip and recipe.sampler.name == "dpm++":
            base = f"ddim-{recipe.sampler.steps}"
    try:
        sampler = parse_sampler(base, args.steps)
        up_name = args.upsample_sampler or recipe.upsample_sampler.label
        up_sampler = parse_sampler(up_name, args.upsample_steps)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if clip and sampler.name == "dpm++":
        raise CLIError("CLIP guidance needs --sampler ancestral, fast27 or ddim (not dpm++)")
    return sampler, up_sampler


def _report_choice(
    args: argparse.Namespace, config: GenerationConfig, precision: Precision
) -> None:
    """One line on stderr: the recipe, samplers, precision (and why) and execution levers."""
    stages = f"base {config.sampler.label}"
    if config.upsample:
        stages += f", upsampler {config.upsample_sampler.label} x{config.upsample_temperature:g}"
    levers = ", ".join(config.execution.levers()) or "eager"
    print(
        f"glide {args.command}: recipe {args.recipe}: {stages}; precision {precision.name} "
        f"({precision.reason}); {levers}",
        file=sys.stderr,
    )


def _run_sample(args: argparse.Namespace) -> int:
    return _generate(args, inpaint=False)


def _run_inpaint(args: argparse.Namespace) -> int:
    return _generate(args, inpaint=True)


Command = tuple[
    str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]
]
COMMANDS: list[Command] = [
    (
        "sample",
        "generate images from a caption (base model, optionally the full cascade)",
        _add_sample,
        _run_sample,
    ),
    (
        "inpaint",
        "repaint the masked-out region of an image to match a caption",
        _add_inpaint,
        _run_inpaint,
    ),
]
"""``(name, help, add_arguments, run)`` per subcommand."""


def all_commands() -> list[Command]:
    """:data:`COMMANDS` plus the registry commands (``promote``, ``compare``) when installed."""
    commands = list(COMMANDS)
    try:
        from glide.tracking.commands import COMPARE_COMMAND, PROMOTE_COMMAND, REPLAY_COMMAND
    except ImportError:
        return commands
    return [*commands, PROMOTE_COMMAND, COMPARE_COMMAND, REPLAY_COMMAND]


def build_parser() -> argparse.ArgumentParser:
    """The ``glide`` argument parser with one subparser per entry of :func:`all_commands`."""
    parser = argparse.ArgumentParser(prog="glide", description="GLIDE sampling and registry tools")
    subs = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text, add_arguments, run in all_commands():
        sub = subs.add_parser(name, help=help_text, description=help_text)
        add_arguments(sub)
        sub.set_defaults(_run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``glide`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return int(args._run(args))
    except CLIError as exc:
        print(f"glide {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
