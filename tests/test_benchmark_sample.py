"""``benchmarks/sample.py --steps-only 1`` on the tiny preset (upsampler at 64px to stay within
seconds): the benchmark runs, extrapolates and reports levers, machine and output differences."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO_ROOT


def _benchmark() -> ModuleType:
    path = REPO_ROOT / "benchmarks" / "sample.py"
    spec = importlib.util.spec_from_file_location("benchmark_sample", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sample_benchmark_steps_only_on_tiny(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sample.json"
    args = ["--preset", "tiny", "--steps-only", "1", "--upsample-size", "64", "--json", str(out)]
    result = _benchmark().main(args)
    printed = capsys.readouterr().out
    assert "release recipe" in printed and "precision auto" in printed
    data = json.loads(out.read_text())
    assert data["ratio"] == pytest.approx(result["ratio"])
    assert data["baseline_s_per_image"] > 0 and data["fastest_s_per_image"] > 0
    assert data["ratio"] == pytest.approx(
        data["baseline_s_per_image"] / data["fastest_s_per_image"]
    )
    assert data["recipe"]["name"] == "fast" and data["recipe"]["precision"] in ("fp32", "bf16")
    assert {"cores", "cpu_capability", "cpu_native_bf16", "cuda"} <= set(data["machine"])
    distilled = data["stages"]["distilled"]  # a guidance-distilled student: one row per image
    assert distilled["total_s"] > 0 and distilled["step_diff"] is None
    # the distilled recipe: 4 one-row base steps and 2 upsampler steps, extrapolated from 1
    assert (distilled["base"]["steps"], distilled["upsample"]["steps"]) == (4, 2)
    assert data["distilled"]["ratio"] == pytest.approx(
        data["baseline_s_per_image"] / distilled["total_s"]
    )
    assert "distilled recipe" in printed and "base pd-4 one row + upsampler pd-2" in printed
    assert "n/a (another network)" in printed
    levers = data["levers"]
    assert {"text cache", "channels_last", "sdpa"} <= set(levers)
    assert all(v > 0 for v in levers.values())
    # forced bf16 is timed where the CPU computes bf16, skipped (saying why) where it emulates it
    emulated = data["machine"]["cpu_bf16_emulated"]
    bf16_rows = {"fast, bf16", "lever: bf16 autocast"}
    if emulated:
        assert set(data["skipped"]) == bf16_rows and "bf16 autocast" not in levers
        assert all("emulated" in why for why in data["skipped"].values())
        assert "skipped fast, bf16, lever: bf16 autocast: bf16 is emulated" in printed
        assert data["recipe"]["precision"] == "fp32"  # auto: not timed, float32
    else:
        assert data["skipped"] == {} and "bf16 autocast" in levers
    stages = data["stages"]
    # extrapolated: 1 measured step stands for the recipe's 100 + 27
    release = stages["release"]
    assert (release["base"]["steps"], release["upsample"]["steps"]) == (100, 27)
    assert release["base"]["measured_steps"] == 1
    # same math in float32: text caching is bit-identical, channels_last / sdpa round-off only
    for stage in ("base", "upsample"):
        assert stages["lever: text cache"]["step_diff"][stage]["max_abs"] == 0.0
        assert stages["lever: channels_last"]["step_diff"][stage]["rel_rms"] < 1e-4
        assert stages["lever: sdpa"]["step_diff"][stage]["rel_rms"] < 1e-4
        if not emulated:
            assert 0 < stages["lever: bf16 autocast"]["step_diff"][stage]["rel_rms"] < 0.05
    assert emulated or stages["fast, bf16"]["precision"] == "bf16"
    assert not (bf16_rows & set(stages)) if emulated else bf16_rows <= set(stages)
