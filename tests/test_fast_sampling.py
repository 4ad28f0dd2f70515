"""The fast sampling recipe: text caching is bit-identical, execution levers keep float32 results,
precision ``auto`` is decided by timing (the flags only rule out emulated bf16), and the release
recipe stays the release."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from glide.guidance import ClassifierFreeGuidance, classifier_free_batch
from glide.models import set_attention_impl
from glide.models.unet import AttentionBlock
from glide.precision import (
    Hardware,
    Measurement,
    Workload,
    detect_hardware,
    read_cpu_flags,
    resolve_precision,
)
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


@pytest.mark.numerics
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


# One network call of the fast execution against the release execution on the same inputs.
# channels_last and sdpa compute the same sums in another order, so each output differs by
# float32 round-off: a reordered K-term sum moves by at most ~K·eps of its magnitude, the micro
# networks chain ~30 such layers with K <= 3·3·64, and errors that large never survive the
# normalisations, so the relative RMS of one call stays far inside 2^10·eps ≈ 1.2e-4 (measured:
# ~1e-7 to 1e-6 with AVX-512, AVX2 and the default kernels). A whole guided trajectory is not
# compared pixel by pixel: a round-off difference at one step is amplified by the guidance and
# the sampler by a factor that depends on the CPU's kernels (7 8-bit levels under AVX2 where
# AVX-512 gave 1), so it is no property of the code.
STEP_RTOL = 2**10 * torch.finfo(torch.float32).eps


def _rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


@pytest.mark.numerics
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
    # Caching the text and inference_mode run the very same kernels: bit-identical.
    cached = cascade.generate(prompts, GenerationConfig(**{**config.__dict__, "execution": Execution(cache_text=True, inference_mode=True)}))  # fmt: skip
    assert torch.equal(cached.final, release.final) and torch.equal(cached.base, release.base)

    # channels_last + sdpa: every network call of the fast trajectory, replayed with the release
    # execution on the same inputs, agrees to float32 round-off.
    fast = Execution(channels_last=True, attention="sdpa", cache_text=True, inference_mode=True)
    errors: dict[str, list[float]] = {"base": [], "upsample": []}
    replaying = False
    fast_layout: list[bool] = []

    def replay(name: str):  # type: ignore[no-untyped-def]
        def hook(module, args, kwargs, output):  # type: ignore[no-untyped-def]
            nonlocal replaying
            if replaying:
                return
            replaying = True
            fast_layout.append(
                module.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)
            )
            try:
                prepare_model(module, Execution())
                ref = module(*(a.contiguous() for a in args), **kwargs)
                errors[name].append(_rel_rms(output, ref))
            finally:
                prepare_model(module, fast)
                replaying = False

        return hook

    hooks = [
        base.model.register_forward_hook(replay("base"), with_kwargs=True),
        upsampler.model.register_forward_hook(replay("upsample"), with_kwargs=True),
    ]
    try:
        cascade.generate(prompts, GenerationConfig(**{**config.__dict__, "execution": fast}))
    finally:
        for h in hooks:
            h.remove()
    assert len(errors["base"]) >= 3 and len(errors["upsample"]) >= 2, errors
    assert max(errors["base"] + errors["upsample"]) < STEP_RTOL, errors
    assert all(fast_layout), "the replayed calls ran the fast execution"

    # the models are switched back for the release recipe: bit-identical again
    again = cascade.generate(prompts, config)
    assert torch.equal(again.final, release.final)
    assert not base.model.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.numerics
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

AVX512_BF16 = Hardware(
    cpu_flags=frozenset({"avx512f", "avx512_bf16"}), cpu_capability="AVX512", cpu_name="Zen 4"
)
AMX = Hardware(cpu_flags=frozenset({"avx512_bf16", "amx_bf16", "amx_tile"}), cpu_name="SPR")
PLAIN = Hardware(cpu_flags=frozenset({"avx2"}), cpu_capability="AVX2")
GPU = Hardware(cuda=True, cuda_bf16=True, cuda_name="H100")
OLD_GPU = Hardware(cuda=True, cuda_bf16=False)


class FakeTimer:
    """Stands in for :func:`glide.precision.measure`: fixed timings, counted calls."""

    def __init__(self, fp32_s: float, bf16_s: float, rel_error: float | None = 0.01) -> None:
        self.result = Measurement(fp32_s, bf16_s, rel_error)
        self.calls: list[tuple[Workload, str]] = []

    def __call__(self, workload: Workload, device_type: str) -> Measurement:
        self.calls.append((workload, device_type))
        return self.result


def _linear_workload() -> Workload:
    return Workload([(torch.nn.Linear(4, 4), {"input": torch.randn(2, 4)})], label="linear")


FAST_BF16 = (0.010, 0.005)  # bf16 2x faster
SLOW_BF16 = (0.005, 0.010)  # bf16 0.5x: the avx512_bf16 Xeon


@pytest.mark.parametrize(
    ("hardware", "device", "timings", "expected"),
    [
        # with bf16 arithmetic the flags do not decide, the timings do
        (AMX, "cpu", FAST_BF16, "bf16"),
        (AMX, "cpu", SLOW_BF16, "fp32"),
        (AVX512_BF16, "cpu", FAST_BF16, "bf16"),  # Zen 4: faster
        (AVX512_BF16, "cpu", SLOW_BF16, "fp32"),  # the Xeon: slower
        (GPU, "cuda", FAST_BF16, "bf16"),
        (GPU, "cuda", SLOW_BF16, "fp32"),
        # emulated bf16 (no bf16 flags on a CPU) and GPUs without bf16: fp32, never timed
        (PLAIN, "cpu", FAST_BF16, "fp32"),
        (OLD_GPU, "cuda", FAST_BF16, "fp32"),
    ],
)
def test_precision_auto_is_measured(
    hardware: Hardware, device: str, timings: tuple[float, float], expected: str, tmp_path: Path
) -> None:
    timer = FakeTimer(*timings)
    choice = resolve_precision(
        "auto",
        device,
        hardware=hardware,
        workload=_linear_workload,
        timer=timer,
        cache=tmp_path / "precision.json",
    )
    assert choice.name == expected and choice.reason
    assert choice.device_type == device
    assert choice.dtype == (torch.bfloat16 if expected == "bf16" else None)
    assert choice.lightning == ("bf16-mixed" if expected == "bf16" else "32-true")
    untimed = hardware in (PLAIN, OLD_GPU)
    assert len(timer.calls) == (0 if untimed else 1)
    assert ("not timed" in choice.reason) == untimed
    if not untimed:
        assert timer.calls[0][1] == device
        assert choice.measurement == timer.result and "per forward" in choice.reason


def test_precision_explicit_and_lightning_names() -> None:
    def never(workload: Workload, device_type: str) -> Measurement:
        raise AssertionError("forced precisions are not timed")

    assert resolve_precision("bf16", hardware=PLAIN, timer=never).name == "bf16"
    assert resolve_precision("32-true", hardware=AMX, timer=never).name == "fp32"
    assert resolve_precision("bf16-mixed", timer=never).lightning == "bf16-mixed"
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision("fp8")
    with resolve_precision("bf16").autocast():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled(
            "cpu"
        )
    with resolve_precision("fp32").autocast():
        assert not torch.is_autocast_enabled("cpu")


def test_training_precision_auto_uses_the_shared_resolver() -> None:
    fast, slow = FakeTimer(*FAST_BF16), FakeTimer(*SLOW_BF16)
    assert training_precision("auto", hardware=AMX, timer=fast) == "bf16-mixed"
    assert training_precision("auto", hardware=AVX512_BF16, timer=slow) == "32-true"
    assert training_precision("auto", hardware=PLAIN, timer=fast) == "32-true"  # emulated
    assert training_precision("auto", hardware=GPU, timer=fast) == "bf16-mixed"
    assert fast.calls[-1][1] == "cuda"
    # accelerator=cpu on a GPU machine: the CPU decides (its flags are unknown here: timed)
    assert training_precision("auto", accelerator="cpu", hardware=GPU, timer=slow) == "32-true"
    assert slow.calls[-1][1] == "cpu"
    assert training_precision("fp32", hardware=GPU, timer=fast) == "32-true"  # forced
    assert training_precision("bf16", hardware=PLAIN, timer=slow) == "bf16-mixed"
    assert training_precision("16-mixed", hardware=GPU) == "16-mixed"  # Lightning's, as given


def test_cascade_times_its_own_networks(base, upsampler) -> None:  # type: ignore[no-untyped-def]
    cascade = Cascade(base, upsampler=upsampler)
    fast = Execution(channels_last=True, attention="sdpa", cache_text=True, inference_mode=True)
    work = cascade.workload(fast)
    (b_model, b_in), (u_model, u_in) = work.calls
    assert b_model is base.model and u_model is upsampler.model
    size, big = base.image_size, upsampler.image_size
    assert b_in["x"].shape == (2, 3, size, size)  # a guided sample's two rows
    assert u_in["x"].shape == (1, 3, big, big) and u_in["low_res"].shape == (
        1,
        3,
        big // 4,
        big // 4,
    )
    assert b_in["tokens"].shape == (2, base.text_ctx)
    # the execution's levers are part of what was timed (and of the cache key)
    assert work.signature() != cascade.workload(Execution()).signature()
    prepare_model(base.model, Execution())
    prepare_model(upsampler.model, Execution())


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16\n\n")
    assert read_cpu_flags(info) == {"fpu", "avx512f", "avx512_bf16", "amx_bf16"}
    assert read_cpu_flags(tmp_path / "missing") == frozenset()
    hw = detect_hardware(cpuinfo=info, cuda=False)
    assert hw.cpu_amx and hw.cpu_native_bf16 and not hw.cuda
    assert "AMX" in hw.describe() and hw.as_dict()["amx_bf16"] is True
    assert not hw.cpu_bf16_emulated
    plain = tmp_path / "plain"
    plain.write_text("processor\t: 0\nflags\t\t: fpu avx2\n\n")
    assert detect_hardware(cpuinfo=plain, cuda=False).cpu_bf16_emulated
    # unreadable flags (no /proc/cpuinfo): unknown, not emulated, so auto times bf16
    assert not detect_hardware(cpuinfo=tmp_path / "missing", cuda=False).cpu_bf16_emulated
