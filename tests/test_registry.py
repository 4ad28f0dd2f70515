"""Model registry: the promotion gate (pure), registration with lineage, aliases, rollback, CLI.

Registry tests run against a real SQLite-backed MLflow store in a temporary folder (a migrated
template database is copied per test: creating one costs ~10 s).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from glide.tracking.registry import (
    MAX_VERSION_TAGS,
    GateDecision,
    MetricRule,
    ModelRegistry,
    PromotionConfig,
    RegistryError,
    TrainingOutcome,
    evaluate_gate,
    file_sha256,
    flatten_metrics,
    lineage_tags,
    mlflow_metric_name,
    version_model_id,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
ACC = "summary.cfg_best_caption_accuracy"
FD = "cfg.3.fd_clip"
GATE = PromotionConfig(
    models={"glide-base": "models/base"},
    rules=(
        MetricRule(metric=ACC, min=0.1, tolerance=0.05),
        MetricRule(metric=FD, higher_is_better=False, rel_tolerance=0.1, required=False),
    ),
)


# -- the gate (pure) ------------------------------------------------------------------------


def test_gate_without_champion_checks_absolute_bounds() -> None:
    ok = evaluate_gate({ACC: 0.5}, None, GATE)
    assert ok.passed
    low = evaluate_gate({ACC: 0.05}, None, GATE)
    assert not low.passed
    assert any("< min 0.1" in r for r in low.reasons)


def test_gate_tolerance_against_champion() -> None:
    champion = {ACC: 0.60, FD: 10.0}
    within = evaluate_gate({ACC: 0.56, FD: 10.9}, champion, GATE)  # -0.04, +9%
    assert within.passed, within.reasons
    worse_acc = evaluate_gate({ACC: 0.54, FD: 10.0}, champion, GATE)  # -0.06 > 0.05
    assert not worse_acc.passed
    assert any(r.startswith("FAIL " + ACC) for r in worse_acc.reasons)
    worse_fd = evaluate_gate({ACC: 0.70, FD: 11.5}, champion, GATE)  # lower is better: +15%
    assert not worse_fd.passed
    assert any(r.startswith("FAIL " + FD) for r in worse_fd.reasons)
    better = evaluate_gate({ACC: 0.9, FD: 1.0}, champion, GATE)
    assert better.passed
    must_improve = PromotionConfig(rules=(MetricRule(metric=ACC, tolerance=-0.1),))
    assert not evaluate_gate({ACC: 0.65}, {ACC: 0.6}, must_improve).passed
    assert evaluate_gate({ACC: 0.75}, {ACC: 0.6}, must_improve).passed


def test_gate_missing_metrics() -> None:
    required_missing = evaluate_gate({FD: 1.0}, None, GATE)
    assert not required_missing.passed
    assert any("missing" in r for r in required_missing.reasons)
    optional_missing = evaluate_gate({ACC: 0.5}, {ACC: 0.5}, GATE)  # fd_clip is optional
    assert optional_missing.passed
    no_rules = evaluate_gate({}, None, PromotionConfig())
    assert no_rules == GateDecision(True, ("ok no gate rules configured",))


def test_gate_refuses_truncated_training_unless_allowed() -> None:
    cut = TrainingOutcome("max_time", 163, 600)
    refused = evaluate_gate({ACC: 0.9}, None, GATE, training=cut)
    assert not refused.passed
    assert refused.reasons[0].startswith("FAIL truncated: stopped by max_time at step 163 of 600")
    allowed = evaluate_gate(
        {ACC: 0.9}, None, dataclasses.replace(GATE, allow_truncated=True), training=cut
    )
    assert allowed.passed and allowed.reasons[0].startswith("ok truncated: stopped by max_time")
    complete = evaluate_gate(
        {ACC: 0.9}, None, GATE, training=TrainingOutcome("max_steps", 600, 600)
    )
    assert complete == evaluate_gate({ACC: 0.9}, None, GATE)  # nothing to say about it
    # the metric rules still apply to an allowed truncated model
    low = evaluate_gate(
        {ACC: 0.05}, None, dataclasses.replace(GATE, allow_truncated=True), training=cut
    )
    assert not low.passed
    assert TrainingOutcome.from_tags(cut.tags()) == cut
    assert cut.tags() == {"train.stopped_by": "max_time", "train.steps": "163/600"}
    assert TrainingOutcome.from_tags({}) is None
    assert TrainingOutcome.from_record({"step": 5}) is None  # an export from before the key


def test_flatten_metrics_keeps_numbers_only() -> None:
    flat = flatten_metrics(
        {"cfg": {"3": {"fd_clip": 2, "caption_accuracy": 0.5}}, "info": {"base": "x", "ok": True}}
    )
    assert flat == {"cfg.3.fd_clip": 2.0, "cfg.3.caption_accuracy": 0.5}


def test_promotion_config_from_composed_conf() -> None:
    from glide.config import compose

    cfg = PromotionConfig.from_dict(compose("config")["promotion"])
    assert set(cfg.models) == {"glide-base", "glide-upsampler", "glide-inpaint", "glide-clip"}
    assert all(isinstance(r, MetricRule) for r in cfg.rules) and cfg.rules
    with pytest.raises(ValueError, match="unknown PromotionConfig"):
        PromotionConfig.from_dict({"tolerence": 0.1})


# -- a real store ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite database with its schema migrated (copied by :func:`store`)."""
    import mlflow

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


