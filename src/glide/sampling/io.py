"""Writing samples: a PNG grid plus one PNG per image, each carrying its provenance.

PNG text chunks (read with ``PIL.Image.open(p).text``):

==================== ==========================================================================
key                  value
==================== ==========================================================================
``prompt``           the caption ("" for unconditional samples)
``seed``             the generator seed of the whole call
``index``            the image's position in the call (absent on the grid)
``sampler``          base sampler and steps, e.g. ``ancestral-100``, ``dpm++-20``
``upsample_sampler`` upsampler sampler (absent for base-only samples)
``guidance_scale``   classifier-free guidance scale
``clip_guidance_scale`` CLIP guidance scale (0: off)
``model_version``    the base model's version (path, MLflow URI + version, or release digest)
``upsampler_version`` the upsampler's version (absent for base-only samples)
``prompts_file``     with ``glide sample --prompts-file``: the file, plus ``line`` (text) or
                     ``annotation``, ``annotation_id``, ``image_id`` (COCO captions)
``settings``         ``glide sample``: a digest of what determines the image besides its caption
                     (a rerun skips PNGs whose digest matches; :mod:`glide.sampling.bulk`)
``software``         ``glide <version of the glide-pipeline distribution>``
==================== ==========================================================================
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

__all__ = ["image_grid", "labelled_grid", "output_paths", "png_metadata", "save_samples"]


DISTRIBUTION = "glide-pipeline"  # the package index name; the import and command are `glide`


def _software() -> str:
    try:
        from importlib.metadata import version

        return f"glide {version(DISTRIBUTION)}"
    except Exception:  # pragma: no cover - not installed as a distribution
        return "glide"


def png_metadata(values: Mapping[str, object]) -> PngInfo:
    """PNG text chunks for ``values`` (``None`` values are left out) plus ``software``."""
    info = PngInfo()
    for key, value in {**values, "software": _software()}.items():
        if value is not None:
            info.add_itxt(key, str(value))
    return info


def image_grid(images: Sequence[Image.Image], cols: int | None = None) -> Image.Image:
    """Tile equally sized images row-major into a near-square grid."""
    if not images:
        raise ValueError("no images to tile")
    w, h = images[0].size
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    grid = Image.new("RGB", (cols * w, rows * h), (0, 0, 0))
    for i, img in enumerate(images):
        grid.paste(
            img.resize((w, h)) if img.size != (w, h) else img, ((i % cols) * w, (i // cols) * h)
        )
    return grid


def labelled_grid(
    images: Sequence[Image.Image],
    labels: Sequence[str],
    *,
    verdicts: Sequence[str] | None = None,
    tile: int = 128,
    lines: int = 4,
    cols: int | None = None,
) -> Image.Image:
    """Tile images (resized to ``tile`` px, nearest) with their label (e.g. the caption) under
    each, cut with an ellipsis after ``lines`` lines, and optionally a verdict on the last line
    (green when it is ``ok``, red otherwise), so a reader sees at a glance what went right."""
    if len(images) != len(labels) or (verdicts is not None and len(verdicts) != len(images)):
        raise ValueError("need one label (and verdict) per image")
    font = ImageFont.load_default()
    line_h, chars = 11, max(8, tile // 6)
    text_lines = lines - (verdicts is not None)
    tiles = []
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        wrapped = textwrap.wrap(label, chars) or [""]
        if len(wrapped) > text_lines:
            wrapped = [*wrapped[: text_lines - 1], wrapped[text_lines - 1][: chars - 3] + "..."]
        cell = Image.new("RGB", (tile, tile + lines * line_h + 4), (255, 255, 255))
        cell.paste(img.convert("RGB").resize((tile, tile), Image.Resampling.NEAREST), (0, 0))
        draw = ImageDraw.Draw(cell)
        for k, text in enumerate(wrapped):
            draw.text((2, tile + 2 + k * line_h), text, fill=(0, 0, 0), font=font)
        if verdicts is not None:
            ok = verdicts[i] == "ok"
            draw.text(
                (2, tile + 2 + text_lines * line_h),
                verdicts[i],
                fill=(0, 130, 0) if ok else (200, 0, 0),
                font=font,
            )
        tiles.append(cell)
    return image_grid(tiles, cols)


def output_paths(out: str | Path, n: int) -> tuple[Path, list[Path]]:
    """Grid and single-image paths for ``out``.

    ``out`` ending in ``.png``: the grid is ``out`` and images are ``<stem>_000.png`` ... beside
    it. Otherwise ``out`` is a folder holding ``grid.png`` and ``000.png`` ...
    """
    out = Path(out)
    if out.suffix.lower() == ".png":
        return out, [out.with_name(f"{out.stem}_{i:03d}.png") for i in range(n)]
    return out / "grid.png", [out / f"{i:03d}.png" for i in range(n)]


def save_samples(
    images: Sequence[Image.Image], out: str | Path, metadata: Mapping[str, object]
) -> tuple[Path, list[Path]]:
    """Write the grid and every image with ``metadata`` (+ ``index`` per image) as PNG text."""
    grid_path, paths = output_paths(out, len(images))
    grid_path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images).save(grid_path, pnginfo=png_metadata(metadata))
    for i, (img, path) in enumerate(zip(images, paths, strict=True)):
        img.save(path, pnginfo=png_metadata({**metadata, "index": i}))
    return grid_path, paths
