"""Dataset lineage in MLflow, against real ``dvc repro`` in a temporary git repository and a real
SQLite store: ``prepare`` logs its shards and COCO export as MLflow datasets whose digests are
the md5s ``dvc.lock`` records; a training run and an evaluate run log them as inputs (same
digest), link the prepare run, and the training run's output holds no Lightning tip and no
``LeafSpec`` deprecation warning."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from glide.tracking.datasets import CONTEXT_TAG, DESCRIPTION_TAG, PREPARE_RUN_TAG, dvc_md5
from tests.test_e2e import _env, project, regenerate_params, set_keys
from tests.test_eval_runner import _save, evaluate_stage
from tests.test_registry import template_db  # noqa: F401  (fixture)
from tests.test_sampling_support import micro_model


class Project:
    """The micro project after ``dvc repro prepare``."""

    def __init__(self, root: Path, env: dict[str, str], uri: str) -> None:
        import mlflow

        self.root, self.env, self.uri = root, env, uri
        self.client = mlflow.MlflowClient(tracking_uri=uri)

    def sh(self, *cmd: str) -> str:
        """Run ``cmd`` in the project; return its stdout and stderr together."""
        proc = subprocess.run(
            cmd, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, f"{cmd}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout + proc.stderr

    def lock(self) -> dict[str, Any]:
        return yaml.safe_load((self.root / "dvc.lock").read_text())["stages"]

    def run_named(self, name: str) -> Any:
        exp = self.client.get_experiment_by_name("glide")
        (run,) = self.client.search_runs([exp.experiment_id], f"attributes.run_name = '{name}'")
        return run


def _md5s(entries: list[dict[str, Any]]) -> dict[str, str]:
    return {e["path"]: e["md5"] for e in entries}


def _inputs(run: Any) -> dict[str, tuple[str, str, dict[str, Any]]]:
    """``{dataset name: (context, digest, profile)}`` of a run."""
    out = {}
    for item in run.inputs.dataset_inputs:
        context = next(t.value for t in item.tags if t.key == CONTEXT_TAG)
        out[item.dataset.name] = (context, item.dataset.digest, json.loads(item.dataset.profile))
    return out


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, template_db: Path) -> Project:  # noqa: F811
    tmp = tmp_path_factory.mktemp("lineage")
    root = tmp / "repo"
    uri = f"sqlite:///{root / 'mlflow.db'}"
    env = _env(tmp, uri)
    project(root, env)
    shutil.copyfile(template_db, root / "mlflow.db")  # migrated schema: saves ~10 s
    # validate once, so the clip run also reads the val shards
    clip = {"val_every": 2, "data.val_batches": 1, "log_mlflow_model": False}
    set_keys(root / "conf/train/clip.yaml", clip)
    regenerate_params(root, env)
    proj = Project(root, env, uri)
    proj.sh("dvc", "repro", "prepare")
    return proj


@pytest.fixture(scope="module")
def trained(prepared: Project) -> str:
    """``dvc repro train_clip`` (2 steps); returns what the stage printed."""
    return prepared.sh("dvc", "repro", "train_clip")


def test_prepare_logs_its_outputs_with_the_dvc_lock_digests(prepared: Project) -> None:
    run = prepared.run_named("prepare")
    inputs = _inputs(run)
    assert set(inputs) == {"data/shards/train", "data/shards/val", "data/eval/val"}
    assert {context for context, _, _ in inputs.values()} == {"output"}
    outs = _md5s(prepared.lock()["prepare"]["outs"])
    assert inputs["data/eval/val"][1] == outs["data/eval/val"]  # a directory hash, "<md5>.dir"
    assert outs["data/eval/val"].endswith(".dir")
    # profiles: counted records, and the prepare stage's per-reason drop counts
    stats = json.loads((prepared.root / "metrics/prepare.json").read_text())
    train_profile = inputs["data/shards/train"][2]
    assert train_profile["records"] == stats["splits"]["train"] > 0
    assert train_profile["prepare"]["dropped"] == stats["dropped"]
    assert sum(stats["dropped"].values()) > 0  # the raw scrape has planted defects
    assert inputs["data/shards/val"][2]["records"] == stats["splits"]["val"]
    assert inputs["data/eval/val"][2]["images"] == stats["splits"]["val"]


def test_training_run_logs_the_shards_it_read_and_links_prepare(
    prepared: Project, trained: str
) -> None:
    run = prepared.run_named("train_clip")
    prepare = prepared.run_named("prepare")
    deps = _md5s(prepared.lock()["train_clip"]["deps"])
    inputs = _inputs(run)
    assert set(inputs) == {"data/shards/train", "data/shards/val"}
    assert inputs["data/shards/train"][:2] == ("training", deps["data/shards/train"])
    assert inputs["data/shards/val"][:2] == ("validation", deps["data/shards/val"])
    # the same MLflow dataset (name and digest) as the one prepare logged
    made = _inputs(prepare)
    for name in ("data/shards/train", "data/shards/val"):
        assert made[name][1] == inputs[name][1] == dvc_md5(prepared.root / name)
    assert run.data.tags[PREPARE_RUN_TAG] == prepare.info.run_id
    link = f"(#/experiments/{prepare.info.experiment_id}/runs/{prepare.info.run_id})"
    assert link in run.data.tags[DESCRIPTION_TAG]
    # a quiet log: the stage's own line, no product tip, no LeafSpec deprecation warning
    assert "train_clip: 2 steps" in trained
    for noise in (
        "💡",
        "Tip:",
        "litlogger",
        "litmodels",
        "LeafSpec",
        "weights_only",
        "CloudPickle",
    ):
        assert noise not in trained, trained[-3000:]


# Without CLIP, fd_clip is unavailable and the Pareto plot's distance panel has no curve.
@pytest.mark.filterwarnings("ignore:No artists with labels found")
def test_evaluate_run_logs_its_caption_set(
    prepared: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = prepared.root / "micro" / "base" / "model.pt"
    _save(micro_model("base"), base)
    monkeypatch.chdir(prepared.root)  # the stage, in this process (as dvc runs it: from the root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", prepared.uri)
    overrides = [f"evaluate.base={base}", "evaluate.upsampler=null", "evaluate.clip=null"]
    overrides += ["evaluate.inpaint=null"]
    overrides += ["evaluate.fid.enabled=false", "evaluate.sweep.clip_scales=[]"]
    overrides += ["evaluate.sampler_table.recipes=[]"]
    assert evaluate_stage.main([*overrides, "evaluate.sampler_table.samplers=[]"]) == 0
    run = prepared.run_named("evaluate")
    inputs = _inputs(run)
    outs = _md5s(prepared.lock()["prepare"]["outs"])
    assert inputs == {
        "data/eval/val": ("evaluation", outs["data/eval/val"], inputs["data/eval/val"][2])
    }
    assert run.data.tags[PREPARE_RUN_TAG] == prepared.run_named("prepare").info.run_id
    metrics = json.loads((prepared.root / "metrics/evaluate.json").read_text())
    assert metrics["info"]["mlflow_run_id"] == run.info.run_id  # what register links versions to
