"""The whole pipeline end to end in a temporary git repository, with real ``dvc``, on a micro
config: ``dvc repro`` runs every stage, a second one is a no-op, a changed training parameter
re-runs only that stage and its downstream, the registry holds lineage-tagged versions with a
champion that ``glide sample`` loads, the gate keeps a worse candidate out, rollback works; the
same against a real ``mlflow server``; ``dvc exp run -S`` with DVC's Hydra composition."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from glide.tracking.registry import MAX_VERSION_TAGS, version_model_id
from tests.test_registry import REPO_ROOT, template_db  # noqa: F401  (fixture)
from tests.test_tracking_server import start_server, stop_server

pytestmark = pytest.mark.slow

STAGES = {
    "prepare",
    "train_base",
    "train_upsampler",
    "train_inpaint",
    "train_clip",
    "evaluate",
    "register",
}
TRAIN = {
    "max_steps": 2,
    "max_time": 0,
    "checkpoint_every": 2,
    "log_every": 1,
    "progress": False,
    "log_mlflow_model": True,
    "data.batch_size": 4,
    "data.num_workers": 0,
    "data.epoch_length": 64,
    "data.shuffle_buffer": 8,
    "data.val_batches": 0,
    "sample.steps": 2,
    "sample.prompts": ["a red circle", "a blue square"],
}
MICRO: dict[str, dict[str, Any]] = {
    "config.yaml": {"prepare.num_workers": 1, "prepare.shard_size": 50, "prepare.progress": False},
    "data/shapes.yaml": {"options.num_records": 120},
    "train/base.yaml": TRAIN,
    "train/upsampler.yaml": {"max_steps": 2, "checkpoint_every": 2, "data.batch_size": 2},
    "train/inpaint.yaml": {"max_steps": 2, "checkpoint_every": 2},
    "train/clip.yaml": {"max_steps": 2, "checkpoint_every": 2, "data.batch_size": 4},
    "evaluate/default.yaml": {
        "num_captions": 4,
        "batch_size": 4,
        "upsample_count": 1,
        "upsample_sampler": "dpm++-2",
        "fid.enabled": False,
        "sweep.cfg_scales": [1, 3],
        "sweep.sampler": "dpm++-2",
        "sweep.clip_scales": [0, 1],
        "sweep.clip_sampler": "ancestral-2",
        "sweep.grid_images": 4,
        "sampler_table.samplers": ["dpm++-2"],
        "sampler_table.num_images": 2,
    },
}


def set_keys(path: Path, values: dict[str, Any]) -> None:
    """Set dotted keys in a YAML file (the micro config of the copy)."""
    doc = yaml.safe_load(path.read_text()) or {}
    for dotted, value in values.items():
        node = doc
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def _env(tmp: Path, uri: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MLFLOW_TRACKING_URI"] = uri
    env.pop("GLIDE_CONF_DIR", None)
    for who in ("AUTHOR", "COMMITTER"):
        env[f"GIT_{who}_NAME"], env[f"GIT_{who}_EMAIL"] = "t", "t@t"
    return env


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 1800) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def regenerate_params(proj: Path, env: dict[str, str]) -> None:
    """``make params``: params.yaml from the (edited) conf/ of the copy."""
    run([sys.executable, "pipelines/params.py"], proj, env)


def project(dest: Path, env: dict[str, str]) -> Path:
    """A fresh clone of the project with the micro config (params.yaml regenerated from it),
    committed, ``dvc init``-ed with the repository's .dvc/config (Hydra composition on)."""
    for name in ("conf", "pipelines", "src"):
        shutil.copytree(REPO_ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore", "params.yaml"):
        shutil.copy(REPO_ROOT / name, dest / name)
    for rel, values in MICRO.items():
        set_keys(dest / "conf" / rel, values)
    regenerate_params(dest, env)
    assert yaml.safe_load((dest / "params.yaml").read_text())["train"]["max_steps"] == 2
    (dest / ".gitignore").write_text(
        "mlflow.db\nmlartifacts/\n*.egg-info/\n.glide-locks/\nmlflow-pending/\n"
    )
    run(["git", "init", "-q"], dest, env)
    run(["dvc", "init", "-q"], dest, env)
    shutil.copy(REPO_ROOT / ".dvc" / "config", dest / ".dvc" / "config")
    run(["git", "add", "-A"], dest, env)
    run(["git", "commit", "-qm", "micro project"], dest, env)
    return dest


def ran(stdout: str) -> set[str]:
    return set(re.findall(r"Running stage '([\w-]+)'", stdout))


def glide_sample(proj: Path, env: dict[str, str], model: str) -> Path:
    out = proj / "sample.png"
    run(
        [
            str(Path(sys.executable).with_name("glide")),
            "sample",
            "--prompt",
            "a red circle",
            "--base",
            model,
            "--base-only",
            "-n",
            "1",
            "--sampler",
            "dpm++",
            "--steps",
            "2",
            "--no-progress",
            "--out",
            str(out),
        ],
        proj,
        env,
    )
    return out


def commands(proj: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "glide.tracking.commands", *args],
        cwd=proj,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def check_pipeline(proj: Path, env: dict[str, str], uri: str) -> None:
    import mlflow

    first = run(["dvc", "repro"], proj, env)
    assert ran(first) == STAGES
    lock = yaml.safe_load((proj / "dvc.lock").read_text())
    assert set(lock["stages"]) >= STAGES

    second = run(["dvc", "repro"], proj, env)
    assert ran(second) == set(), second

    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    head = run(["git", "rev-parse", "HEAD"], proj, env).strip()
    for name, stage in (("glide-base", "train_base"), ("glide-clip", "train_clip")):
        mv = client.get_model_version_by_alias(name, "champion")
        assert str(mv.version) == "1"
        assert mv.tags["lineage.git_commit"] == head
        assert mv.tags["lineage.dvc_stage"] == stage
        assert mv.tags["lineage.data"].startswith("data/shards")
        assert "conf/train/base.yaml=" in mv.tags["lineage.config"]
        assert client.get_run(mv.tags["lineage.train_run_id"]).info.run_name == stage
        # the metrics are on the version's logged model (the one training logged)
        model = client.get_logged_model(version_model_id(mv))
        assert model.source_run_id == mv.tags["lineage.train_run_id"]
        assert "summary.cfg_best_scale" in {m.key for m in model.metrics}
    for name in ("glide-upsampler", "glide-inpaint"):
        assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    check_dataset_lineage(proj, client)

    # one training parameter, and a gate no retrained model can pass: only train_clip and its
    # downstream run; the new clip version is a challenger, nothing else gets a version
    set_keys(proj / "conf/train/clip.yaml", {"max_steps": 3})
    rules = yaml.safe_load((proj / "conf/promotion/default.yaml").read_text())["rules"]
    rules[0].update(required=True, tolerance=-1.0)  # must beat the champion by 1.0
    set_keys(proj / "conf/promotion/default.yaml", {"rules": rules})
    regenerate_params(proj, env)  # as `make run` does: only the `promotion` section changes
    third = run(["dvc", "repro"], proj, env)
    assert ran(third) == {"train_clip", "evaluate", "register"}, third
    report = json.loads((proj / "reports/register.json").read_text())
    assert report["glide-clip"]["version"] == 2
    assert report["glide-clip"]["decision"] == "challenger"
    assert report["glide-base"] == {**report["glide-base"], "version": 1, "created": False}
    assert str(client.get_model_version_by_alias("glide-clip", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("glide-clip", "challenger").version) == "2"
    assert len(client.search_model_versions("name='glide-base'")) == 1

    promote = commands(proj, env, "promote", "--model", "glide-clip", "--version", "2")
    assert promote.returncode == 1 and "FAIL" in promote.stdout
    forced = commands(proj, env, "promote", "--model", "glide-clip", "--version", "2", "--force")
    assert forced.returncode == 0, forced.stderr
    assert str(client.get_model_version_by_alias("glide-clip", "champion").version) == "2"
    back = commands(proj, env, "promote", "--model", "glide-clip", "--rollback")
    assert back.returncode == 0, back.stderr
    assert str(client.get_model_version_by_alias("glide-clip", "champion").version) == "1"

    sample = glide_sample(proj, env, "models:/glide-base@champion")
    from PIL import Image

    assert Image.open(sample).size[0] >= 32  # the tiny base samples at 32x32
    compared = commands(proj, env, "compare", "--stage", "evaluate", "--report", "cmp.html")
    assert compared.returncode == 0, compared.stderr
    assert (proj / "cmp.html").is_file() and list((proj / "cmp_files").rglob("*.png"))
    # the two clip versions were trained on the same shards
    versions = commands(proj, env, "compare", "--model", "glide-clip")
    assert versions.returncode == 0, versions.stderr
    train = _lock_md5s(yaml.safe_load((proj / "dvc.lock").read_text())["stages"]["train_clip"])
    assert f"same data: yes (training: data/shards/train@{train['data/shards/train']})" in (
        versions.stdout
    )


def _lock_md5s(entry: dict[str, Any]) -> dict[str, str]:
    return {d["path"]: d["md5"] for d in [*entry.get("deps", ()), *entry.get("outs", ())]}


def check_dataset_lineage(proj: Path, client: Any) -> None:
    """Every training run and the evaluate run logged the data they read as MLflow datasets with
    the digests dvc.lock records, linked to the prepare run; versions link the evaluate run and
    carry a bounded set of tags."""
    lock = yaml.safe_load((proj / "dvc.lock").read_text())["stages"]
    (prepare,) = client.search_runs(
        [client.get_experiment_by_name("glide").experiment_id], "tags.stage = 'prepare'"
    )
    made = {d.dataset.name: d.dataset.digest for d in prepare.inputs.dataset_inputs}
    assert made["data/eval/val"] == _lock_md5s(lock["prepare"])["data/eval/val"]
    for name in ("base", "upsampler", "inpaint", "clip"):
        run = client.get_run((proj / "models" / name / "mlflow_run_id").read_text().strip())
        read = {
            d.dataset.name: (d.dataset.digest, d.tags[0].value) for d in run.inputs.dataset_inputs
        }
        deps = _lock_md5s(lock[f"train_{name}"])
        assert read["data/shards/train"] == (deps["data/shards/train"], "training")
        assert made["data/shards/train"] == deps["data/shards/train"]
        assert run.data.tags["lineage.prepare_run_id"] == prepare.info.run_id
    evaluated = json.loads((proj / "metrics/evaluate.json").read_text())["info"]["mlflow_run_id"]
    run = client.get_run(evaluated)
    (dataset,) = run.inputs.dataset_inputs
    assert (dataset.dataset.name, dataset.tags[0].value) == ("data/eval/val", "evaluation")
    assert dataset.dataset.digest == _lock_md5s(lock["evaluate"])["data/eval/val"]
    for name in ("glide-base", "glide-upsampler", "glide-inpaint", "glide-clip"):
        mv = client.get_model_version_by_alias(name, "champion")
        assert mv.tags["lineage.evaluate_run_id"] == evaluated
        # bounded: lineage, training outcome and the gate's decision; the metrics are logged
        # against the version's logged model by the evaluate run
        assert not [k for k in mv.tags if k.startswith("metric.")], sorted(mv.tags)
        assert len(mv.tags) <= MAX_VERSION_TAGS, sorted(mv.tags)
        model_metrics = client.get_logged_model(version_model_id(mv)).metrics
        assert model_metrics and {m.run_id for m in model_metrics} == {evaluated}


def test_pipeline_end_to_end_sqlite(tmp_path: Path) -> None:
    proj = tmp_path / "repo"
    uri = f"sqlite:///{proj / 'mlflow.db'}"
    env = _env(tmp_path, uri)
    project(proj, env)
    env.pop("MLFLOW_TRACKING_URI")  # the default store: sqlite:///<repo>/mlflow.db
    check_pipeline(proj, env, uri)
    assert (proj / "mlflow.db").is_file()


def test_pipeline_end_to_end_mlflow_server(tmp_path: Path, template_db: Path) -> None:  # noqa: F811
    proc, uri = start_server(tmp_path / "server", template_db)
    try:
        env = _env(tmp_path, uri)
        proj = project(tmp_path / "repo", env)
        check_pipeline(proj, env, uri)
        assert not (proj / "mlflow.db").exists()  # everything went to the server
    finally:
        stop_server(proc)


def test_dvc_experiments_with_hydra_composition(tmp_path: Path) -> None:
    """``dvc exp run -S train.max_steps=3``: DVC composes conf/ with the override into
    params.yaml (hydra.enabled in the committed .dvc/config), the ``params:`` of dvc.yaml re-run
    exactly the stages reading ``train`` (all four training stages, with 3 steps each) and their
    downstream, not ``prepare``; the experiment is recorded and ``dvc exp show`` lists it."""
    proj = tmp_path / "repo"
    env = _env(tmp_path, f"sqlite:///{proj / 'mlflow.db'}")
    project(proj, env)
    assert run(["dvc", "config", "hydra.enabled"], proj, env).strip() == "true"
    committed = (proj / "params.yaml").read_text()

    baseline = run(["dvc", "exp", "run", "-n", "baseline"], proj, env)
    assert ran(baseline) == STAGES, baseline
    # DVC's own composition without -S is byte for byte the committed params.yaml
    assert (proj / "params.yaml").read_text() == committed

    out = run(["dvc", "exp", "run", "-n", "steps3", "-S", "train.max_steps=3"], proj, env)
    assert "steps3" in out
    assert ran(out) == STAGES - {"prepare"}, out
    params = yaml.safe_load((proj / "params.yaml").read_text())
    assert params["train"]["max_steps"] == 3 and params["promotion"]["models"]
    for name in ("base", "upsampler", "inpaint", "clip"):  # -S train.x reaches every train stage
        assert json.loads((proj / "models" / name / "summary.json").read_text())["step"] == 3

    # on top of steps3: only the `evaluate` section changes, so only evaluate and register run
    evalcap_args = ["-S", "train.max_steps=3", "-S", "evaluate.num_captions=6"]
    evalcap = run(["dvc", "exp", "run", "-n", "evalcap", *evalcap_args], proj, env)
    assert ran(evalcap) == {"evaluate", "register"}, evalcap

    shown = json.loads(run(["dvc", "exp", "show", "--json"], proj, env))
    exps = {
        e.get("name"): e["data"]
        for rev in shown
        for e in [rev, *[x for c in rev.get("experiments") or () for x in c["revs"]]]
    }
    assert {"baseline", "steps3", "evalcap"} <= set(exps)
    data = exps["steps3"]
    assert data["params"]["params.yaml"]["data"]["train"]["max_steps"] == 3
    assert "metrics/evaluate.json" in data["metrics"]
    assert data["metrics"]["metrics/evaluate.json"]["data"]["summary"]
    assert exps["baseline"]["params"]["params.yaml"]["data"]["train"]["max_steps"] == 2
    assert exps["evalcap"]["params"]["params.yaml"]["data"]["evaluate"]["num_captions"] == 6
