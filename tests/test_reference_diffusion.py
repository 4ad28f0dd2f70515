"""Parity with the public release: schedules, respacing, sampling steps, loss, guidance wiring."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from glide.diffusion import (
    create_gaussian_diffusion,
    get_named_beta_schedule,
    inpaint_denoised_fn,
    space_timesteps,
)
from glide.guidance import ClassifierFreeGuidance, CLIPGuidance
from tests.conftest import reference_dir

pytestmark = [pytest.mark.reference, pytest.mark.numerics]

TOL = {"rtol": 1e-4, "atol": 1e-4}


def _close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    ours = ours.expand_as(ref)
    err = (ours - ref).abs().max().item()
    assert torch.allclose(ours, ref, **TOL), f"max abs error {err:.3g}"


@pytest.fixture(scope="module")
def ref(ref_dir: Path) -> dict:
    return torch.load(ref_dir / "diffusion.pt", weights_only=True)


def test_betas(ref: dict) -> None:
    # Every schedule the file holds (not a fixed list: other reference files may hold others).
    assert ref["betas"], "no schedules in the reference file"
    for name, expected in ref["betas"].items():
        ours = torch.from_numpy(get_named_beta_schedule(name, len(expected)))
        assert torch.allclose(ours, expected.double(), rtol=1e-6, atol=0), name


def test_respacing(ref: dict) -> None:
    assert ref["respacing"], "no respacing entries in the reference file"
    for section, expected in ref["respacing"].items():
        assert sorted(space_timesteps(1000, section)) == list(expected), section


def _spaced_step_inputs(ref: dict) -> tuple:
    p = ref["p_mean_variance"]
    return create_gaussian_diffusion(timestep_respacing="100"), p["model_output"], p["x_t"], p["t"]


def test_p_mean_variance(ref: dict) -> None:
    diffusion, output, x, t = _spaced_step_inputs(ref)
    out = diffusion.p_mean_variance(lambda x_, t_: output, x, t, clip_denoised=True)
    for key in ("mean", "variance", "log_variance", "pred_xstart"):
        _close(out[key], ref["p_mean_variance"][key])


def test_ddim_step_eta0(ref: dict) -> None:
    diffusion, output, x, t = _spaced_step_inputs(ref)
    out = diffusion.ddim_sample(lambda x_, t_: output, x, t, eta=0.0)
    for key in ("sample", "pred_xstart"):
        _close(out[key], ref["ddim_step_eta0"][key])


def test_inpaint_denoised(ref: dict) -> None:
    diffusion, output, x, t = _spaced_step_inputs(ref)
    r = ref["inpaint_denoised"]
    paste = inpaint_denoised_fn(r["known"], r["mask"])
    out = diffusion.p_mean_variance(lambda x_, t_: output, x, t, denoised_fn=paste)
    for key in ("mean", "pred_xstart"):
        _close(out[key], r[key])


def test_training_losses(ref: dict) -> None:
    r = ref["training_losses"]
    diffusion = create_gaussian_diffusion()
    terms = diffusion.training_losses(
        lambda x_, t_: r["model_output"], r["x_start"], r["t"], noise=r["noise"]
    )
    for key in ("mse", "vb", "loss"):
        _close(terms[key], r[key])


CFG_FILES = sorted(p.name for p in reference_dir().glob("cfg_*.pt")) or ["cfg_base.pt"]
CLIP_FILES = sorted(p.name for p in reference_dir().glob("clip*.pt")) or ["clip.pt"]


@pytest.mark.parametrize("filename", CFG_FILES)
def test_classifier_free_guidance_on_base_unet(ref_dir: Path, filename: str) -> None:
    models = pytest.importorskip("glide.models")
    # cfg_<name>.pt guides the U-Net stored in unet_<name>.pt.
    unet = torch.load(ref_dir / filename.replace("cfg_", "unet_", 1), weights_only=True)
    cfg = torch.load(ref_dir / filename, weights_only=True)
    model = models.from_reference_config(unet["config"])
    model.load_state_dict(unet["state_dict"])
    model.eval()
    guided = ClassifierFreeGuidance(model, float(cfg["guidance_scale"]))
    with torch.no_grad():
        out = guided(cfg["x"], cfg["timesteps"], tokens=cfg["tokens"], mask=cfg["mask"])
    _close(out, cfg["output"])


@pytest.mark.parametrize("filename", CLIP_FILES)
def test_clip_guidance_gradient(ref_dir: Path, filename: str) -> None:
    models = pytest.importorskip("glide.models")
    ref = torch.load(ref_dir / filename, weights_only=True)
    image_config, _ = models.clip_configs_from_options(ref["config"])
    encoder = models.ImageEncoder(image_config)
    encoder.load_state_dict(ref["image_encoder"])
    encoder.eval()
    guide = CLIPGuidance(encoder, ref["text_emb"], grad_scale=1.0, logit_scale=100.0)
    _close(guide(ref["images"], ref["t"]), ref["guidance"]["grad"])
