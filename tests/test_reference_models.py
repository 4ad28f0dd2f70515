"""Parity with the public release (openai/glide-text2im) through its reference tensors.

Every ``unet_*.pt`` in the reference directory is built from its own ``config``, loaded strictly
and run; the noised CLIP likewise; the release manifest pins every checkpoint's key and shape.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from glide.models import (
    clip_configs_from_options,
    clip_image_encoder_from_openai_options,
    clip_text_encoder_from_openai_options,
    from_openai_options,
    from_reference_config,
    set_attention_impl,
)
from glide.models.clip import NoisedCLIP
from tests.conftest import reference_dir

pytestmark = [pytest.mark.reference, pytest.mark.numerics]
TOL = {"rtol": 1e-4, "atol": 1e-4}
UNET_FILES = sorted(p.name for p in reference_dir().glob("unet_*.pt")) or ["unet_*.pt"]
CLIP_FILES = sorted(p.name for p in reference_dir().glob("clip*.pt")) or ["clip.pt"]
MANIFEST_MODELS = [
    "base",
    "base-inpaint",
    "upsample",
    "upsample-inpaint",
    "clip-image-enc",
    "clip-text-enc",
]


def load(path: Path) -> dict:
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("filename", UNET_FILES)
def test_unet_matches_reference(ref_dir: Path, filename: str) -> None:
    ref = load(ref_dir / filename)
    inputs = ref["inputs"]
    model = from_reference_config(
        ref["config"], inpaint="inpaint_image" in inputs, super_res="low_res" in inputs
    ).eval()
    model.load_state_dict(ref["state_dict"], strict=True)
    with torch.no_grad():
        out = model(**inputs)
    torch.testing.assert_close(out, ref["output"], **TOL)
    counts_file = ref_dir / "tiny_param_counts.json"
    if counts_file.is_file():
        expected = json.loads(counts_file.read_text()).get(f"{Path(filename).stem}_tiny_params")
        if expected is not None:
            assert sum(p.numel() for p in model.parameters()) == expected


def test_sdpa_attention_matches_reference(ref_dir: Path) -> None:
    ref = load(ref_dir / "unet_base.pt")
    model = from_reference_config(ref["config"]).eval()
    model.load_state_dict(ref["state_dict"], strict=True)
    set_attention_impl(model, "sdpa")
    with torch.no_grad():
        out = model(**ref["inputs"])
    torch.testing.assert_close(out, ref["output"], **TOL)


@pytest.mark.parametrize("filename", CLIP_FILES)
def test_noised_clip_matches_reference(ref_dir: Path, filename: str) -> None:
    ref = load(ref_dir / filename)
    image_cfg, text_cfg = clip_configs_from_options(ref["config"])
    clip = NoisedCLIP(image_cfg, text_cfg).eval()
    clip.image_encoder.load_state_dict(ref["image_encoder"], strict=True)
    clip.text_encoder.load_state_dict(ref["text_encoder"], strict=True)
    for impl in ("einsum", "sdpa"):
        set_attention_impl(clip, impl)
        with torch.no_grad():
            torch.testing.assert_close(
                clip.image_encoder(ref["images"], ref["t"]), ref["image_emb"], **TOL
            )
            text_emb = clip.text_encoder(ref["tokens"], ref["lens"])
            torch.testing.assert_close(text_emb, ref["text_emb"], **TOL)
    grad = clip.guidance_grad(
        ref["images"], ref["t"], clip.text_embeddings(ref["tokens"], ref["lens"])
    )
    torch.testing.assert_close(grad, ref["guidance"]["grad"], **TOL)


@pytest.mark.parametrize("name", MANIFEST_MODELS)
def test_release_manifest_layout(ref_dir: Path, name: str) -> None:
    entry = json.loads((ref_dir / "release_manifest.json").read_text())[name]
    with torch.device("meta"):
        if name == "clip-image-enc":
            model = clip_image_encoder_from_openai_options(entry["options"])
        elif name == "clip-text-enc":
            model = clip_text_encoder_from_openai_options(entry["options"])
        else:
            model = from_openai_options(entry["options"])
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == entry["shapes"]
    assert sum(p.numel() for p in model.parameters()) == entry["n_params"]
    # strict loading of a state dict with exactly the manifest's layout succeeds
    fake = {k: torch.empty(s, device="meta") for k, s in entry["shapes"].items()}
    model.load_state_dict(fake, strict=True, assign=True)


def test_paper_base_guess_parameter_count(ref_dir: Path) -> None:
    entry = json.loads((ref_dir / "release_manifest.json").read_text())["paper-base-guess"]
    with torch.device("meta"):
        model = from_openai_options(entry["options"])
    assert sum(p.numel() for p in model.parameters()) == entry["n_params"]
    text = (
        "transformer",
        "token_embedding",
        "positional_embedding",
        "padding_embedding",
        "final_ln",
    )
    visual = sum(p.numel() for k, p in model.named_parameters() if not k.startswith(text))
    if "n_params_not_text_encoder" in entry:
        assert visual == entry["n_params_not_text_encoder"]


def test_every_reference_file_is_checked(ref_dir: Path) -> None:
    """Each ``*.pt`` belongs to a family that some parity test globs (a new family fails here)."""
    families = ("unet_", "clip", "cfg_", "diffusion")
    unchecked = [p.name for p in ref_dir.glob("*.pt") if not p.name.startswith(families)]
    assert not unchecked, f"reference files no parity test reads: {unchecked}"
