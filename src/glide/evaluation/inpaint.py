"""Inpainting on the built-in world: replace one object of a val scene and check the result.

For each val image the oracle parses the scene; one object (seeded) is erased by masking its grid
cell, grown to the object's whole extent where it overflows the cell (worlds with
``object_scale > 1``) plus a margin for the new object's outline, and the caption describes the same scene with a *different* object (another shape and
colour, same size) in that cell. The inpainting model fills the cell; then

- ``inpaint_accuracy``: the oracle finds an object of the asked shape and colour in that cell;
- ``inpaint_preserved``: the fraction of pixels outside the mask within ``tolerance`` levels
  (of 255, every channel) of the known image — "unchanged, within JPEG noise".
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from glide.data.oracle import (
    foreground_mask,
    label_components,
    parse_background,
    parse_image,
)
from glide.data.shapes import (
    COLORS,
    SHAPES,
    Scene,
    ShapeObject,
    describe_scene,
    position_name,
    to_base_resolution,
)

__all__ = ["InpaintTask", "inpaint_counts", "inpaint_scores", "make_inpaint_task"]


@dataclass(frozen=True)
class InpaintTask:
    """One edit: the known image and mask (1 = keep) at ``size``, the caption and the target."""

    image: Image.Image
    mask: Tensor  # [1, size, size] float, 1 = known pixel
    caption: str
    target: ShapeObject

    @property
    def label(self) -> str:
        t = self.target
        return f"{t.color} {t.shape} in the {position_name(t.row, t.col)}"


def make_inpaint_task(image: Image.Image, size: int, rng: random.Random) -> InpaintTask | None:
    """The edit of ``image`` (resized to ``size``), or ``None`` when the oracle finds no object."""
    small = to_base_resolution(image.convert("RGB"), 64)  # the oracle's resolution
    objects, background = parse_image(small), parse_background(small)
    if not objects:
        return None
    old = objects[rng.randrange(len(objects))]
    shapes = [s for s in SHAPES if s != old.shape]
    colors = [c for c in COLORS if c not in (old.color, background)]
    new = ShapeObject(rng.choice(shapes), rng.choice(colors), old.size, old.row, old.col)
    kept = [ShapeObject(o.shape, o.color, o.size, o.row, o.col) for o in objects if o is not old]
    caption = describe_scene(Scene((*kept, new), background))
    y0, x0, y1, x1 = _erase_box(foreground_mask(small), old.row, old.col)
    mask = torch.ones(1, size, size)
    scale = size / small.height
    mask[:, round(y0 * scale) : round(y1 * scale), round(x0 * scale) : round(x1 * scale)] = 0.0
    known = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    return InpaintTask(image=known, mask=mask, caption=caption, target=new)


def _erase_box(fg: np.ndarray, row: int, col: int) -> tuple[int, int, int, int]:
    """``(y0, x0, y1, x1)`` to erase for the object in cell ``(row, col)`` of foreground ``fg``:
    the cell, grown to the bounding box of the foreground connected to the cell (an object drawn
    bigger than its cell), and, when it grew, by a margin of a tenth of the image for the new
    object's different outline."""
    n = fg.shape[0]
    y0, y1, x0, x1 = (
        round(row * n / 3),
        round((row + 1) * n / 3),
        round(col * n / 3),
        round((col + 1) * n / 3),
    )
    labels, _ = label_components(fg)  # the oracle's own 4-connected components
    ids = np.unique(labels[y0:y1, x0:x1])
    seen = np.isin(labels, ids[ids > 0])
    ys, xs = np.nonzero(seen)
    if ys.size == 0 or (ys.min() >= y0 and ys.max() < y1 and xs.min() >= x0 and xs.max() < x1):
        return y0, x0, y1, x1
    m = round(n / 10)
    return (
        max(0, min(y0, int(ys.min())) - m),
        max(0, min(x0, int(xs.min())) - m),
        min(n, max(y1, int(ys.max()) + 1) + m),
        min(n, max(x1, int(xs.max()) + 1) + m),
    )


def _found(image: Image.Image, target: ShapeObject) -> bool:
    objects = parse_image(to_base_resolution(image.convert("RGB"), 64))
    return any(
        (o.shape, o.color, o.row, o.col) == (target.shape, target.color, target.row, target.col)
        for o in objects
    )


def inpaint_counts(
    tasks: Sequence[InpaintTask], outputs: Sequence[Image.Image], *, tolerance: int = 8
) -> list[tuple[bool, int, int]]:
    """Per task: whether the asked object is there, kept pixels that stayed within ``tolerance``,
    and kept pixels (counts add across processes)."""
    if len(tasks) != len(outputs) or not tasks:
        raise ValueError("need one output per inpainting task")
    out = []
    for task, image in zip(tasks, outputs, strict=True):
        a = np.asarray(image.convert("RGB"), np.int16)
        b = np.asarray(task.image, np.int16)
        keep = task.mask[0].numpy() > 0.5
        close = (np.abs(a - b).max(axis=2) <= tolerance) & keep
        out.append((_found(image, task.target), int(close.sum()), int(keep.sum())))
    return out


def inpaint_scores(
    tasks: Sequence[InpaintTask], outputs: Sequence[Image.Image], *, tolerance: int = 8
) -> tuple[list[bool], float]:
    """Per task whether the asked object is there, and the preserved-pixel fraction overall."""
    counts = inpaint_counts(tasks, outputs, tolerance=tolerance)
    kept, total = sum(c[1] for c in counts), sum(c[2] for c in counts)
    return [c[0] for c in counts], kept / max(total, 1)
