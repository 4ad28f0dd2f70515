"""``benchmarks/bulk_sample.py`` on the tiny preset with random weights, one step per stage: it
times batch 1 and batch 8 side by side and reports how close their images are."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT


def test_bulk_sample_benchmark_times_both_batch_sizes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = importlib.util.spec_from_file_location(
        "bulk_sample", REPO_ROOT / "benchmarks" / "bulk_sample.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "bulk.json"
    argv = ["--sets", "tiny", "--models", str(tmp_path / "none"), "--captions", "3"]
    rows = module.main([*argv, "--tiny-steps", "1", "--repeats", "1", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "random weights" in printed and "| tiny (--steps-only 1) |" in printed
    (row,) = json.loads(out.read_text())
    assert row == pytest.approx(rows[0])
    assert row["images"] == 3 and row["batch1_images_per_s"] > 0 and row["batch8_images_per_s"] > 0
    assert row["ratio"] == pytest.approx(row["batch8_images_per_s"] / row["batch1_images_per_s"])
    assert row["batch8_vs_batch1_mean_abs_diff"] < 1.0  # the same noise per image
