"""Presets in conf/model build, and their parameter counts are pinned (big ones on `meta`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from glide.models import clip_from_openai_options, from_openai_options, load_preset
from glide.text import CLIPTokenizer


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_meta(options: dict) -> torch.nn.Module:
    with torch.device("meta"):
        return from_openai_options(options)


@pytest.mark.parametrize("name", ["tiny", "filtered", "paper"])
def test_preset_parameter_counts(name: str) -> None:
    preset = load_preset(name)
    for part, expected in preset["n_params"].items():
        if part.startswith("clip_"):
            with torch.device("meta"):
                clip = clip_from_openai_options(preset["clip"])
            module = clip.image_encoder if part == "clip_image" else clip.text_encoder
        else:
            module = build_meta(preset[part])
        assert n_params(module) == expected, (name, part)


def test_tiny_is_tiny_and_uses_clip_vocab() -> None:
    preset = load_preset("tiny")
    assert preset["tokenizer"] == "clip"
    assert preset["base"]["n_vocab"] == CLIPTokenizer().n_vocab
    assert 1_000_000 <= preset["n_params"]["base"] <= 4_000_000


def test_presets_match_release_manifest(ref_dir: Path) -> None:
    manifest = json.loads((ref_dir / "release_manifest.json").read_text())
    filtered, paper = load_preset("filtered"), load_preset("paper")
    for part, release in [
        ("base", "base"),
        ("base_inpaint", "base-inpaint"),
        ("upsample", "upsample"),
        ("upsample_inpaint", "upsample-inpaint"),
    ]:
        assert n_params(build_meta(filtered[part])) == manifest[release]["n_params"]
    assert n_params(build_meta(paper["base"])) == manifest["paper-base-guess"]["n_params"]
    assert 1.45e9 <= paper["n_params"]["upsample"] <= 1.55e9
