"""The distillation learning benchmark (benchmarks/distill_learning.py) on a micro random teacher:
one point per evaluation at the expected steps, the teacher scored on the same captions and noise
as the student, and training that lowers the distillation loss on the fixed probe batch."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from glide.models.export import save_model
from glide.sampling import LoadedModel
from tests.conftest import REPO_ROOT
from tests.helpers import load_script
from tests.test_sampling_support import micro_model

bench = load_script(REPO_ROOT / "benchmarks" / "distill_learning.py", "distill_learning_benchmark")


@pytest.fixture(scope="module")
def teacher() -> LoadedModel:
    return micro_model("base")


def _export(teacher: LoadedModel, path: Path) -> Path:
    spec = teacher.diffusion
    return save_model(
        path,
        teacher.model,
        kind="base",
        options=teacher.options,
        tokenizer="clip",
        diffusion={"steps": spec.steps, "noise_schedule": spec.noise_schedule},
    )


def test_a_short_run_reports_each_point_and_lowers_the_probe_loss(
    teacher: LoadedModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _export(teacher, tmp_path / "teacher" / "model.pt")
    out = tmp_path / "report"
    args = ["--teacher", str(path), "--steps", "6", "--evals", "2", "--num-eval", "4",
            "--num-train", "24", "--probe", "8", "--batch-size", "4", "--lr", "1e-4",
            "--warmup", "0", "--sampler", "dpm++-2", "--threads", "1", "--out", str(out),
            "--json", str(tmp_path / "copy.json")]  # fmt: skip
    result = bench.main(args)

    points = result["points"]
    assert [p["step"] for p in points] == [0, 3, 6]
    assert points[0]["train_seconds"] == 0.0 and points[0]["train_loss"] is None
    assert 0 < points[1]["train_seconds"] < points[2]["train_seconds"]
    for m in [*(p["metrics"] for p in points), result["teacher"]["metrics"]]:
        assert 0.0 <= m["caption_accuracy_single"] <= 1.0
        assert set(m["attributes_single"]) >= {"color", "shape"}
        lo, hi = m["caption_accuracy_single_ci95"]
        assert lo <= m["caption_accuracy_single"] <= hi
    losses = [p["probe_loss"] for p in points]
    assert all(math.isfinite(x) and x > 0 for x in losses)
    assert losses[-1] < losses[0], losses  # the student moved toward the guided teacher
    assert all(math.isfinite(p["train_loss"]) for p in points[1:])
    # the defaults not overridden are conf/train/distill.yaml's
    assert result["settings"]["w_min"] == 1.0 and result["settings"]["w_max"] == 8.0
    assert result["settings"]["steps"] == 6 and result["settings"]["lr"] == 1e-4

    saved = json.loads((out / "results.json").read_text())
    assert saved["points"][-1]["step"] == 6 and saved == json.loads(
        (tmp_path / "copy.json").read_text()
    )
    assert (out / "curves.png").is_file() and (out / "grids" / "teacher.png").is_file()
    assert (out / "grids" / "step-00006.png").is_file()
    printed = capsys.readouterr().out
    assert "machine:" in printed
    rows = [line for line in printed.splitlines() if line.startswith("| ") and "step" not in line]
    assert [row.split("|")[1].strip() for row in rows] == ["0", "3", "6"]


def test_student_starts_as_the_conditional_teacher_not_the_guided_one(
    teacher: LoadedModel,
) -> None:
    world = bench.pipeline_world()
    settings = bench.Settings(steps=1, batch_size=2)
    dr = bench.DistillRun(teacher, settings, world=world, num_train=4, probe_size=4)
    captions = bench.learning.eval_captions(world, 4, 1000)
    kw = {"sampler": "dpm++-2", "world": world}

    def images(model: LoadedModel, scale: float) -> np.ndarray:
        _, pil, _, _ = bench.sample_and_score(model, captions, scale=scale, **kw)
        return np.stack([np.asarray(img) for img in pil])

    # scale 1: the teacher's conditional model, same captions and per-image noise
    assert np.array_equal(images(dr.student(), 1.0), images(teacher, 1.0))
    # scale 3: the guided teacher draws something else than the untrained student
    assert not np.array_equal(images(dr.student(), 3.0), images(teacher, 3.0))
    assert dr.probe_loss() > 0  # guidance changes the target: there is something to learn


def test_a_missing_teacher_says_to_train_it_first(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="train it first: make run"):
        bench.main(["--teacher", str(tmp_path / "nope" / "model.pt")])
