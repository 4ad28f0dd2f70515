"""Execution modes change speed, not results: bf16 autocast and channels_last stay within bounds;
``precision: auto`` decides from measured timings, cached per machine and model shape."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import glide.precision as precision_module
from glide.models import from_openai_options, load_preset
from glide.models.nn import BF16_TOLERANCE, perturb_
from glide.precision import (
    BF16_MIN_SPEEDUP,
    CACHE_FILE,
    Hardware,
    Measurement,
    Precision,
    Workload,
    cache_dir,
    decide_precision,
    resolve_precision,
)


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


# ----------------------------------------------------------------------------- precision auto


def test_decide_precision_from_injected_timings() -> None:
    fast = decide_precision(0.010, 0.005, 0.01)
    assert fast.name == "bf16" and fast.measurement is not None
    assert fast.measurement.speedup == pytest.approx(2.0)
    assert "2.00x" in fast.reason and "5.0 ms vs 10.0 ms per forward" in fast.reason
    assert decide_precision(0.005, 0.010, 0.01).name == "fp32"  # bf16 slower
    assert "not 1.15x faster" in decide_precision(0.005, 0.010, 0.01).reason
    inaccurate = decide_precision(0.010, 0.005, 2 * BF16_TOLERANCE)  # faster but inaccurate
    assert inaccurate.name == "fp32" and "error" in inaccurate.reason
    assert decide_precision(0.010, 0.005, float("nan")).name == "fp32"
    assert decide_precision(0.010, 0.005, None).name == "bf16"  # error unmeasurable: speed alone
    # the margin: a 10% gain is noise, not a reason to lose precision
    assert decide_precision(1.10, 1.0, 0.01).name == "fp32"
    assert decide_precision(BF16_MIN_SPEEDUP, 1.0, 0.01).name == "bf16"
    assert decide_precision(1.10, 1.0, 0.01, margin=1.05).name == "bf16"
    assert decide_precision(0.010, 0.005, 0.02, max_error=0.01).name == "fp32"
    assert decide_precision(0.010, 0.005, 0.01, device_type="cuda").device_type == "cuda"
    with pytest.raises(ValueError, match="positive"):
        decide_precision(0.0, 0.005, 0.01)


class CountingTimer:
    """Stands in for :func:`glide.precision.measure`: fixed timings, counted calls."""

    def __init__(self, fp32_s: float = 0.010, bf16_s: float = 0.005, err: float = 0.01) -> None:
        self.result = Measurement(fp32_s, bf16_s, err)
        self.calls = 0

    def __call__(self, workload: Workload, device_type: str) -> Measurement:
        self.calls += 1
        return self.result


NATIVE = Hardware(cpu_flags=frozenset({"avx512_bf16"}), cpu_name="Test CPU (family 25 model 17)")
EMULATED = Hardware(cpu_flags=frozenset({"avx2", "fma"}), cpu_name="AVX2-only CPU")


def _linear(width: int = 4, rows: int = 2) -> Workload:
    torch.manual_seed(0)
    return Workload([(torch.nn.Linear(width, width), {"input": torch.randn(rows, width)})])


def _auto(cache: Path, timer: CountingTimer, workload: Workload | None = None) -> Precision:
    return resolve_precision(
        "auto", hardware=NATIVE, workload=workload or _linear(), timer=timer, cache=cache
    )


def test_cache_hit_avoids_timing_again(tmp_path: Path) -> None:
    cache, timer = tmp_path / "precision.json", CountingTimer()
    first = _auto(cache, timer)
    assert timer.calls == 1 and first.name == "bf16" and "measured now" in first.reason
    second = _auto(cache, timer)
    assert timer.calls == 1, "the cached measurement must be reused"
    assert second.name == "bf16" and second.measurement == first.measurement
    assert "cached in" in second.reason and "measured now" not in second.reason
    (key, record), *rest = json.loads(cache.read_text())["entries"].items()
    assert not rest and "Test CPU" in key and torch.__version__ in key and "| cpu |" in key
    assert record["fp32_s"] == 0.010 and record["bf16_s"] == 0.005 and record["rel_error"] == 0.01
    assert [p.name for p in tmp_path.iterdir()] == ["precision.json"]  # no temp file left behind


def test_cache_key_follows_machine_and_model_shape(tmp_path: Path) -> None:
    cache, timer = tmp_path / "precision.json", CountingTimer()
    _auto(cache, timer, _linear(4))
    _auto(cache, timer, _linear(8))  # other parameter shapes
    _auto(cache, timer, _linear(4, rows=3))  # other input shape
    _auto(cache, timer, Workload(_linear(4).calls, variant="channels_last"))  # other levers
    assert timer.calls == 4
    other_cpu = Hardware(cpu_flags=NATIVE.cpu_flags, cpu_name="Another CPU")
    resolve_precision("auto", hardware=other_cpu, workload=_linear(4), timer=timer, cache=cache)
    assert timer.calls == 5
    _auto(cache, timer, _linear(4))  # the same again: a hit
    assert timer.calls == 5
    assert len(json.loads(cache.read_text())["entries"]) == 5


@pytest.mark.parametrize(
    "content", ["{not json", '{"version": 1, "entries": []}', "[1, 2]", '{"entries": {}}']
)
def test_corrupt_cache_is_ignored_with_a_warning(tmp_path: Path, content: str) -> None:
    cache, timer = tmp_path / "precision.json", CountingTimer()
    cache.write_text(content)
    with pytest.warns(UserWarning, match="corrupt precision cache"):
        choice = _auto(cache, timer)
    assert choice.name == "bf16" and timer.calls == 1
    assert len(json.loads(cache.read_text())["entries"]) == 1  # rewritten whole


def test_malformed_cache_entry_is_measured_again(tmp_path: Path) -> None:
    cache, timer = tmp_path / "precision.json", CountingTimer()
    _auto(cache, timer)
    data = json.loads(cache.read_text())
    for record in data["entries"].values():
        record["fp32_s"] = "fast"
    cache.write_text(json.dumps(data))
    assert _auto(cache, timer).name == "bf16" and timer.calls == 2


def test_unwritable_cache_only_warns(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    timer = CountingTimer(fp32_s=0.005, bf16_s=0.010)
    with pytest.warns(UserWarning, match="cannot write the precision cache"):
        choice = _auto(blocker / "precision.json", timer)  # its parent is a file
    assert choice.name == "fp32" and timer.calls == 1


def test_default_cache_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLIDE_CACHE_DIR", str(tmp_path / "glide-cache"))
    assert cache_dir() == tmp_path / "glide-cache"
    monkeypatch.delenv("GLIDE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "glide"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "glide"
    monkeypatch.setenv("GLIDE_CACHE_DIR", str(tmp_path / "env"))
    timer = CountingTimer()
    resolve_precision("auto", hardware=NATIVE, workload=_linear(), timer=timer)
    assert (tmp_path / "env" / CACHE_FILE).is_file() and timer.calls == 1


def test_forced_precisions_and_emulated_bf16_are_never_timed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(precision_module, "_ANNOUNCED", set())
    cache, timer = tmp_path / "precision.json", CountingTimer()
    for forced in ("fp32", "bf16", "32-true", "bf16-mixed"):
        choice = resolve_precision(forced, hardware=NATIVE, workload=_linear(), timer=timer)
        assert choice.name in ("fp32", "bf16") and choice.measurement is None
    emulated = resolve_precision(
        "auto", hardware=EMULATED, workload=_linear(), timer=timer, cache=cache
    )
    assert timer.calls == 0 and not cache.exists()
    assert emulated.name == "fp32" and "emulated" in emulated.reason
    assert "precision auto: fp32 (no avx512_bf16 / amx_bf16" in capsys.readouterr().err


def test_auto_prints_one_line_per_decision(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache, timer = tmp_path / "precision.json", CountingTimer(fp32_s=0.0051, bf16_s=0.0413)
    for _ in range(3):
        _auto(cache, timer)
    lines = [line for line in capsys.readouterr().err.splitlines() if "precision auto" in line]
    assert lines == [
        "precision auto: fp32 (bf16 0.12x float32: 41.3 ms vs 5.1 ms per forward, rel err 1.0%: "
        f"not 1.15x faster; measured now, cached in {precision_module._shown(cache)})"
    ]


def test_training_precision_times_the_module_network(tmp_path: Path) -> None:
    from glide.training.run import resolve_precision as training_precision
    from tests.test_training_modules import build, small_config

    shapes = {}
    for kind in ("base", "upsample", "clip"):
        module = build(small_config(tmp_path, tmp_path, kind))
        seen: list[Workload] = []

        def timer(workload: Workload, device_type: str, seen: list[Workload] = seen) -> Measurement:
            seen.append(workload)
            return Measurement(0.010, 0.005, None)

        got = training_precision("auto", hardware=NATIVE, module=module, timer=timer)
        assert got == "bf16-mixed" and len(seen) == 1
        assert all(m in list(module.model.modules()) for m, _ in seen[0].calls)
        shapes[kind] = [{k: tuple(v.shape) for k, v in kw.items()} for _, kw in seen[0].calls]
        assert next(module.model.parameters()).device.type == "cpu"
    # training-shaped: batch 8 at the data's size (the upsampler's 16px crop, 4px low-res)
    assert shapes["base"][0]["x"] == (8, 3, 32, 32) and shapes["base"][0]["tokens"] == (8, 16)
    assert shapes["upsample"][0]["x"] == (8, 3, 16, 16)
    assert shapes["upsample"][0]["low_res"] == (8, 3, 4, 4)
    assert shapes["clip"][0]["images"] == (8, 3, 32, 32) and shapes["clip"][1]["tokens"] == (8, 16)


def test_real_measurement_of_the_tiny_base(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One real timing on this machine (bf16 is timed even where it is emulated)."""
    model, _ = _tiny_base_and_inputs()
    workload = Workload.for_network(model, batch=1)
    cache = tmp_path / "precision.json"
    choice = resolve_precision("auto", hardware=NATIVE, workload=workload, cache=cache)
    m = choice.measurement
    assert m is not None and m.fp32_s > 0 and m.bf16_s > 0
    assert m.rel_error is not None and 0 < m.rel_error <= BF16_TOLERANCE
    faster = m.fp32_s / m.bf16_s >= BF16_MIN_SPEEDUP
    assert choice.name == ("bf16" if faster else "fp32")
    record = next(iter(json.loads(cache.read_text())["entries"].values()))
    assert record["fp32_s"] == m.fp32_s and record["workload"] == "Text2ImUNet batch 1 at 32px"
    line = next(x for x in capsys.readouterr().err.splitlines() if "precision auto" in x)
    with capsys.disabled():
        print(f"\n{line}")  # what was measured, for the reader of the test log


def test_build_trainer_times_the_module_it_will_train(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import glide.training.run as run
    from tests.test_training_modules import build, small_config

    cfg = small_config(tmp_path, tmp_path, "base")
    module = build(cfg)
    timer = CountingTimer()  # bf16 2x faster
    monkeypatch.setattr(run, "detect_hardware", lambda: NATIVE)
    monkeypatch.setattr(precision_module, "measure", timer)
    trainer = run.build_trainer(cfg, logger=False, callbacks=[], module=module)
    assert timer.calls == 1 and trainer.precision == "bf16-mixed"
    forced = run.build_trainer(
        dataclasses.replace(cfg, precision="fp32"), logger=False, callbacks=[], module=module
    )
    assert timer.calls == 1 and forced.precision == "32-true"