class Store:
    """A fresh tracking + registry store in ``root`` with experiment ``glide``."""

    def __init__(self, root: Path, template: Path) -> None:
        import mlflow

        shutil.copyfile(template, root / "mlflow.db")
        self.root = root
        self.uri = f"sqlite:///{root / 'mlflow.db'}"
        self.client = mlflow.MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self.experiment_id = self.client.create_experiment(
            "glide", artifact_location=(root / "mlartifacts").as_uri()
        )

    def trained_model(self, name: str, payload: bytes, *, log_export: bool = True) -> Path:
        """``models/<name>/`` as training leaves it: model.pt, mlflow_run_id, a logged run."""
        folder = self.root / "models" / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.pt").write_bytes(payload)
        run = self.client.create_run(self.experiment_id, run_name=f"train_{name}")
        self.client.log_param(run.info.run_id, "train.max_steps", str(len(payload)))
        if log_export:
            self.client.log_artifact(run.info.run_id, str(folder / "model.pt"), "export")
        self.client.set_terminated(run.info.run_id)
        (folder / "mlflow_run_id").write_text(run.info.run_id + "\n")
        return folder


@pytest.fixture
def store(tmp_path: Path, template_db: Path) -> Store:
    return Store(tmp_path, template_db)


def _register(registry: ModelRegistry, folder: Path, acc: float, fd: float = 5.0) -> Any:
    return registry.register(
        name="glide-base",
        model_dir=folder,
        metrics={ACC: acc, FD: fd, "samplers.x.seconds_per_image": 1.0},
        lineage={"lineage.git_commit": "abc"},
    )


