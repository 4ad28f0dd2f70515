"""Run comparison: differing parameters, key metrics, Markdown/HTML reports with sample grids;
Hydra overrides recovered from DVC's composed params.yaml."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest
from PIL import Image

from glide.config import experiment_overrides, hydra_overrides
from glide.tracking.compare import (
    RunSummary,
    compare_runs,
    write_report,
)
from tests.test_registry import Store, template_db  # noqa: F401  (fixture)


def test_compare_keeps_only_differing_params_and_key_metrics() -> None:
    runs = [
        RunSummary("a" * 32, "run a", {"seed": "0", "train.max_steps": "5", "x": "1"},
                   {"summary.cfg_best_caption_accuracy": 0.25, "other": 1.0}),
        RunSummary("b" * 32, "run b", {"seed": "0", "train.max_steps": "9"},
                   {"summary.cfg_best_caption_accuracy": 0.5, "train/loss": 0.125}),
    ]  # fmt: skip
    comp = compare_runs(runs)
    assert comp.params == ("train.max_steps", "x")  # seed is equal; x missing in b differs
    assert comp.metrics == ("summary.cfg_best_caption_accuracy", "train/loss")
    rows = comp.rows()
    assert rows[1] == ["run a", "5", "1", "0.25", "-"]
    assert rows[2] == ["run b", "9", "-", "0.5", "0.125"]
    table = comp.format_table()
    assert table.splitlines()[0].split() == ["run", "train.max_steps", "x", *comp.metrics]
    assert compare_runs(runs, ["oth*"]).metrics == ("other",)


@pytest.fixture
def store(tmp_path: Path, template_db: Path) -> Store:  # noqa: F811
    return Store(tmp_path, template_db)


def _run_with_grid(store: Store, steps: str, colour: str, acc: float) -> str:
    run = store.client.create_run(
        store.experiment_id, run_name="evaluate", tags={"stage": "evaluate"}
    )
    rid = run.info.run_id
    store.client.log_param(rid, "train.max_steps", steps)
    store.client.log_param(rid, "seed", "0")
    store.client.log_metric(rid, "summary.cfg_best_caption_accuracy", acc)
    grid = store.root / rid / "cfg_3.png"
    grid.parent.mkdir()
    Image.new("RGB", (8, 8), colour).save(grid)
    store.client.log_artifact(rid, str(grid), "grids")
    store.client.set_terminated(rid)
    return rid


@pytest.mark.parametrize("suffix", [".md", ".html"])
def test_compare_command_writes_report_with_grids_side_by_side(
    store: Store, suffix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from glide.tracking.commands import add_compare_parser

    a = _run_with_grid(store, "5", "red", 0.25)
    b = _run_with_grid(store, "9", "blue", 0.5)
    other = store.client.create_run(store.experiment_id, tags={"stage": "prepare"})
    store.client.set_terminated(other.info.run_id)
    report = store.root / f"out/compare{suffix}"
    parser = argparse.ArgumentParser()
    add_compare_parser(parser.add_subparsers())
    args = parser.parse_args(
        ["compare", "--stage", "evaluate", "--report", str(report), "--tracking-uri", store.uri]
    )
    assert args._run(args) == 0
    out = capsys.readouterr().out
    assert "train.max_steps" in out and "seed" not in out
    assert out.index(a[:8]) < out.index(b[:8])  # oldest first
    assert other.info.run_id[:8] not in out

    text = report.read_text()
    images = sorted(report.parent.glob("compare_files/run*/grids/*.png"))
    assert len(images) == 2
    colours = {Image.open(p).getpixel((0, 0)) for p in images}
    assert colours == {(255, 0, 0), (0, 0, 255)}
    for img in images:
        assert img.relative_to(report.parent).as_posix() in text
    if suffix == ".html":
        assert text.startswith("<!DOCTYPE html>") and text.count("<img ") == 2
    else:
        assert "## Samples" in text and text.count("![") == 2
        # both runs' grids of the same artifact path share one row
        assert sum(1 for line in text.splitlines() if line.count("![") == 2) == 1


def test_compare_model_versions_shows_aliases_and_metrics(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    from glide.tracking.commands import add_compare_parser
    from glide.tracking.registry import MetricRule, ModelRegistry, PromotionConfig

    registry = ModelRegistry(
        store.client,
        PromotionConfig(rules=(MetricRule(metric="summary.acc", tolerance=0.0),)),
    )
    folder = store.trained_model("base", b"1")
    registry.register(name="glide-base", model_dir=folder, metrics={"summary.acc": 0.5}, lineage={})
    store.trained_model("base", b"22")
    registry.register(name="glide-base", model_dir=folder, metrics={"summary.acc": 0.4}, lineage={})
    parser = argparse.ArgumentParser()
    add_compare_parser(parser.add_subparsers())
    args = parser.parse_args(["compare", "--model", "glide-base", "--tracking-uri", store.uri])
    assert args._run(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "train.max_steps" in lines[0] and "metric.summary.acc" in lines[0]
    assert lines[2].startswith("glide-base v1 @champion") and "0.5" in lines[2]
    assert lines[3].startswith("glide-base v2 @challenger") and "0.4" in lines[3]


def test_compare_shows_whether_runs_read_the_same_data(
    store: Store, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from glide.tracking.commands import add_compare_parser
    from glide.tracking.datasets import log_datasets, shard_dataset
    from tests.test_training_data import write_shards

    monkeypatch.chdir(store.root)
    write_shards(Path("data/shards"), n=8, per_shard=4, val=2, seed=0)
    first = shard_dataset(store.root, "data/shards", "train")
    shutil.rmtree("data/shards")
    write_shards(Path("data/shards"), n=8, per_shard=4, val=2, seed=1)  # same path, new data
    second = shard_dataset(store.root, "data/shards", "train")
    assert first.name == second.name == "data/shards/train" and first.digest != second.digest

    ids = []
    for ref in (first, first, second):
        run = store.client.create_run(store.experiment_id, tags={"stage": "train_base"})
        log_datasets(store.client, run.info.run_id, [(ref, "training")])
        store.client.set_terminated(run.info.run_id)
        ids.append(run.info.run_id)
    parser = argparse.ArgumentParser()
    add_compare_parser(parser.add_subparsers())

    def compare(*run_ids: str) -> list[str]:
        args = parser.parse_args(["compare", *run_ids, "--tracking-uri", store.uri])
        assert args._run(args) == 0
        return capsys.readouterr().out.splitlines()

    same = compare(ids[0], ids[1])
    assert same[0].split()[:2] == ["run", "data:training"]
    assert f"data/shards/train@{first.digest[:8]}" in same[2]
    assert same[-1] == f"same data: yes (training: data/shards/train@{first.digest})"
    differ = compare(ids[0], ids[2])
    assert f"data/shards/train@{second.digest[:8]}" in differ[3]
    assert differ[-1] == "same data: no (training differ)"


def test_compare_unreachable_server_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from glide.tracking.commands import add_compare_parser

    parser = argparse.ArgumentParser()
    add_compare_parser(parser.add_subparsers())
    args = parser.parse_args(["compare", "--tracking-uri", "http://127.0.0.1:9"])
    assert args._run(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("glide compare: error: MLflow tracking server http://127.0.0.1:9")
    assert "\n" not in err


def test_hydra_overrides_round_trip() -> None:
    from glide.config import compose

    defaults = compose("config")
    params = compose("config", ["train.max_steps=5", "promotion.tolerance=0.5", "seed=3"])
    overrides = hydra_overrides(params, defaults)
    assert "train.max_steps=5" in overrides and "promotion.tolerance=0.5" in overrides
    assert compose("config", overrides) == params
    upsampler = compose("config", ["train=upsampler", *overrides])
    assert upsampler["train"]["max_steps"] == 5 and upsampler["train"]["name"] == "upsampler"
    assert hydra_overrides({"a": {"b": [1, "x y"]}, "n": None}, {"a": {"b": [1]}, "c": 1}) == [
        'a.b=[1, "x y"]',
        "+n=null",
        "~c",
    ]


def test_experiment_overrides_only_inside_dvc_experiments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": {"max_steps": 5}}))
    defaults = {"train": {"max_steps": 1500}}
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    assert experiment_overrides(tmp_path, defaults) == []
    monkeypatch.setenv("DVC_EXP_NAME", "exp-1")
    assert experiment_overrides(tmp_path, defaults) == ["train.max_steps=5"]
    assert experiment_overrides(tmp_path / "none", defaults) == []


def test_write_report_without_images(tmp_path: Path) -> None:
    comp = compare_runs([RunSummary("r1", "one", {"a": "1"}), RunSummary("r2", "two", {"a": "2"})])
    path = write_report(comp, {}, tmp_path / "r.md")
    text = path.read_text()
    assert "| one | 1 |" in text and "| two | 2 |" in text and "## Samples" not in text
