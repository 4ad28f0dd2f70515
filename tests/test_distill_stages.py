"""The distillation pipeline's last two stages on micro models: ``evaluate=distilled`` draws the
distilled recipe beside its teacher's balanced one (its own metrics, plots, grids and MLflow run)
and ``register.py promotion=distilled`` registers both students under their own names, gated
against the teacher's row."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from types import ModuleType

import pytest

from glide.models.export import save_model
from glide.sampling import LoadedModel
from tests.conftest import REPO_ROOT
from tests.helpers import load_script
from tests.test_distill import _save_student
from tests.test_sampling_support import micro_model, write_shapes_coco


def _stage(name: str) -> ModuleType:
    return load_script(REPO_ROOT / "pipelines" / f"{name}.py", f"{name}_stage")


def _save(loaded: LoadedModel, path: Path, sampler: str | None = None) -> None:
    # 1000 steps: the balanced recipe's fast27 upsampler respaces the release's process
    save_model(
        path, loaded.model, kind=loaded.kind, options=loaded.options, tokenizer="clip",
        diffusion={"steps": 1000, "noise_schedule": loaded.diffusion.noise_schedule},
        extra={"sampler": sampler} if sampler else None,
    )  # fmt: skip


def test_evaluate_distilled_then_register_distilled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import mlflow

    shutil.copytree(REPO_ROOT / "conf", tmp_path / "conf")
    monkeypatch.setenv("GLIDE_CONF_DIR", str(tmp_path / "conf"))
    monkeypatch.chdir(tmp_path)
    captions = write_shapes_coco(tmp_path / "set", 4, size=128)
    models = tmp_path / "models"
    for part, name in (("base", "base"), ("upsample", "upsampler"), ("clip", "clip")):
        _save(micro_model(part), models / name / "model.pt")
    teacher = micro_model("base")
    _save_student(teacher, models / "base-distilled-pd4" / "model.pt", "pd-4")
    _save(micro_model("upsample", seed=1), models / "upsampler-distilled-pd2" / "model.pt", "pd-2")
    uri = f"tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"

    overrides = [
        "evaluate=distilled",
        uri,
        f"evaluate.captions={captions}",
        "evaluate.num_captions=4",
        "evaluate.min_single_object=0",
        "evaluate.batch_size=4",
        "evaluate.sampler_table.num_images=4",
        f"evaluate.fid.weights_path={tmp_path / 'missing.pth'}",
        "evaluate.cache_dir=null",
    ]
    assert _stage("evaluate").main(overrides) == 0
    metrics = json.loads((tmp_path / "metrics" / "evaluate_distilled.json").read_text())
    assert set(metrics["samplers"]) == {"recipe:balanced", "recipe:distilled"}
    assert metrics["cfg"] == {} and metrics["clip"] == {}  # no guidance sweep in this stage
    distilled = metrics["samplers"]["recipe:distilled"]
    teacher_row = metrics["samplers"]["recipe:balanced"]
    # one row per image, 4 + 2 network calls against 10 guided pairs + 27: cheaper per image
    assert distilled["seconds_per_image"] < teacher_row["seconds_per_image"]
    rows = list(csv.DictReader((tmp_path / "plots" / "evaluate_distilled" / "samplers.csv").open()))
    assert [r["sampler"] for r in rows] == ["recipe:balanced", "recipe:distilled"]
    assert not (tmp_path / "plots" / "guidance.csv").exists()  # the main stage's, untouched
    grids = {p.name for p in (tmp_path / "reports" / "evaluate_distilled").glob("*.png")}
    assert grids == {"sampler_recipe:balanced.png", "sampler_recipe:distilled.png"}

    client = mlflow.MlflowClient(tracking_uri=uri.split("=", 1)[1])
    runs = client.search_runs(
        [client.get_experiment_by_name("glide").experiment_id],
        filter_string="tags.stage = 'evaluate_distilled'",
    )
    assert len(runs) == 1 and runs[0].info.run_name == "evaluate_distilled"
    assert metrics["info"]["mlflow_run_id"] == runs[0].info.run_id
    capsys.readouterr()

    assert _stage("register").main(["promotion=distilled", uri]) == 0
    report = json.loads((tmp_path / "reports" / "register_distilled.json").read_text())
    assert set(report) == {"glide-base-distilled", "glide-upsampler-distilled"}
    for name, entry in report.items():
        failed = any(r.startswith("FAIL") for r in entry["reasons"])
        assert entry["decision"] == ("challenger" if failed else "champion"), entry
        assert any("vs samplers.recipe:balanced." in r for r in entry["reasons"])
        version = client.get_model_version(name, entry["version"])
        assert version.tags["lineage.evaluate_run_id"] == runs[0].info.run_id
    names = {m.name for m in client.search_registered_models()}
    assert names == {"glide-base-distilled", "glide-upsampler-distilled"}  # not the teacher's
