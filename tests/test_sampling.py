"""Samplers, the cascade (guidance, seeds, upsampling, inpainting) and PNG output, on micro
random-weight models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glide.diffusion import ImageGenerators, image_seed
from glide.guidance import CLIPGuidance
from glide.sampling import (
    Cascade,
    DiffusionSpec,
    GenerationConfig,
    InpaintInputs,
    SamplerSpec,
    output_paths,
    parse_sampler,
    quantize,
    run_sampler,
    sampler_diffusion,
    save_samples,
    to_pil,
)
from tests.test_sampling_support import micro_model


def test_parse_sampler_names_and_steps() -> None:
    assert parse_sampler("ancestral") == SamplerSpec("ancestral", 100)
    assert parse_sampler("ddim-25") == SamplerSpec("ddim", 25)
    assert parse_sampler("ddim25") == SamplerSpec("ddim", 25)
    assert parse_sampler("dpm++", 15).label == "dpm++-15"
    assert parse_sampler("fast27").label == "fast27" and parse_sampler("fast27").steps == 27
    for bad in ("euler", "fast27-10", "ddim-x"):
        with pytest.raises(ValueError, match="unknown sampler"):
            parse_sampler(bad)


def test_sampler_diffusion_respacing() -> None:
    spec = DiffusionSpec(1000, "squaredcos_cap_v2")
    assert sampler_diffusion(spec, parse_sampler("ancestral-100")).num_timesteps == 100
    assert sampler_diffusion(spec, parse_sampler("fast27")).num_timesteps == 27
    ddim = sampler_diffusion(spec, parse_sampler("ddim-50"))
    assert ddim.num_timesteps == 50 and ddim.timestep_map[:3].tolist() == [0, 20, 40]
    # no integer stride gives 6 of 10 steps: fall back to even spacing
    assert sampler_diffusion(DiffusionSpec(10), parse_sampler("ddim-6")).num_timesteps == 6
    assert sampler_diffusion(spec, parse_sampler("dpm++-10")).num_timesteps == 1000
    with pytest.raises(ValueError, match="more steps"):
        sampler_diffusion(DiffusionSpec(50), parse_sampler("ancestral-100"))


def test_dpm_solver_refuses_clip_guidance() -> None:
    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.cat([x * 0, x * 0], dim=1)

    with pytest.raises(ValueError, match="cond_fn"):
        run_sampler(
            model,
            (1, 3, 4, 4),
            diffusion=DiffusionSpec(10),
            sampler=parse_sampler("dpm++-3"),
            cond_fn=lambda x, t, **kw: x,
        )


def test_quantize_rounds_to_8_bits() -> None:
    x = torch.linspace(-1.2, 1.2, 1001)
    q = quantize(x)
    levels = (q + 1) * 127.5
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    assert float(q.min()) == -1.0 and float(q.max()) == 1.0
    assert float((q - x.clamp(-1, 1)).abs().max()) <= 1 / 255 + 1e-6


@pytest.fixture(scope="module")
def base():  # type: ignore[no-untyped-def]
    return micro_model("base")


def test_cascade_is_seeded_and_scale_one_is_plain_conditional(base) -> None:  # type: ignore[no-untyped-def]
    cascade = Cascade(base)
    config = GenerationConfig(
        guidance_scale=1.0, sampler=parse_sampler("ddim-3"), upsample=False, seed=4
    )
    prompts = ["a red circle", "a blue star"]
    first = cascade.generate(prompts, config)
    again = cascade.generate(prompts, config)
    other = cascade.generate(prompts, GenerationConfig(**{**config.__dict__, "seed": 5}))
    assert first.base.shape == (2, 3, 32, 32) and first.base.dtype == torch.uint8
    assert torch.equal(first.base, again.base) and torch.equal(first.final, first.base)
    assert not torch.equal(first.base, other.base)
    # scale 1: the conditional model alone, from the same noise (one generator per image)
    tokens, mask = base.tokenizer.batch(prompts, base.text_ctx)
    direct = run_sampler(
        base.model,
        (2, 3, 32, 32),
        diffusion=base.diffusion,
        sampler=parse_sampler("ddim-3"),
        model_kwargs={"tokens": tokens, "mask": mask},
        generator=ImageGenerators.seeded([image_seed(4, 0, 0), image_seed(4, 1, 0)]),
    )
    assert torch.equal(((direct + 1) * 127.5).round().clamp(0, 255).to(torch.uint8), first.base)
    guided = cascade.generate(
        prompts, GenerationConfig(**{**config.__dict__, "guidance_scale": 3.0})
    )
    assert not torch.equal(guided.base, first.base)


def test_cascade_upsamples_quantised_low_res_with_temperature(
    base, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    up = micro_model("upsample")
    seen: dict[str, object] = {}
    import glide.sampling.cascade as cascade_module

    real = cascade_module.run_sampler

    def spy(model, shape, **kwargs):  # type: ignore[no-untyped-def]
        if "low_res" in (kwargs.get("model_kwargs") or {}):
            seen.update(low_res=kwargs["model_kwargs"]["low_res"], temp=kwargs["noise_temperature"])
        return real(model, shape, **kwargs)

    monkeypatch.setattr(cascade_module, "run_sampler", spy)
    config = GenerationConfig(
        guidance_scale=2.0,
        sampler=parse_sampler("dpm++-2"),
        upsample_sampler=parse_sampler("dpm++-2"),
    )
    out = Cascade(base, upsampler=up).generate(["a green square"], config)
    assert out.base.shape == (1, 3, 32, 32) and out.final.shape == (1, 3, 64, 64)
    low = seen["low_res"]
    assert isinstance(low, torch.Tensor)
    assert torch.equal(((low + 1) * 127.5).round().to(torch.uint8), out.base)
    assert seen["temp"] == pytest.approx(0.997)


def test_clip_guidance_changes_samples(base) -> None:  # type: ignore[no-untyped-def]
    clip = micro_model("clip")
    cascade = Cascade(base, clip=clip)
    config = GenerationConfig(
        guidance_scale=1.0, sampler=parse_sampler("ancestral-3"), upsample=False
    )
    plain = cascade.generate(["a red circle"], config)
    guided = cascade.generate(
        ["a red circle"], GenerationConfig(**{**config.__dict__, "clip_guidance_scale": 50.0})
    )
    assert not torch.equal(plain.base, guided.base)
    with pytest.raises(ValueError, match="noised CLIP"):
        Cascade(base).generate(
            ["x"], GenerationConfig(**{**config.__dict__, "clip_guidance_scale": 1.0})
        )
    assert CLIPGuidance  # the cond_fn used inside


def test_inpainting_keeps_the_known_region() -> None:
    model = micro_model("base_inpaint")
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[:, :20] = 255  # keep the left part
    inputs = InpaintInputs.from_pil(image, Image.fromarray(mask), low=32, high=32)
    config = GenerationConfig(guidance_scale=3.0, sampler=parse_sampler("ddim-3"), upsample=False)
    out = Cascade(model).generate(["a blue star"], config, inpaint=inputs)
    result = out.final[0].permute(1, 2, 0).numpy()
    assert np.array_equal(result[:, :20], np.asarray(image)[:, :20])
    assert not np.array_equal(result[:, 20:], np.asarray(image)[:, 20:])
    inverted = InpaintInputs.from_pil(image, Image.fromarray(mask), low=32, high=32, invert=True)
    assert float(inverted.mask_lr[..., :20].sum()) == 0.0


def test_save_samples_writes_grid_and_images_with_metadata(tmp_path: Path) -> None:
    images = to_pil(torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8))
    meta = {"prompt": "a red circle", "seed": 7, "sampler": "fast27", "model_version": "v1"}
    grid, paths = save_samples(images, tmp_path / "out.png", meta)
    assert grid == tmp_path / "out.png" and [p.name for p in paths] == [
        "out_000.png", "out_001.png", "out_002.png",
    ]  # fmt: skip
    with Image.open(grid) as g:
        assert g.size == (16, 16) and g.text["prompt"] == "a red circle"
        assert "index" not in g.text and g.text["software"].startswith("glide")
    with Image.open(paths[2]) as im:
        assert (
            im.text["index"] == "2" and im.text["seed"] == "7" and im.text["model_version"] == "v1"
        )
        assert np.array_equal(np.asarray(im), np.asarray(images[2]))
    assert output_paths(tmp_path / "dir", 2) == (
        tmp_path / "dir" / "grid.png",
        [tmp_path / "dir" / "000.png", tmp_path / "dir" / "001.png"],
    )
