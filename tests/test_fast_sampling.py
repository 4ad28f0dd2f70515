"""The fast sampling recipe: text caching is bit-identical, execution levers keep float32 results,
precision ``auto`` resolves from the hardware, and the release recipe stays the release."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from glide.guidance import ClassifierFreeGuidance, classifier_free_batch
from glide.models import set_attention_impl
from glide.models.unet import AttentionBlock
from glide.precision import Hardware, detect_hardware, read_cpu_flags, resolve_precision
from glide.sampling import (
    RECIPES,
    Cascade,
    Execution,
    GenerationConfig,
    get_recipe,
    parse_sampler,
    run_sampler,
)
from glide.sampling.recipes import prepare_model
from glide.training.run import resolve_precision as training_precision
from tests.test_sampling_support import micro_model

# ----------------------------------------------------------------------------- text caching


@pytest.fixture(scope="module")
def base():  # type: ignore[no-untyped-def]
    return micro_model("base")


@pytest.fixture(scope="module")
def upsampler():  # type: ignore[no-untyped-def]
    return micro_model("upsample")


def _cfg_kwargs(loaded, prompts: list[str]) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    tokens, mask = loaded.tokenizer.batch(prompts, loaded.text_ctx)
    empty, empty_mask = loaded.tokenizer.batch([""], loaded.text_ctx)
    return classifier_free_batch(
        {"tokens": tokens, "mask": mask}, {"tokens": empty, "mask": empty_mask}
    )


@pytest.mark.parametrize("impl", ["einsum", "sdpa"])
def test_cached_text_gives_bit_identical_guided_samples(base, impl: str) -> None:  # type: ignore[no-untyped-def]
    model = set_attention_impl(base.model, impl)
    kwargs = _cfg_kwargs(base, ["a red circle", "a blue star"])
    guided = ClassifierFreeGuidance(model, 3.0)

    def sample(model_kwargs: dict) -> torch.Tensor:
        return run_sampler(
            guided,
            (4, 3, 32, 32),
            diffusion=base.diffusion,
            sampler=parse_sampler("ancestral-4"),
            model_kwargs=model_kwargs,
            generator=torch.Generator().manual_seed(7),
        )

    with torch.no_grad():
        plain = sample(kwargs)
        text = model.condition(kwargs["tokens"], kwargs["mask"])
        cached = sample({"text": text})
    set_attention_impl(model, "einsum")
    assert plain.abs().max() > 0
    assert torch.equal(cached, plain)  # bit-identical, not merely close


def test_text_is_encoded_once_per_trajectory(base) -> None:  # type: ignore[no-untyped-def]
    model = base.model
    calls = {"transformer": 0, "encoder_kv": 0}
    layers = [m for m in model.modules() if isinstance(m, AttentionBlock)]
    assert layers, "the micro base has attention layers reading the text"
    hooks = [
        model.transformer.register_forward_hook(lambda *a: calls.__setitem__("transformer", 1 + calls["transformer"])),
        *[
            layer.encoder_kv.register_forward_hook(
                lambda *a: calls.__setitem__("encoder_kv", 1 + calls["encoder_kv"])
            )
            for layer in layers
        ],
    ]  # fmt: skip
    try:
        kwargs = _cfg_kwargs(base, ["a red circle"])
        with torch.no_grad():
            text = model.condition(kwargs["tokens"], kwargs["mask"])
            x = torch.randn(2, 3, 32, 32)
            for step in (40, 20, 0):
                model(x, torch.full((2,), step), text=text)
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == {"transformer": 1, "encoder_kv": len(layers)}
    with pytest.raises(ValueError, match="rows"):
        model(torch.randn(3, 3, 32, 32), torch.zeros(3, dtype=torch.long), text=text)


def test_cascade_execution_levers_keep_float32_samples(base, upsampler) -> None:  # type: ignore[no-untyped-def]
    cascade = Cascade(base, upsampler=upsampler)
    prompts = ["a green square"]
    config = GenerationConfig(
        guidance_scale=3.0,
        sampler=parse_sampler("dpm++-3"),
        upsample_sampler=parse_sampler("dpm++-2"),
        seed=2,
    )
    release = cascade.generate(prompts, config)
    cached = cascade.generate(prompts, GenerationConfig(**{**config.__dict__, "execution": Execution(cache_text=True, inference_mode=True)}))  # fmt: skip
    assert torch.equal(cached.final, release.final) and torch.equal(cached.base, release.base)
    fast = Execution(channels_last=True, attention="sdpa", cache_text=True, inference_mode=True)
    quick = cascade.generate(prompts, GenerationConfig(**{**config.__dict__, "execution": fast}))
    # channels_last and sdpa reorder float32 sums: at most one 8-bit level apart
    assert (quick.final.int() - release.final.int()).abs().max() <= 1
    # the models are switched back for the release recipe: bit-identical again
    again = cascade.generate(prompts, config)
    assert torch.equal(again.final, release.final)
    assert not base.model.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)


def test_fast_execution_single_step_matches_float32_closely(base) -> None:  # type: ignore[no-untyped-def]
    kwargs = _cfg_kwargs(base, ["a yellow star"])
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([30, 30])
    with torch.no_grad():
        ref = base.model(x, t, **kwargs)
        prepare_model(base.model, RECIPES["fast"].execution)
        try:
            with torch.inference_mode():
                text = base.model.condition(kwargs["tokens"], kwargs["mask"])
                out = base.model(x.contiguous(memory_format=torch.channels_last), t, text=text)
        finally:
            prepare_model(base.model, Execution())
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- recipes


def test_recipes() -> None:
    release, fast = get_recipe("release"), get_recipe("fast")
    assert (release.sampler.label, release.upsample_sampler.label) == ("ancestral-100", "fast27")
    assert release.execution == Execution()  # eager float32, einsum attention: the release
    assert fast.sampler.name == fast.upsample_sampler.name == "dpm++"
    assert fast.upsample_temperature == pytest.approx(0.997)
    assert fast.execution.precision == "auto" and fast.execution.cache_text
    balanced = get_recipe("balanced")  # glide sample's default: fast base, the release's upsampler
    assert (balanced.sampler, balanced.execution) == (fast.sampler, fast.execution)
    assert balanced.upsample_sampler == release.upsample_sampler
    from glide.cli import DEFAULT_RECIPE as CLI_DEFAULT
    from glide.sampling import DEFAULT_RECIPE

    assert CLI_DEFAULT == DEFAULT_RECIPE == "balanced"
    assert GenerationConfig().execution == release.execution  # the library default is unchanged
    with pytest.raises(ValueError, match="unknown recipe"):
        get_recipe("turbo")
    with pytest.raises(ValueError, match="precision"):
        Execution(precision="fp8")


# ----------------------------------------------------------------------------- precision auto

AVX512_BF16 = Hardware(cpu_flags=frozenset({"avx512f", "avx512_bf16"}), cpu_capability="AVX512")
AMX = Hardware(cpu_flags=frozenset({"avx512_bf16", "amx_bf16", "amx_tile"}))
PLAIN = Hardware(cpu_flags=frozenset({"avx2"}), cpu_capability="AVX2")
GPU = Hardware(cuda=True, cuda_bf16=True, cuda_name="H100")
OLD_GPU = Hardware(cuda=True, cuda_bf16=False)


@pytest.mark.parametrize(
    ("hardware", "device", "expected"),
    [
        (AMX, "cpu", "bf16"),
        (AVX512_BF16, "cpu", "fp32"),  # bf16 instructions but no bf16 matrix units: slower
        (PLAIN, "cpu", "fp32"),
        (GPU, "cuda", "bf16"),
        (OLD_GPU, "cuda", "fp32"),
        (GPU, "cpu", "fp32"),  # a GPU in the machine does not make the CPU path bf16
    ],
)
def test_precision_auto_from_hardware(hardware: Hardware, device: str, expected: str) -> None:
    choice = resolve_precision("auto", device, hardware=hardware)
    assert choice.name == expected and choice.reason
    assert choice.dtype == (torch.bfloat16 if expected == "bf16" else None)
    assert choice.lightning == ("bf16-mixed" if expected == "bf16" else "32-true")


def test_precision_explicit_and_lightning_names() -> None:
    assert resolve_precision("bf16", hardware=PLAIN).name == "bf16"
    assert resolve_precision("32-true", hardware=AMX).name == "fp32"
    assert resolve_precision("bf16-mixed").lightning == "bf16-mixed"
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision("fp8")
    with resolve_precision("bf16").autocast():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled(
            "cpu"
        )
    with resolve_precision("fp32").autocast():
        assert not torch.is_autocast_enabled("cpu")


def test_training_precision_auto_uses_the_shared_resolver() -> None:
    assert training_precision("auto", hardware=AMX) == "bf16-mixed"
    assert training_precision("auto", hardware=AVX512_BF16) == "32-true"
    assert training_precision("auto", hardware=GPU) == "bf16-mixed"
    assert training_precision("auto", accelerator="cpu", hardware=GPU) == "32-true"
    assert training_precision("16-mixed", hardware=GPU) == "16-mixed"  # Lightning's, as given


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16\n\n")
    assert read_cpu_flags(info) == {"fpu", "avx512f", "avx512_bf16", "amx_bf16"}
    assert read_cpu_flags(tmp_path / "missing") == frozenset()
    hw = detect_hardware(cpuinfo=info, cuda=False)
    assert hw.cpu_amx and hw.cpu_native_bf16 and not hw.cuda
    assert "AMX" in hw.describe() and hw.as_dict()["amx_bf16"] is True
    assert resolve_precision("auto", hardware=hw).name == "bf16"