def test_register_gate_aliases_rollback_and_idempotency(store: Store) -> None:
    registry = ModelRegistry(store.client, GATE)
    folder = store.trained_model("base", b"weights-1")
    first = _register(registry, folder, acc=0.5)
    assert (first.version, first.created, first.decision, first.champion) == (
        "1",
        True,
        "champion",
        "1",
    )
    mv = store.client.get_model_version("glide-base", "1")
    assert mv.tags["glide.sha256"] == file_sha256(folder / "model.pt")
    assert mv.tags["lineage.train_run_id"] == (folder / "mlflow_run_id").read_text().strip()
    assert mv.run_id == mv.tags["lineage.train_run_id"]
    assert not [k for k in mv.tags if k.startswith("metric.")]  # on the logged model instead
    model_id = version_model_id(mv)  # the run had no logged model: logged from the export
    assert model_id and mv.source == f"models:/{model_id}"
    logged = store.client.get_logged_model(model_id)
    assert (
        logged.source_run_id == mv.run_id and logged.tags["glide.sha256"] == mv.tags["glide.sha256"]
    )
    assert {m.key: m.value for m in logged.metrics} == {
        ACC: 0.5,
        FD: 5.0,
        "samplers.x.seconds_per_image": 1.0,
    }
    assert mv.tags["promotion.decision"] == "champion"

    again = _register(registry, folder, acc=0.0)  # same export: nothing new, nothing moves
    assert (again.version, again.created, again.decision) == ("1", False, "champion")
    assert len(store.client.search_model_versions("name='glide-base'")) == 1

    store.trained_model("base", b"weights-2-better")
    second = _register(registry, folder, acc=0.6)
    assert (second.version, second.decision, second.champion) == ("2", "champion", "2")
    assert registry.alias_version("glide-base", "previous") == "1"

    store.trained_model("base", b"weights-3-worse")
    third = _register(registry, folder, acc=0.3)  # 0.3 < 0.6 - 0.05: not promoted
    assert (third.version, third.decision, third.champion) == ("3", "challenger", "2")
    assert registry.alias_version("glide-base", "challenger") == "3"
    tags = store.client.get_model_version("glide-base", "3").tags
    assert tags["promotion.compared_to"] == "2"
    assert (
        "FAIL summary.cfg_best_caption_accuracy=0.3 vs champion v2 0.6" in tags["promotion.reasons"]
    )

    rolled = registry.rollback("glide-base")
    assert (rolled.version, rolled.previous_champion) == ("1", "2")
    assert registry.alias_version("glide-base", "champion") == "1"
    assert registry.alias_version("glide-base", "previous") is None  # v1 replaced nothing
    assert store.client.get_model_version("glide-base", "2").tags["promotion.decision"] == (
        "rolled_back"
    )
    with pytest.raises(RegistryError, match="no @previous"):
        registry.rollback("glide-base")


def test_manual_promotion_dry_run_gate_and_force(store: Store) -> None:
    registry = ModelRegistry(store.client, GATE)
    folder = store.trained_model("base", b"v1")
    _register(registry, folder, acc=0.8)
    store.trained_model("base", b"v2")
    _register(registry, folder, acc=0.2)  # challenger
    assert registry.alias_version("glide-base", "champion") == "1"

    dry = registry.promote("glide-base", 2, dry_run=True)
    assert (dry.decision, dry.applied) == ("challenger", False)
    refused = registry.promote("glide-base", 2)
    assert not refused.applied
    assert registry.alias_version("glide-base", "champion") == "1"
    forced_dry = registry.promote("glide-base", 2, force=True, dry_run=True)
    assert forced_dry.decision == "champion" and not forced_dry.applied
    assert registry.alias_version("glide-base", "champion") == "1"

    forced = registry.promote("glide-base", 2, force=True)
    assert forced.applied and forced.previous_champion == "1"
    assert registry.alias_version("glide-base", "champion") == "2"
    assert registry.alias_version("glide-base", "previous") == "1"
    assert registry.alias_version("glide-base", "challenger") is None
    assert registry.promote("glide-base", 2).decision == "unchanged"  # idempotent
    with pytest.raises(RegistryError, match="no version 9"):
        registry.promote("glide-base", 9)


