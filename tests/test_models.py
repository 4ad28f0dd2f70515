"""Unit tests of the GLIDE networks on tiny random configurations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from glide.models import (
    InpaintText2ImUNet,
    SuperResInpaintText2ImUNet,
    SuperResText2ImUNet,
    Text2ImUNet,
    clip_from_openai_options,
    from_openai_options,
    load_openai_checkpoint,
    set_attention_impl,
    timestep_embedding,
)
from glide.models.nn import attention

SMALL: dict[str, Any] = {
    "image_size": 32,
    "num_channels": 32,
    "num_res_blocks": 1,
    "channel_mult": "1,2",
    "attention_resolutions": "16",
    "num_head_channels": 16,
    "dropout": 0.0,
    "text_ctx": 8,
    "xf_width": 32,
    "xf_layers": 1,
    "xf_heads": 2,
    "n_vocab": 50,
}


def inputs(batch: int = 2, size: int = 32, ctx: int = 8) -> dict[str, torch.Tensor]:
    mask = torch.ones(batch, ctx, dtype=torch.bool)
    mask[0, 3:] = False
    return {
        "x": torch.randn(batch, 3, size, size),
        "timesteps": torch.randint(0, 1000, (batch,)),
        "tokens": torch.randint(0, 50, (batch, ctx)),
        "mask": mask,
    }


def variant_kwargs(model: Text2ImUNet, batch: int = 2, size: int = 32) -> dict[str, torch.Tensor]:
    kw: dict[str, torch.Tensor] = {}
    if isinstance(model, (SuperResText2ImUNet, SuperResInpaintText2ImUNet)):
        kw["low_res"] = torch.randn(batch, 3, size // 4, size // 4)
    if isinstance(model, (InpaintText2ImUNet, SuperResInpaintText2ImUNet)):
        kw["inpaint_image"] = torch.randn(batch, 3, size, size)
        kw["inpaint_mask"] = (torch.rand(batch, 1, size, size) > 0.5).float()
    return kw


def randomize_zero_layers(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(std=0.05)


VARIANTS = [
    ({}, Text2ImUNet, 3),
    ({"inpaint": True}, InpaintText2ImUNet, 7),
    ({"super_res": True}, SuperResText2ImUNet, 6),
    ({"inpaint": True, "super_res": True}, SuperResInpaintText2ImUNet, 10),
]


@pytest.mark.parametrize(("flags", "cls", "in_ch"), VARIANTS)
def test_variants_shapes_and_zero_output_at_init(flags: dict, cls: type, in_ch: int) -> None:
    model = from_openai_options({**SMALL, **flags})
    assert type(model) is cls
    assert model.input_blocks[0][0].in_channels == in_ch
    out = model(**inputs(), **variant_kwargs(model))
    assert out.shape == (2, 6, 32, 32)
    assert torch.count_nonzero(out) == 0  # the final convolution is zero-initialised
    for name, p in model.named_parameters():  # as are every residual branch's output layers
        if name.endswith(("out_layers.3.weight", "proj_out.weight", "out.2.weight")):
            assert not p.any(), name


@pytest.mark.parametrize(
    "overrides",
    [
        {"use_scale_shift_norm": False, "resblock_updown": False},
        {"xf_padding": False, "xf_final_ln": False, "num_head_channels": -1, "num_heads": 2},
        {"xf_width": 0},
        {"channel_mult": "1,1,2", "attention_resolutions": "32,8", "num_res_blocks": 2},
    ],
)
def test_option_variants_run_and_train(overrides: dict) -> None:
    model = from_openai_options({**SMALL, **overrides})
    randomize_zero_layers(model)
    inp = inputs()
    if not model.text_config.xf_width:
        inp.pop("tokens"), inp.pop("mask")
    out = model(**inp)
    assert out.shape == (2, 6, 32, 32) and torch.isfinite(out).all()
    out.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert no_grad == []


def test_gradient_reaches_every_parameter_and_padding_embedding() -> None:
    model = from_openai_options({**SMALL, "super_res": True, "inpaint": True})
    randomize_zero_layers(model)
    out = model(**inputs(), **variant_kwargs(model))
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.numerics
def test_text_changes_output_and_padding_positions_are_ignored() -> None:
    model = from_openai_options(SMALL).eval()
    randomize_zero_layers(model)
    inp = inputs()
    with torch.no_grad():
        base = model(**inp)
        other = dict(inp, tokens=inp["tokens"].clone())
        other["tokens"][0, 5:] = (other["tokens"][0, 5:] + 1) % 50  # padded: replaced by embedding
        torch.testing.assert_close(model(**other), base)
        other["tokens"][0, 0] = (other["tokens"][0, 0] + 1) % 50  # a real token
        assert not torch.allclose(model(**other)[0], base[0])


@pytest.mark.numerics
def test_sdpa_and_einsum_attention_agree() -> None:
    model = from_openai_options(SMALL).eval()
    randomize_zero_layers(model)
    inp = inputs()
    with torch.no_grad():
        ref = model(**inp)
        set_attention_impl(model, "sdpa")
        torch.testing.assert_close(model(**inp), ref, rtol=1e-4, atol=1e-5)
    q, k, v = (torch.randn(2, 3, 7, 16) for _ in range(3))
    for causal in (False, True):
        torch.testing.assert_close(
            attention(q, k, v, impl="einsum", causal=causal),
            attention(q, k, v, impl="sdpa", causal=causal),
            rtol=1e-5,
            atol=1e-5,
        )
    with pytest.raises(ValueError, match="attention impl"):
        set_attention_impl(model, "flash")


@pytest.mark.numerics
def test_gradient_checkpointing_gives_same_gradients() -> None:
    torch.manual_seed(0)
    plain = from_openai_options(SMALL)
    randomize_zero_layers(plain)
    ckpt = from_openai_options({**SMALL, "use_checkpoint": True})
    ckpt.load_state_dict(plain.state_dict())
    inp = inputs()
    for m in (plain, ckpt):
        m(**inp).square().mean().backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


@pytest.mark.numerics
def test_bf16_autocast_forward() -> None:
    model = from_openai_options(SMALL)
    randomize_zero_layers(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**inputs())
    assert out.shape == (2, 6, 32, 32) and torch.isfinite(out.float()).all()


def test_timestep_embedding() -> None:
    t = torch.tensor([0, 10, 999])
    emb = timestep_embedding(t, 7)
    assert emb.shape == (3, 7)
    torch.testing.assert_close(emb[0, :3], torch.ones(3))  # cos(0)
    torch.testing.assert_close(emb[:, 6], torch.zeros(3))  # odd dims are zero-padded
    assert timestep_embedding(torch.tensor([2.5]), 8).shape == (1, 8)


def test_options_errors_and_defaults() -> None:
    with pytest.raises(ValueError, match="unknown model options"):
        from_openai_options({**SMALL, "num_chanels": 3})
    with pytest.raises(ValueError, match="channel_mult"):
        from_openai_options({**SMALL, "image_size": 48, "channel_mult": ""})
    # diffusion / runtime options of the release's dict are accepted and ignored
    from_openai_options(
        {**SMALL, "diffusion_steps": 1000, "use_fp16": True, "cache_text_emb": False}
    )


def test_load_openai_checkpoint(tmp_path: Path) -> None:
    model = from_openai_options(SMALL)
    path = tmp_path / "base.pt"
    torch.save(model.state_dict(), path)
    loaded = load_openai_checkpoint(path, SMALL)
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        load_openai_checkpoint(tmp_path / "missing.pt", SMALL)
    torch.save({**model.state_dict(), "extra": torch.zeros(1)}, path)
    with pytest.raises(RuntimeError, match="extra"):
        load_openai_checkpoint(path, SMALL)


def test_noised_clip_shapes_and_guidance() -> None:
    clip = clip_from_openai_options(
        {
            "image_size": 32,
            "patch_size": 8,
            "n_embd": 16,
            "n_vocab": 30,
            "max_text_len": 6,
            "n_head_text": 2,
            "n_head_state_text": 8,
            "n_xf_blocks_text": 1,
            "n_head_image": 2,
            "n_head_state_image": 8,
            "n_xf_blocks_image": 1,
        }
    )
    images, t = torch.rand(2, 3, 32, 32) * 2 - 1, torch.tensor([0, 999])
    tokens, lens = torch.randint(0, 30, (2, 6)), torch.tensor([2, 6])
    assert clip.image_encoder(images, t).shape == (2, 16)
    z_t = clip.text_embeddings(tokens, lens)
    torch.testing.assert_close(z_t.norm(dim=-1), torch.ones(2))
    # causal: tokens after the read-out position do not matter
    changed = tokens.clone()
    changed[0, 2:] = (changed[0, 2:] + 1) % 30
    torch.testing.assert_close(
        clip.text_encoder(changed, lens)[0], clip.text_encoder(tokens, lens)[0]
    )
    grad = clip.guidance_grad(images, t, z_t)
    assert grad.shape == images.shape and grad.abs().sum() > 0
    with pytest.raises(ValueError, match="timesteps"):
        clip.image_encoder(images)
