"""Execution modes change speed, not results: bf16 autocast and channels_last stay within bounds."""

from __future__ import annotations

import torch

from glide.models import from_openai_options, load_preset
from glide.models.nn import BF16_TOLERANCE, perturb_


def _tiny_base_and_inputs() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    options = load_preset("tiny")["base"]
    torch.manual_seed(0)
    model = perturb_(from_openai_options(options)).eval()
    ctx = options["text_ctx"]
    mask = torch.zeros(2, ctx, dtype=torch.bool)
    mask[:, :7] = True
    inputs = {
        "x": torch.randn(2, 3, 64, 64),
        "timesteps": torch.tensor([10, 900]),
        "tokens": torch.randint(0, options["n_vocab"], (2, ctx)),
        "mask": mask,
    }
    return model, inputs


def test_perturbed_model_has_signal() -> None:
    model, inputs = _tiny_base_and_inputs()
    with torch.no_grad():
        assert model(**inputs).std() > 1e-3


def test_bf16_autocast_within_documented_tolerance() -> None:
    model, inputs = _tiny_base_and_inputs()
    with torch.no_grad():
        ref = model(**inputs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(**inputs).float()
    rel = float((out - ref).pow(2).mean().sqrt() / ref.std())
    assert 0 < rel <= BF16_TOLERANCE  # > 0: autocast really ran in reduced precision


def test_channels_last_matches_float32() -> None:
    model, inputs = _tiny_base_and_inputs()
    with torch.no_grad():
        ref = model(**inputs)
        model = model.to(memory_format=torch.channels_last)
        x = inputs["x"].contiguous(memory_format=torch.channels_last)
        out = model(**{**inputs, "x": x})
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
