"""Drawing many captions: batches across captions, shards across processes, resumable.

Every image is a *unit* ``(caption, image index)``; units are taken in file order, cut into
batches of ``batch_size`` and batch ``b`` belongs to shard ``b % num_shards``. Each image's noise
comes from its own generator, seeded with ``(seed, caption number, image index)``
(:func:`glide.diffusion.image_seed`), so:

- a batch holds the same images whatever the number of shards: shards together write exactly
  the files one process writes, byte for byte;
- across batch sizes an image starts from the same noise and takes the same steps; batched
  kernels round differently from unbatched ones, so pixels may differ by float round-off;
- a rerun skips every batch whose PNGs are all on disk with the same ``settings`` text chunk
  (a digest of everything that determines them), so an interrupted run resumes, and a run with
  other settings into the same folder draws its images again instead of keeping stale ones.

A caption's grid is written by whichever process finishes its last image.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from glide.io import atomic_path
from glide.sampling.cascade import Cascade, GenerationConfig, InpaintInputs, to_pil
from glide.sampling.io import image_grid, output_paths, png_metadata

__all__ = ["BulkReport", "Caption", "plan_batches", "sample_captions"]


@dataclass(frozen=True)
class Caption:
    """One caption to draw: its text, seed number, grid path and PNG text chunks (which carry
    ``settings``, the digest a rerun compares)."""

    text: str
    number: int  # the caption index in the seed: (seed, number, image index)
    out: Path  # the grid's path; images go beside it (glide.sampling.io.output_paths)
    metadata: Mapping[str, object]


@dataclass
class BulkReport:
    """What one process did: images written and skipped (already on disk), grids written."""

    written: int = 0
    skipped: int = 0
    grids: list[Path] = field(default_factory=list)


def plan_batches(
    counts: Sequence[int], batch_size: int, *, num_shards: int = 1, shard_index: int = 0
) -> list[list[tuple[int, int]]]:
    """This shard's batches of ``(caption position, image index)`` for ``counts[i]`` images of
    caption ``i``."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard index {shard_index} not in [0, {num_shards})")
    units = [(c, i) for c, n in enumerate(counts) for i in range(n)]
    batches = [units[s : s + batch_size] for s in range(0, len(units), batch_size)]
    return [b for number, b in enumerate(batches) if number % num_shards == shard_index]


def _save_png(image: Image.Image, path: Path, metadata: Mapping[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=png_metadata(metadata))


def sample_captions(
    cascade: Cascade,
    config: GenerationConfig,
    captions: Sequence[Caption],
    *,
    num_images: int,
    num_shards: int = 1,
    shard_index: int = 0,
    overwrite: bool = False,
    inpaint: InpaintInputs | None = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> BulkReport:
    """Draw ``num_images`` images per caption in batches of ``config.batch_size`` (this shard's
    batches only); skip batches already on disk unless ``overwrite``."""
    report = BulkReport()
    paths = [output_paths(c.out, num_images) for c in captions]
    batches = plan_batches(
        [num_images] * len(captions),
        config.batch_size,
        num_shards=num_shards,
        shard_index=shard_index,
    )
    todo = []
    for batch in batches:
        if not overwrite and all(_finished(paths[c][1][i], captions[c]) for c, i in batch):
            report.skipped += len(batch)
        else:
            todo.append(batch)
    if report.skipped:
        log(f"skipped {report.skipped} image(s) already written (--overwrite draws them again)")
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(len(b) for b in todo), unit="img", desc="sampling")
    with cascade.running(config):
        for batch in todo:
            prompts = [captions[c].text for c, _ in batch]
            keys = [(captions[c].number, i) for c, i in batch]
            low, high = cascade.generate_batch(prompts, config, keys=keys, inpaint=inpaint)
            images = to_pil(high if high is not None else low)
            for (c, i), image in zip(batch, images, strict=True):
                path = paths[c][1][i]
                if overwrite or not _finished(path, captions[c]):
                    _save_png(image, path, {**captions[c].metadata, "index": i})
                    report.written += 1
            for c in sorted({c for c, _ in batch}):
                if _grid_when_complete(captions[c], paths[c], overwrite=overwrite):
                    report.grids.append(paths[c][0])
            if bar is not None:
                bar.update(len(batch))
    if bar is not None:
        bar.close()
    return report


def _finished(path: Path, caption: Caption) -> bool:
    """Whether ``path`` holds an image drawn with ``caption``'s settings."""
    try:
        with Image.open(path) as img:
            return img.text.get("settings") == str(caption.metadata.get("settings"))  # type: ignore[attr-defined]
    except OSError:  # missing, or damaged: drawn again
        return False


def _grid_when_complete(
    caption: Caption, paths: tuple[Path, list[Path]], *, overwrite: bool
) -> bool:
    """Write a caption's grid once all its images are on disk (from any process)."""
    grid, images = paths
    if _finished(grid, caption) and not overwrite:
        return False
    tiles = []
    for path in images:  # each image read once: its settings checked, its pixels kept
        try:
            with Image.open(path) as img:
                if img.text.get("settings") != str(caption.metadata.get("settings")):  # type: ignore[attr-defined]
                    return False
                tiles.append(img.convert("RGB"))
        except OSError:
            return False
    _save_png(image_grid(tiles), grid, caption.metadata)
    return True
