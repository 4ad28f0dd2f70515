"""Atomic checkpoints, exact resume (same step, weights, optimizer state), resume after kill -9."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from glide.models import load_preset
from glide.models.export import atomic_torch_save
from glide.training import TrainConfig, TrainResult, load_checkpoint, train
from glide.training.run import RUN_ID_FILE
from tests.test_training_data import write_shards
from tests.test_training_modules import small_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shards(tmp_path_factory.mktemp("shards"), n=64, per_shard=16, size=64)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Restores torch's thread count (train() sets it from the config)."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


class _Unpicklable:
    def __reduce__(self) -> tuple:
        raise RuntimeError("disk full")


def test_atomic_save_never_leaves_a_torn_file(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1, "w": torch.ones(3)}, path)
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_torch_save({"step": 2, "w": torch.zeros(3), "bad": _Unpicklable()}, path)
    assert torch.load(path, weights_only=True)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def _train(cfg: TrainConfig, root: Path) -> TrainResult:
    return train(
        cfg,
        load_preset("tiny"),
        root=root,
        experiment="test",
        tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        params={"test": True},
    )


def _assert_same_state(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    oa, ob = a["optimizer_states"][0], b["optimizer_states"][0]
    assert oa["param_groups"] == ob["param_groups"]
    for i, st in oa["state"].items():
        for k, v in st.items():
            assert torch.equal(v, ob["state"][i][k]), (i, k)
    assert a["lr_schedulers"] == b["lr_schedulers"]


def test_exact_resume_same_step_weights_and_optimizer(
    shards: Path, tmp_path: Path, one_thread: None
) -> None:
    # The v recipe with importance sampling: its loss history (warm after step 3 with 2 bins of
    # 10) is part of the state a resume must restore, or steps 3-4 draw other timesteps.
    cfg = small_config(
        shards,
        tmp_path / "a",
        max_steps=4,
        checkpoint_every=2,
        num_threads=1,
        parametrization="v",
        timestep_sampler="loss_second_moment",
        timestep_bins=2,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        full = _train(cfg, tmp_path / "a")
    # The EMA copy is in eval mode by design; users must not see Lightning warn about it, nor
    # the deprecation of a torch API that Lightning's loader code uses (tests/test_lineage.py
    # checks a real stage's output for Lightning's product tips too).
    assert not [w for w in caught if "in eval mode" in str(w.message)]
    assert not [w for w in caught if "LeafSpec" in str(w.message)]
    ckdir = Path(cfg.out_dir) / "checkpoints"
    assert {p.name for p in ckdir.iterdir()} == {
        "last.ckpt",
        "step-0000002.ckpt",
        "step-0000004.ckpt",
    }
    final = load_checkpoint(ckdir / "last.ckpt")  # weights_only=True
    assert final["global_step"] == 4
    assert any(k.startswith("ema.model.") for k in final["state_dict"])
    assert final["ShardDataModule"]["batches"] == 4  # the data position
    assert int(final["timestep_sampler"]["counts"].sum()) == 20  # both bins' histories full
    exported = torch.load(Path(cfg.out_dir) / "model.pt", weights_only=True)
    assert exported["diffusion"]["parametrization"] == "v"

    # A "crashed" run that only has the step-2 checkpoint resumes into the same MLflow run.
    out_b = tmp_path / "a" / "models" / "resumed"
    (out_b / "checkpoints").mkdir(parents=True)
    shutil.copy(ckdir / "step-0000002.ckpt", out_b / "checkpoints" / "last.ckpt")
    shutil.copy(Path(cfg.out_dir) / RUN_ID_FILE, out_b / RUN_ID_FILE)
    resumed_cfg = dataclasses.replace(cfg, out_dir=str(out_b), resume=True)
    resumed = _train(resumed_cfg, tmp_path / "a")
    assert resumed.run_id == full.run_id and resumed.step == 4
    again = load_checkpoint(out_b / "checkpoints" / "last.ckpt")
    _assert_same_state(final, again)
    for key in ("losses", "counts"):
        assert torch.equal(final["timestep_sampler"][key], again["timestep_sampler"][key])

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'a' / 'mlflow.db'}")
    steps = sorted(m.step for m in client.get_metric_history(full.run_id, "train/loss"))
    assert steps == [0, 1, 2, 2, 3, 3]  # steps 2-3 ran again after the "crash", same run


def tiny_base_overrides(shards: Path, out: Path) -> list[str]:
    """``pipelines/train.py train=base`` overrides for a seconds-long run of a 32 px U-Net on
    ``shards``, writing under ``out`` (one thread, no loader workers, no time cap)."""
    return [
        f"train.data.shards_dir={shards}",
        f"train.out_dir={out / 'models' / 'base'}",
        f"train.plots_file={out / 'plots.csv'}",
        "+train.model_overrides.image_size=32",
        "+train.model_overrides.channel_mult='1,2'",
        "+train.model_overrides.attention_resolutions='8'",
        "+train.model_overrides.text_ctx=16",
        "+train.model_overrides.xf_layers=1",
        "train.data.image_size=32",
        "train.data.text_ctx=16",
        "train.data.batch_size=4",
        "train.data.num_workers=0",
        "train.max_time=0",
        "train.num_threads=1",
        "train.progress=false",
        "train.sample.steps=2",
    ]


@pytest.mark.slow
def test_resume_after_kill_9(shards: Path, tmp_path: Path) -> None:
    overrides = [
        *tiny_base_overrides(shards, tmp_path),
        f"tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "train.max_steps=40",
        "train.checkpoint_every=5",
        "train.log_mlflow_model=false",
    ]
    cmd = [sys.executable, str(REPO / "pipelines" / "train.py"), "train=base", *overrides]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    ckdir = tmp_path / "models" / "base" / "checkpoints"
    deadline = time.time() + 300

    # step-N.ckpt is written before last.ckpt: wait for both, or the kill can land in between
    def saved() -> bool:
        return bool(list(ckdir.glob("step-*.ckpt"))) and (ckdir / "last.ckpt").is_file()

    while not saved() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(ckdir / "last.ckpt")["global_step"]
    assert 5 <= killed_at < 40
    run_id = (tmp_path / "models" / "base" / RUN_ID_FILE).read_text().strip()

    subprocess.run([*cmd, "train.resume=true"], cwd=REPO, env=env, check=True, capture_output=True)
    assert load_checkpoint(ckdir / "last.ckpt")["global_step"] == 40
    assert (tmp_path / "models" / "base" / RUN_ID_FILE).read_text().strip() == run_id
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1
    assert client.get_run(run_id).info.status == "FINISHED"
    assert (tmp_path / "models" / "base" / "model.pt").is_file()


def test_max_time_cap_is_reported_recorded_and_resumable(
    shards: Path, tmp_path: Path, one_thread: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ``max_time`` cap that fires before ``max_steps`` says so on stderr and records
    ``stopped_by: max_time`` in summary.json, the export and the MLflow run; resuming without
    the cap trains the remaining steps into the same run and records ``max_steps``."""
    import mlflow

    from glide.models.export import read_metadata
    from glide.tracking.registry import TrainingOutcome, training_outcome

    cfg = small_config(
        shards, tmp_path, max_steps=6, max_time=0.001, checkpoint_every=100, num_threads=1
    )
    out = Path(cfg.out_dir)
    cut = _train(cfg, tmp_path)
    assert cut.stopped_by == "max_time" and 1 <= cut.step < 6
    assert (
        f"train_base: stopped by max_time=0.001s at step {cut.step} of 6 (the model is "
        "truncated; set train.max_time=0 to train every step)"
    ) in capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["stopped_by"], summary["step"], summary["max_steps"]) == (
        "max_time",
        cut.step,
        6,
    )
    extra = read_metadata(out / "model.pt")["extra"]
    assert (extra["stopped_by"], extra["step"], extra["max_steps"]) == ("max_time", cut.step, 6)
    assert training_outcome(out) == TrainingOutcome("max_time", cut.step, 6)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    tags = client.get_run(cut.run_id).data.tags
    assert (tags["stopped_by"], tags["steps_done"], tags["max_steps"]) == (
        "max_time",
        str(cut.step),
        "6",
    )

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        done = _train(dataclasses.replace(cfg, max_time=0, resume=True), tmp_path)
    assert not [w for w in caught if "Timer" in str(w.message)]  # no advice to re-add the cap
    assert (done.run_id, done.step, done.stopped_by) == (cut.run_id, 6, "max_steps")
    assert "stopped by" not in capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["stopped_by"] == "max_steps"
    assert read_metadata(out / "model.pt")["extra"]["stopped_by"] == "max_steps"
    tags = client.get_run(cut.run_id).data.tags
    assert (tags["stopped_by"], tags["steps_done"]) == ("max_steps", "6")