def test_register_refuses_a_truncated_model_unless_allowed(store: Store) -> None:
    """The export's ``extra`` (or summary.json beside it) says how training ended: a model that
    ``max_time`` cut short becomes @challenger however good its metrics, and is tagged so."""
    import torch

    from glide.models.export import save_model

    registry = ModelRegistry(store.client, GATE)
    folder = store.trained_model("base", b"complete")  # not an export: summary.json says it
    (folder / "summary.json").write_text(
        json.dumps({"step": 600, "stopped_by": "max_steps", "max_steps": 600})
    )
    first = _register(registry, folder, acc=0.5)
    assert first.decision == "champion"
    tags = store.client.get_model_version("glide-base", "1").tags
    assert (tags["train.stopped_by"], tags["train.steps"]) == ("max_steps", "600/600")

    store.trained_model("base", b"placeholder")
    save_model(  # a real export: its extra wins over the stale summary.json
        folder / "model.pt",
        torch.nn.Linear(2, 2),
        kind="base",
        options={},
        tokenizer="clip",
        extra={"step": 163, "stopped_by": "max_time", "max_steps": 600},
    )
    second = _register(registry, folder, acc=0.9)  # better metrics, truncated training
    assert (second.version, second.decision, second.champion) == ("2", "challenger", "1")
    assert registry.alias_version("glide-base", "challenger") == "2"
    tags = store.client.get_model_version("glide-base", "2").tags
    assert (tags["train.stopped_by"], tags["train.steps"]) == ("max_time", "163/600")
    assert "FAIL truncated: stopped by max_time at step 163 of 600" in tags["promotion.reasons"]
    assert not registry.promote("glide-base", 2).applied  # the manual path gates it too

    lenient = ModelRegistry(store.client, dataclasses.replace(GATE, allow_truncated=True))
    promoted = lenient.promote("glide-base", 2)
    assert promoted.applied and promoted.decision == "champion"
    assert registry.alias_version("glide-base", "champion") == "2"
    assert any(r.startswith("ok truncated") for r in promoted.gate.reasons)


def test_register_without_training_run_imports_the_export(store: Store) -> None:
    folder = store.root / "models" / "clip"
    folder.mkdir(parents=True)
    (folder / "model.pt").write_bytes(b"clip")
    registry = ModelRegistry(store.client, PromotionConfig())
    result = registry.register(name="glide-clip", model_dir=folder, metrics={}, lineage={})
    mv = store.client.get_model_version("glide-clip", result.version)
    run = store.client.get_run(mv.run_id)
    assert run.info.run_name == "import_glide-clip"
    assert [a.path for a in store.client.list_artifacts(mv.run_id, "export")] == ["export/model.pt"]
    with pytest.raises(RegistryError, match="not found"):
        registry.register(name="glide-x", model_dir=store.root / "nope", metrics={}, lineage={})


def test_lineage_tags_from_git_and_dvc_lock(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "f").write_text("x")
    subprocess.run(["git", "add", "f"], cwd=tmp_path, check=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c"],
        cwd=tmp_path,
        check=True,
    )
    lock = {
        "schema": "2.0",
        "stages": {
            "train_base": {
                "cmd": "python pipelines/train.py train=base",
                "deps": [
                    {"path": "conf/train", "hash": "md5", "md5": "c0nf.dir"},
                    {"path": "data/shards", "hash": "md5", "md5": "da7a.dir"},
                    {"path": "pipelines/train.py", "hash": "md5", "md5": "c0de"},
                ],
                "outs": [{"path": "models/base", "hash": "md5", "md5": "0u7.dir"}],
            },
            "evaluate": {
                "deps": [],
                "outs": [{"path": "metrics/evaluate.json", "hash": "md5", "md5": "e7a1"}],
            },
        },
    }
    import yaml

    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    (tmp_path / "models" / "base").mkdir(parents=True)
    (tmp_path / "models" / "base" / "mlflow_run_id").write_text("run123\n")
    tags = lineage_tags(tmp_path, "models/base")
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert tags["lineage.git_commit"] == head.stdout.strip()
    assert tags["lineage.dvc_stage"] == "train_base"
    assert tags["lineage.data"] == "data/shards=da7a.dir"
    assert tags["lineage.config"] == "conf/train=c0nf.dir"
    assert tags["lineage.code"] == "pipelines/train.py=c0de"
    assert tags["lineage.outs"] == "models/base=0u7.dir"
    assert tags["lineage.evaluate"] == "metrics/evaluate.json=e7a1"
    assert tags["lineage.train_run_id"] == "run123"


# -- the command line -----------------------------------------------------------------------


