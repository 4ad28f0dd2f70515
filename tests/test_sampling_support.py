"""Factories shared by the sampling, CLI and evaluation tests: micro random-weight GLIDE models
(the ``tiny`` preset shrunk further, base at 32x32 and a 32 -> 64 upsampler, so sampling takes
seconds on 2 cores) and a small COCO set of ``shapes`` renders written by the test itself. No
tests live here."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import torch

from glide.data.shapes import make_example
from glide.models import clip_from_openai_options, from_openai_options, load_preset
from glide.sampling import DiffusionSpec, LoadedModel
from glide.text import Tokenizer, get_tokenizer

TEST_STEPS = 50  # a short trained process keeps respaced samplers valid and cheap


@cache
def clip_bpe() -> Tokenizer:
    """The CLIP BPE, loaded once per test session (it takes seconds)."""
    return get_tokenizer("clip")


def micro_options(part: str) -> dict[str, Any]:
    """Release-style options of a very small model for ``part`` (base, upsample, base_inpaint,
    upsample_inpaint, clip)."""
    tiny = load_preset("tiny")
    if part == "clip":
        return dict(tiny["clip"], n_xf_blocks_text=1, n_xf_blocks_image=1)
    up = part.startswith("upsample")
    options = dict(tiny["upsample" if up else "base"])
    options.update(channel_mult="1,2", xf_layers=1, inpaint=part.endswith("inpaint"))
    if up:  # 32 -> 64
        options.update(image_size=64, attention_resolutions="")
    else:
        options.update(image_size=32, attention_resolutions="16")
    return options


def micro_model(part: str, seed: int = 0) -> LoadedModel:
    """A random-weight :class:`LoadedModel` for ``part`` (seeded)."""
    torch.manual_seed(seed)
    options = micro_options(part)
    model = clip_from_openai_options(options) if part == "clip" else from_openai_options(options)
    with torch.no_grad():  # zero-initialised output layers would make every caption alike
        for param in model.parameters():
            if param.ndim > 1 and not param.any():
                param.normal_(std=0.05)
    kind = "clip" if part == "clip" else ("inpaint" if "inpaint" in part else part.split("_")[0])
    schedule = "linear" if part.startswith("upsample") else "squaredcos_cap_v2"
    return LoadedModel(
        model=model.eval(),
        kind=kind,
        options=options,
        tokenizer=clip_bpe(),
        diffusion=DiffusionSpec(TEST_STEPS, schedule),
        version=f"micro-{part}",
    )


def write_shapes_coco(root: Path, n: int, *, seed: int = 3, size: int = 64) -> Path:
    """``n`` shapes renders as a COCO captions set under ``root``; returns the captions file."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(n):
        img, caption, _ = make_example(seed, i, size=size)
        name = f"{i:04d}.png"
        img.save(root / "images" / name)
        images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
        annotations.append({"id": i + 1, "image_id": i + 1, "caption": caption})
    path = root / "captions.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path
