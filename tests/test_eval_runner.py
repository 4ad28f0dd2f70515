"""The evaluate stage end to end on micro models and a small shapes COCO set: sweeps, the
sampler table, the metrics JSON layout, CSVs, the Pareto figure and the MLflow run."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from glide.evaluation import EvaluateConfig, summarize
from glide.models.export import save_model
from glide.sampling import LoadedModel
from tests.conftest import REPO_ROOT
from tests.helpers import load_script
from tests.test_sampling_support import micro_model, write_shapes_coco

evaluate_stage = load_script(REPO_ROOT / "pipelines" / "evaluate.py", "evaluate_stage")


def test_summary_reports_the_gain_of_guidance() -> None:
    metrics = {
        "cfg": {
            "1": {"caption_accuracy": 0.25, "caption_accuracy_single": 0.5},
            "3": {"caption_accuracy": 0.75, "caption_accuracy_single": 0.9},
        },
        "clip": {"0": {"caption_accuracy": 0.25}, "2": {"caption_accuracy": 0.5}},
    }
    s = summarize(metrics)
    assert s["cfg_best_scale"] == 3.0 and s["cfg_gain_caption_accuracy"] == pytest.approx(0.5)
    assert s["cfg_best_caption_accuracy_single"] == 0.9
    assert s["clip_best_scale"] == 2.0 and s["clip_gain_caption_accuracy"] == pytest.approx(0.25)


def test_config_from_nested_dict_names_unknown_keys() -> None:
    config = EvaluateConfig.from_dict(
        {"num_captions": 5, "sweep": {"cfg_scales": [1, 2]}, "fid": {"enabled": False}}
    )
    assert config.sweep.cfg_scales == (1, 2) and not config.fid.enabled
    with pytest.raises(ValueError, match="colour"):
        EvaluateConfig.from_dict({"sweep": {"colour": 1}})


def _save(loaded: LoadedModel, path: Path) -> None:
    diffusion = {"steps": loaded.diffusion.steps, "noise_schedule": loaded.diffusion.noise_schedule}
    save_model(
        path, loaded.model, kind=loaded.kind, options=loaded.options, tokenizer="clip",
        diffusion=diffusion,
    )  # fmt: skip


def test_evaluate_stage_end_to_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """pipelines/evaluate.py on micro models: sweeps, sampler table, every output, one run."""
    shutil.copytree(REPO_ROOT / "conf", tmp_path / "conf")
    monkeypatch.setenv("GLIDE_CONF_DIR", str(tmp_path / "conf"))
    monkeypatch.chdir(tmp_path)
    captions = write_shapes_coco(tmp_path / "set", 6, size=128)
    parts = (("base", "base"), ("upsample", "upsampler"), ("clip", "clip"))
    for part, name in (*parts, ("base_inpaint", "inpaint")):
        _save(micro_model(part), tmp_path / "models" / name / "model.pt")
    overrides = [
        f"tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"evaluate.captions={captions}",
        "evaluate.num_captions=3",
        "evaluate.min_single_object=0",
        "evaluate.inpaint_eval.num_images=3",
        "evaluate.inpaint_eval.sampler=dpm++-2",
        "evaluate.clip_retrieval.candidates=3",
        "evaluate.clip_retrieval.timesteps=[0,25]",
        "evaluate.batch_size=3",
        "evaluate.upsample_count=1",
        "evaluate.upsample_at=[cfg:3]",
        "evaluate.upsample_sampler=dpm++-2",
        f"evaluate.fid.weights_path={tmp_path / 'missing.pth'}",
        "evaluate.sweep.cfg_scales=[1,3]",
        "evaluate.sweep.sampler=dpm++-2",
        "evaluate.sweep.clip_scales=[0,20]",
        "evaluate.sweep.clip_sampler=ancestral-2",
        "evaluate.sweep.grid_images=4",
        "evaluate.sampler_table.samplers=[ddim-2,dpm++-3]",
        "evaluate.sampler_table.num_images=2",
        "evaluate.sampler_table.recipes=[fast]",  # release and balanced need a 1000-step process
    ]
    assert evaluate_stage.main(overrides) == 0
    printed = capsys.readouterr().out
    assert "cfg_best_scale" in printed and "fid: unavailable" in printed

    metrics = json.loads((tmp_path / "metrics" / "evaluate.json").read_text())
    assert set(metrics["cfg"]) == {"1", "3"} and set(metrics["clip"]) == {"0", "20"}
    assert set(metrics["samplers"]) == {"ddim-2", "dpm++-3", "recipe:fast"}  # + the full cascade
    point = metrics["cfg"]["3"]
    for key in ("fd_clip", "clip_score", "caption_accuracy", "oracle_score", "seconds_per_image"):
        assert key in point
    assert "fid" not in point and "missing.pth" in metrics["unavailable"]["fid"]
    assert 0.0 <= point["caption_accuracy"] <= 1.0 and point["fd_clip"] >= 0.0
    assert metrics["info"]["builtin_set"] and metrics["info"]["num_captions"] == 3
    assert "cfg_best_scale" in metrics["summary"]
    lo, hi = point["caption_accuracy_ci95"]
    assert 0.0 <= lo <= point["caption_accuracy"] <= hi <= 1.0
    if "caption_accuracy_single" in point:
        assert set(point["attributes_single"]) >= {"color", "shape"}
    inpaint = metrics["inpaint"]
    assert inpaint["n"] == 3 and 0.0 <= inpaint["inpaint_accuracy"] <= 1.0
    # the known pixels are pasted into every x0 prediction: outside the mask nothing moves
    assert inpaint["inpaint_preserved"] > 0.99
    assert metrics["summary"]["inpaint_preserved"] == inpaint["inpaint_preserved"]
    retrieval = metrics["noised_clip"]
    assert retrieval["n"] == 3 and retrieval["candidates"] == 3
    assert {"retrieval_top1_t0", "retrieval_top1_t25"} <= set(retrieval)

    rows = list(csv.DictReader((tmp_path / "plots" / "guidance.csv").open()))
    assert [(r["method"], r["scale"]) for r in rows] == [
        ("cfg", "1"), ("cfg", "3"), ("clip", "0"), ("clip", "20"),
    ]  # fmt: skip
    assert rows[0]["fid"] == "" and float(rows[0]["fd_clip"]) >= 0
    samplers = list(csv.DictReader((tmp_path / "plots" / "samplers.csv").open()))
    assert [r["sampler"] for r in samplers] == ["ddim-2", "dpm++-3", "recipe:fast"]
    with Image.open(tmp_path / "plots" / "guidance_pareto.png") as img:
        assert img.size[0] > img.size[1] > 100
    with Image.open(tmp_path / "reports" / "evaluate" / "cfg_3.png") as img:
        assert img.size == (128, 128 + 48)  # the one upsampled image, labelled
    with Image.open(tmp_path / "reports" / "evaluate" / "cfg_1.png") as img:
        assert img.size == (256, 2 * (128 + 48))  # three labelled tiles in a 2x2 grid
    with Image.open(tmp_path / "reports" / "evaluate" / "inpaint.png") as img:
        assert img.size == (6 * 128, 128 + 48)  # known pixels and result, per edit
    assert (tmp_path / "reports" / "evaluate" / "sampler_dpmpp-3.png").is_file()

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = mlflow.search_runs(experiment_names=["glide"], output_format="list")
    assert run.data.tags["stage"] == "evaluate" and "unavailable.fid" in run.data.tags
    assert run.data.metrics["cfg.3.caption_accuracy"] == point["caption_accuracy"]
    assert run.data.metrics["cfg.3.caption_accuracy_ci95.hi"] == hi
    assert run.data.metrics["inpaint.inpaint_accuracy"] == inpaint["inpaint_accuracy"]
    assert metrics["info"]["mlflow_run_id"] == run.info.run_id
    # a caption set outside the prepare export is the captions file itself, by its md5
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.name == "set/captions.json"  # the path from the project root
    assert dataset.dataset.digest == hashlib.md5(captions.read_bytes()).hexdigest()
    assert [(t.key, t.value) for t in dataset.tags] == [("mlflow.data.context", "evaluation")]
    assert json.loads(dataset.dataset.profile) == {"images": 6, "captions": 6}
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"evaluate.json", "guidance.csv", "guidance_pareto.png", "grids"} <= artifacts