def _cli(argv: list[str]) -> argparse.Namespace:
    from glide.tracking.commands import add_compare_parser, add_promote_parser

    parser = argparse.ArgumentParser(prog="glide")
    subs = parser.add_subparsers(dest="command", required=True)
    add_promote_parser(subs)
    add_compare_parser(subs)
    return parser.parse_args(argv)


def test_promote_command(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    registry = ModelRegistry(store.client, GATE)
    folder = store.trained_model("base", b"a")
    _register(registry, folder, acc=0.9)
    store.trained_model("base", b"b")
    _register(registry, folder, acc=0.1)
    uri = ["--tracking-uri", store.uri]

    args = _cli(["promote", "--model", "glide-base", "--version", "2", "--dry-run", *uri])
    assert args._run(args) == 0
    assert "v2 would become challenger" in capsys.readouterr().out

    # the gate of conf/promotion (min 0.0, tolerance 0.05) refuses 0.1 after 0.9
    args = _cli(["promote", "--model", "glide-base", "--version", "2", *uri])
    assert args._run(args) == 1
    assert registry.alias_version("glide-base", "champion") == "1"
    relaxed = ["--set", "promotion.rules.0.tolerance=1.0"]
    args = _cli(["promote", "--model", "glide-base", "--version", "2", *relaxed, *uri])
    assert args._run(args) == 0
    assert registry.alias_version("glide-base", "champion") == "2"

    args = _cli(["promote", "--model", "glide-base", "--rollback", *uri])
    assert args._run(args) == 0
    assert registry.alias_version("glide-base", "champion") == "1"
    args = _cli(["promote", "--model", "glide-base", *uri])
    assert args._run(args) == 0
    assert "@champion=v1" in capsys.readouterr().out
    args = _cli(["promote", "--model", "glide-nope", "--version", "1", *uri])
    assert args._run(args) == 2
    assert "glide promote: error:" in capsys.readouterr().err


def test_registered_champion_loads_for_sampling(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``models:/glide-base@champion`` resolves to the export training wrote."""
    from glide.models import load_preset
    from glide.models.export import build_model, save_model
    from glide.sampling import load_model_source

    options = load_preset("tiny")["base"]
    folder = store.root / "models" / "base"
    save_model(
        folder / "model.pt",
        build_model("base", options),
        kind="base",
        options=options,
        tokenizer="clip",
        diffusion={"steps": 1000, "noise_schedule": "squaredcos_cap_v2"},
    )
    run = store.client.create_run(store.experiment_id, run_name="train_base")
    store.client.log_artifact(run.info.run_id, str(folder / "model.pt"), "export")
    (folder / "mlflow_run_id").write_text(run.info.run_id)
    registry = ModelRegistry(store.client, GATE)
    result = _register(registry, folder, acc=0.5)
    assert result.decision == "champion"

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    loaded = load_model_source("models:/glide-base@champion")
    assert loaded.kind == "base" and loaded.image_size == 32
    assert "v1" in loaded.version
    report = json.dumps(result.as_dict())
    assert '"champion": 1' in report

    # the version's logged model: the export and the code that loads it, nothing pickled; MLflow
    # loads it as a python_function model through glide's loader, and predict samples the base
    import mlflow
    import numpy as np

    from glide.models.export import model_digest

    mlflow.set_tracking_uri(store.uri)
    mv = store.client.get_model_version_by_alias("glide-base", "champion")
    folder_files = Path(mlflow.artifacts.download_artifacts(mv.source))
    files = sorted(p.relative_to(folder_files).as_posix() for p in folder_files.rglob("*.*"))
    assert "MLmodel" in {p.name for p in folder_files.iterdir()}
    assert "artifacts/model.pt" in files and "pyfunc_code.py" in files
    assert not [f for f in files if f.endswith((".pkl", ".pth"))], files
    assert (folder_files / "artifacts" / "model.pt").read_bytes() == (
        folder / "model.pt"
    ).read_bytes()
    pyfunc = mlflow.pyfunc.load_model("models:/glide-base@champion")
    wrapped = pyfunc.unwrap_python_model().loaded
    assert wrapped.kind == "base" and model_digest(wrapped.model) == model_digest(loaded.model)
    (image,) = pyfunc.predict(["a red circle"])
    assert isinstance(image, np.ndarray) and image.shape == (32, 32, 3) and image.dtype == np.uint8


# Every tag lineage_tags writes for a model trained in a git checkout with a dvc.lock.
FULL_LINEAGE = {
    "lineage.git_commit": "a" * 40,
    "lineage.git_dirty": "false",
    "lineage.dvc_stage": "train_base",
    "lineage.data": "data/shards/train=da7a.dir",
    "lineage.config": "conf/train=c0nf.dir",
    "lineage.code": "pipelines/train.py=c0de",
    "lineage.params_sha256": "b" * 64,
    "lineage.outs": "models/base=0u7.dir",
    "lineage.evaluate": "metrics/evaluate.json=e7a1",
}


def _evaluate_run(store: Store, metrics: dict[str, float]) -> str:
    """An evaluate run that logged ``metrics`` as ``pipelines/evaluate.py`` does (MLflow names,
    no ``info.*``); returns its id."""
    from mlflow.entities import Metric

    run = store.client.create_run(store.experiment_id, run_name="evaluate")
    batch = [
        Metric(mlflow_metric_name(k), v, 1000, 0)
        for k, v in metrics.items()
        if not k.startswith("info.")
    ]
    for i in range(0, len(batch), 500):
        store.client.log_batch(run.info.run_id, metrics=batch[i : i + 500])
    store.client.set_terminated(run.info.run_id)
    return run.info.run_id


def test_version_tags_stay_bounded_and_metrics_live_on_the_logged_model(store: Store) -> None:
    """A sweep of hundreds of metrics: a version's tags are lineage, how training ended and the
    gate's decision (at most 20, none a metric); every metric is logged against its logged model
    through the evaluate run (whose own history gains no point), where the gate reads them."""
    sweep = {
        f"{method}.{scale}.{name}": float(scale) + i / 10
        for method in ("cfg", "clip")
        for scale in range(30)
        for i, name in enumerate(("fd_clip", "clip_score", "caption_accuracy", "oracle_score"))
    }
    summary = {f"summary.key_{i:02d}": float(i) for i in range(40)}
    metrics = {
        **sweep,
        **summary,
        ACC: 0.5,
        FD: 5.0,
        "samplers.dpm++-10.fd_clip": 9.0,  # "+" is no MLflow metric name: dpmpp, as evaluate logs
        "info.images_generated": 96.0,  # bookkeeping: not a model metric
    }
    eval_id = _evaluate_run(store, metrics)
    registry = ModelRegistry(store.client, GATE)
    folder = store.trained_model("base", b"weights")
    (folder / "summary.json").write_text(
        json.dumps({"step": 600, "stopped_by": "max_steps", "max_steps": 600})
    )
    register = {"name": "glide-base", "model_dir": folder, "lineage": FULL_LINEAGE}
    registry.register(**register, metrics=metrics, evaluate_run_id=eval_id)
    # a better export replaces it (promotion.replaced), then a rollback (rolled_back)
    store.trained_model("base", b"weights-2")
    better = {**metrics, ACC: 0.6}
    registry.register(**register, metrics=better, evaluate_run_id=_evaluate_run(store, better))
    registry.rollback("glide-base")

    expected = sorted(
        [
            "glide.sha256",
            *FULL_LINEAGE,
            "lineage.train_run_id",
            "lineage.evaluate_run_id",
            "train.stopped_by",
            "train.steps",
            "promotion.decision",
            "promotion.reasons",
            "promotion.compared_to",
            "promotion.replaced",
            "promotion.decided_at",
        ]
    )
    assert len(expected) == 19 <= MAX_VERSION_TAGS == 20
    assert len(metrics) > 250
    for version in ("1", "2"):
        mv = store.client.get_model_version("glide-base", version)
        assert set(mv.tags) <= set(expected) and len(mv.tags) <= MAX_VERSION_TAGS, sorted(mv.tags)
        assert not [k for k in mv.tags if k.startswith("metric.")]
    assert sorted(store.client.get_model_version("glide-base", "2").tags) == expected

    mv = store.client.get_model_version("glide-base", "1")
    assert mv.tags["lineage.evaluate_run_id"] == eval_id
    model_id = version_model_id(mv)
    assert model_id and mv.source == f"models:/{model_id}"  # the page's "Source Model"
    logged = store.client.get_logged_model(model_id)
    on_model = {m.key: m.value for m in logged.metrics}
    assert "samplers.dpmpp-10.fd_clip" in on_model and "info.images_generated" not in on_model
    assert on_model == {
        mlflow_metric_name(k): v for k, v in metrics.items() if not k.startswith("info.")
    }
    assert {m.run_id for m in logged.metrics} == {eval_id}  # logged by the evaluate run
    versions = json.loads(logged.tags["mlflow.modelVersions"])  # the model's page links it
    assert versions == [{"name": "glide-base", "version": 1}]
    assert len(store.client.get_metric_history(eval_id, ACC)) == 1  # and its history unchanged
    # the version page's description links the runs and the model's page (every metric) and
    # shows the gated metrics
    train_id = mv.tags["lineage.train_run_id"]
    for rid in (train_id, eval_id):
        assert f"(#/experiments/{store.experiment_id}/runs/{rid})" in mv.description
    assert f"(#/experiments/{store.experiment_id}/models/{model_id})" in mv.description
    assert f"All {len(on_model)} evaluation metrics" in mv.description
    assert f"| `{ACC}` | 0.5 |" in mv.description and f"| `{FD}` | 5 |" in mv.description

    # registering the same export again logs nothing twice
    registry.register(**register, metrics=metrics, evaluate_run_id=eval_id)
    again = store.client.get_logged_model(model_id).metrics
    assert len(again) == len(logged.metrics)

    # rules on metrics outside the gate's set (and a "+" key) read the model's values, also
    # once the evaluate run is deleted
    wider = PromotionConfig(
        rules=(
            MetricRule(metric="cfg.7.clip_score", min=7.0),
            MetricRule(metric="samplers.dpm++-10.fd_clip", higher_is_better=False, max=10.0),
        )
    )
    store.client.delete_run(eval_id)
    candidate = ModelRegistry(store.client, wider).version_metrics("glide-base", 1)
    assert candidate["cfg.7.clip_score"] == pytest.approx(7.1)
    verdict = evaluate_gate(candidate, None, wider)
    assert verdict.passed, verdict.reasons
    assert verdict.reasons[0].startswith("ok cfg.7.clip_score=7.1")
    assert verdict.reasons[1].startswith("ok samplers.dpm++-10.fd_clip=9")


def test_gate_reads_versions_registered_with_metric_tags(store: Store) -> None:
    """A champion registered before the metrics moved to the logged model (``metric.*`` tags,
    source the run's export folder) is still what a new version is held against."""
    registry = ModelRegistry(store.client, GATE)
    folder = store.trained_model("base", b"old-layout")
    run_id = (folder / "mlflow_run_id").read_text().strip()
    store.client.create_registered_model("glide-base")
    old = store.client.create_model_version(
        "glide-base",
        f"runs:/{run_id}/export",
        run_id=run_id,
        tags={
            "glide.sha256": file_sha256(folder / "model.pt"),
            f"metric.{ACC}": "0.8",
            f"metric.{FD}": "5.0",
            "promotion.decision": "champion",
        },
    )
    store.client.set_registered_model_alias("glide-base", "champion", old.version)
    assert registry.version_metrics("glide-base", 1) == {ACC: 0.8, FD: 5.0}

    store.trained_model("base", b"new-worse")
    worse = _register(registry, folder, acc=0.5)  # 0.5 < 0.8 - 0.05
    assert (worse.version, worse.decision, worse.champion) == ("2", "challenger", "1")
    assert any(f"{ACC}=0.5 vs champion v1 0.8" in r for r in worse.reasons), worse.reasons
    store.trained_model("base", b"new-better")
    better = _register(registry, folder, acc=0.9, fd=5.2)  # fd within 10%
    assert (better.version, better.decision) == ("3", "champion")
    assert registry.alias_version("glide-base", "previous") == "1"


# -- distilled models: their own names, gated against the teacher's row ------------------------

DIST = "samplers.recipe:distilled."
TEACHER = "samplers.recipe:balanced."


def _distilled_metrics(exact: float, background: float, teacher_exact: float = 0.6) -> dict:
    return {
        f"{DIST}caption_accuracy_single": exact,
        f"{DIST}attributes_single.color": 1.0,
        f"{DIST}attributes_single.background": background,
        f"{TEACHER}caption_accuracy_single": teacher_exact,
        f"{TEACHER}attributes_single.color": 1.0,
        f"{TEACHER}attributes_single.background": 1.0,
    }


def test_gate_baseline_rule_compares_with_the_teachers_row_not_the_champion() -> None:
    from glide.config import compose

    gate = PromotionConfig.from_dict(compose("config", ["promotion=distilled"])["promotion"])
    assert set(gate.models) == {"glide-base-distilled", "glide-upsampler-distilled"}
    within = evaluate_gate(_distilled_metrics(0.52, 0.97), None, gate)  # -8 and -3 points
    assert within.passed, within.reasons
    assert any(f"vs {TEACHER}caption_accuracy_single 0.6" in r for r in within.reasons)
    # a champion that scored higher does not matter: the teacher is the reference
    champion = {f"{DIST}caption_accuracy_single": 0.9}
    assert evaluate_gate(_distilled_metrics(0.52, 0.97), champion, gate).passed
    too_far = evaluate_gate(_distilled_metrics(0.48, 0.97), None, gate)  # -12 points
    assert not too_far.passed
    assert any(r.startswith(f"FAIL {DIST}caption_accuracy_single") for r in too_far.reasons)
    grey = evaluate_gate(_distilled_metrics(0.6, 0.90), None, gate)  # backgrounds -10 points
    assert not grey.passed
    no_teacher = {k: v for k, v in _distilled_metrics(0.6, 1.0).items() if TEACHER not in k}
    missing = evaluate_gate(no_teacher, None, gate)
    assert not missing.passed and any("baseline" in r and "missing" in r for r in missing.reasons)


def test_distilled_models_register_under_their_own_names(store: Store) -> None:
    from glide.config import compose

    gate = PromotionConfig.from_dict(compose("config", ["promotion=distilled"])["promotion"])
    registry = ModelRegistry(store.client, gate)
    base = store.trained_model("base-distilled-pd4", b"student-1")
    up = store.trained_model("upsampler-distilled-pd2", b"student-up-1")
    good = _distilled_metrics(0.56, 1.0)
    first = registry.register(name="glide-base-distilled", model_dir=base, metrics=good, lineage={})
    assert first.decision == "champion" and first.version == "1"
    second = registry.register(
        name="glide-upsampler-distilled", model_dir=up, metrics=good, lineage={}
    )
    assert second.decision == "champion"
    read = registry.version_metrics("glide-base-distilled", 1)  # from its logged model
    assert read[f"{DIST}caption_accuracy_single"] == 0.56
    assert read[f"{TEACHER}caption_accuracy_single"] == 0.6
    # a worse student is kept as @challenger: the teacher's row decides, not the clock
    worse = store.trained_model("base-distilled-pd4-b", b"student-2")
    third = registry.register(
        name="glide-base-distilled",
        model_dir=worse,
        metrics=_distilled_metrics(0.40, 1.0),
        lineage={},
    )
    assert third.decision == "challenger" and third.champion == "1"
    assert any("FAIL" in r for r in third.reasons)
    names = {m.name for m in store.client.search_registered_models()}
    assert {"glide-base-distilled", "glide-upsampler-distilled"} <= names
    assert "glide-base" not in names  # the teacher's registered name is untouched
