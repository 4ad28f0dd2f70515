"""What the pipeline does when things go wrong, in-process and fast: the project's store from a
DVC experiment's temporary workspace, damaged checkpoints, a stop signal during training, a full
disk at the write call, a tracking store that stops answering. The stage-process versions (real
``dvc queue``, a real ``mlflow server`` killed, real signals to stage processes) are in
``test_failure_stages.py``."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from glide.data.shards import Sample, ShardWriter
from glide.evaluation.report import write_csv
from glide.io import DiskFullError, atomic_write_text, describe_disk_full
from glide.models.export import atomic_torch_save
from glide.stage import StageStopped, install_signal_handlers
from glide.tracking import tracked_run
from glide.tracking.buffer import BufferingClient, replay
from glide.tracking.store import dvc_experiment_tags, store_root
from glide.training import TrainConfig, TrainResult, load_checkpoint, train
from glide.training.checkpoint import CheckpointError, resume_checkpoint
from glide.training.run import RUN_ID_FILE
from tests.faults.enospc import install as install_enospc
from tests.test_training_checkpoint import one_thread, shards  # noqa: F401  (fixtures)
from tests.test_training_modules import small_config


def _train(cfg: TrainConfig, root: Path, **kw: Any) -> TrainResult:
    from glide.models import load_preset

    return train(
        cfg, load_preset("tiny"), root=root, tracking_uri=f"sqlite:///{root / 'mlflow.db'}", **kw
    )


def _leftovers(folder: Path) -> list[Path]:
    """Temporary files a write left behind."""
    return [p for p in folder.rglob("*") if ".tmp" in p.name]


# --- the project's store from a DVC experiment workspace ----------------------------------------


def test_store_root_walks_out_of_a_dvc_experiment_workspace(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    workspace = project / ".dvc" / "tmp" / "exps" / "tmpa1b2c3"
    workspace.mkdir(parents=True)
    assert store_root(workspace) == project.resolve()
    assert store_root(workspace / "sub") == project.resolve()
    assert store_root(project) == project.resolve()
    assert store_root(project / ".dvc" / "tmp" / "exps") == (project / ".dvc/tmp/exps").resolve()
    env = {"DVC_EXP_NAME": "lucky-fawn", "DVC_EXP_BASELINE_REV": "abc123"}
    assert dvc_experiment_tags(env) == {
        "dvc.exp_name": "lucky-fawn",
        "dvc.exp_baseline_rev": "abc123",
    }
    assert dvc_experiment_tags({}) == {}


def test_a_run_in_a_temporary_workspace_lands_in_the_project_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store, the artifacts and the experiment tags outlive the workspace DVC deletes."""
    import mlflow

    project = tmp_path / "proj"
    workspace = project / ".dvc" / "tmp" / "exps" / "tmpxyz"
    workspace.mkdir(parents=True)
    (workspace / "report.json").write_text('{"ok": 1}\n')
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_EXP_NAME", "brave-owl")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "f00d")
    with tracked_run(
        root=workspace, experiment="glide", run_name="evaluate", tags={"stage": "evaluate"}
    ) as run_mlflow:
        run_mlflow.log_artifact(str(workspace / "report.json"))
        run_id = run_mlflow.active_run().info.run_id
    shutil.rmtree(project / ".dvc")  # as DVC does once the experiment is saved
    assert not list(workspace.parent.parent.glob("**/mlflow.db"))
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert run.data.tags["dvc.exp_name"] == "brave-owl"
    assert run.data.tags["dvc.exp_baseline_rev"] == "f00d"
    got = client.download_artifacts(run_id, "report.json", str(tmp_path))
    assert json.loads(Path(got).read_text()) == {"ok": 1}
    assert (project / "mlartifacts").is_dir()


# --- damaged checkpoints -----------------------------------------------------------------------


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:  # flip bytes in the middle (tensor data): only the CRC check sees it
        mid = len(data) // 2
        data[mid : mid + 64] = bytes(b ^ 0xFF for b in data[mid : mid + 64])
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_resume_skips_damaged_checkpoints_for_the_newest_intact_one(
    tmp_path: Path, how: str
) -> None:
    folder = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        atomic_torch_save(
            {"global_step": step, "w": torch.randn(4096)}, folder / f"step-{step:07d}.ckpt"
        )
    shutil.copy(folder / "step-0000006.ckpt", folder / "last.ckpt")
    _damage(folder / "last.ckpt", how)
    _damage(folder / "step-0000006.ckpt", how)
    path, skipped = resume_checkpoint(tmp_path)
    assert path == folder / "step-0000004.ckpt"
    assert [s.split(" is damaged")[0] for s in skipped] == [
        str(folder / "last.ckpt"),
        str(folder / "step-0000006.ckpt"),
    ]
    # moved aside (kept for inspection), so the resumed run rewrites those names
    assert sorted(p.name for p in folder.iterdir()) == [
        "last.ckpt.damaged",
        "step-0000002.ckpt",
        "step-0000004.ckpt",
        "step-0000006.ckpt.damaged",
    ]
    for step in (2, 4):
        _damage(folder / f"step-{step:07d}.ckpt", how)
    assert resume_checkpoint(tmp_path)[0] is None
    assert resume_checkpoint(tmp_path / "nothing") == (None, [])


def test_training_resumes_past_a_torn_last_checkpoint(
    shards: Path,  # noqa: F811
    tmp_path: Path,
    one_thread: None,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = small_config(shards, tmp_path, max_steps=4, checkpoint_every=2, keep_checkpoints=-1)
    first = _train(cfg, tmp_path)
    ckdir = Path(cfg.out_dir) / "checkpoints"
    _damage(ckdir / "last.ckpt", "truncate")
    _damage(ckdir / "step-0000004.ckpt", "flip")
    capsys.readouterr()
    again = _train(dataclasses.replace(cfg, resume=True), tmp_path)
    err = capsys.readouterr().err
    assert "last.ckpt is damaged" in err and "step-0000004.ckpt is damaged" in err
    assert "resuming from" in err and "step-0000002.ckpt (step 2" in err
    assert again.step == 4 and again.run_id == first.run_id
    assert load_checkpoint(ckdir / "last.ckpt")["global_step"] == 4  # rewritten intact
    assert load_checkpoint(ckdir / "step-0000004.ckpt")["global_step"] == 4
    for path in ckdir.glob("*.ckpt"):
        _damage(path, "truncate")
    with pytest.raises(CheckpointError, match=r"every checkpoint in .* is damaged"):
        _train(dataclasses.replace(cfg, resume=True), tmp_path)


# --- a stop signal during training --------------------------------------------------------------


class _SignalAt(pl.Callback):
    """Sends this process ``signum`` once training reaches ``step``."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


@pytest.fixture
def stage_signals() -> Iterator[None]:
    """The stage's SIGTERM/SIGINT handlers for one test; the previous ones afterwards."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    install_signal_handlers()
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_checkpoints_marks_killed_and_resume_auto_continues(
    shards: Path,  # noqa: F811
    tmp_path: Path,
    one_thread: None,  # noqa: F811
    stage_signals: None,
    signum: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import mlflow

    cfg = small_config(
        shards, tmp_path, max_steps=6, checkpoint_every=100, resume="auto", keep_checkpoints=-1
    )
    with pytest.raises(StageStopped) as stopped:
        _train(cfg, tmp_path, extra_callbacks=[_SignalAt(2, signum)])
    assert stopped.value.signum == signum
    out = Path(cfg.out_dir)
    step = load_checkpoint(out / "checkpoints" / "last.ckpt")["global_step"]
    assert step == 2  # the step in flight finished, no further one began
    name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
    assert f"train_base: stopped by {name} at step 2 of 6" in capsys.readouterr().err
    assert not (out / "summary.json").exists() and not (out / "model.pt").exists()
    assert not _leftovers(out)
    run_id = (out / RUN_ID_FILE).read_text().strip()
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_run(run_id).info.status == "KILLED"

    done = _train(cfg, tmp_path)  # what `dvc repro` runs next: resume auto
    assert "resuming from" in capsys.readouterr().err
    assert (done.step, done.run_id) == (6, run_id)
    assert client.get_run(run_id).info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(run_id, "train/loss"))
    assert steps == list(range(6))  # steps 0-1 before the stop, 2-5 after: none twice

    # a changed config does not continue the stopped run's checkpoint: it starts over
    (out / "summary.json").unlink()
    changed = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=5e-4))
    capsys.readouterr()
    fresh = _train(changed, tmp_path)
    assert "resuming" not in capsys.readouterr().err and fresh.run_id != run_id


# --- a full disk ---------------------------------------------------------------------------------


@pytest.fixture
def full_disk() -> Iterator[Any]:
    restores = []

    def fill(pattern: str, after: int = 0) -> None:
        restores.append(install_enospc(pattern, after))

    yield fill
    for restore in restores:
        restore()


def test_a_full_disk_names_the_file_and_leaves_nothing_partial(
    tmp_path: Path, full_disk: Any
) -> None:
    atomic_write_text(tmp_path / "metrics.json", "old\n")
    atomic_torch_save({"w": torch.zeros(10)}, tmp_path / "model.pt")
    full_disk(str(tmp_path / "*"), after=16)
    with pytest.raises(DiskFullError) as text_err:
        atomic_write_text(tmp_path / "metrics.json", "x" * 1000)
    assert text_err.value.path == tmp_path / "metrics.json" and text_err.value.needed == 1000
    with pytest.raises(DiskFullError) as model_err:
        atomic_torch_save({"w": torch.zeros(1 << 16)}, tmp_path / "model.pt")
    assert model_err.value.needed == 4 << 16  # the tensor bytes: what the file needs at least
    with pytest.raises(DiskFullError):
        write_csv(tmp_path / "plots" / "guidance.csv", [{"a": 1.0}] * 100, ["a"])
    line = describe_disk_full(model_err.value, "train_base")
    assert line.startswith(f"train_base: no space left on device writing {tmp_path / 'model.pt'}")
    assert "needs ~256.0 KiB" in line and "free" in line and "\n" not in line
    # the previous outputs are intact, nothing partial or temporary is left
    assert (tmp_path / "metrics.json").read_text() == "old\n"
    assert torch.load(tmp_path / "model.pt", weights_only=True)["w"].shape == (10,)
    assert not (tmp_path / "plots" / "guidance.csv").exists()
    assert not _leftovers(tmp_path)


def test_a_full_disk_mid_shard_keeps_only_the_complete_shards(
    tmp_path: Path, full_disk: Any
) -> None:
    def sample(i: int) -> Sample:
        return Sample(
            key=f"k{i:04d}", image=bytes(2000), ext="png", caption="a red circle", meta={}
        )

    full_disk(str(tmp_path / "*000001.tar*"), after=5000)
    with pytest.raises(DiskFullError) as err, ShardWriter(tmp_path, max_count=4) as writer:
        for i in range(12):
            writer.write(sample(i))
    assert err.value.path == tmp_path / "000001.tar"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000000.tar"]  # complete, no partial


# --- a tracking store that stops answering -------------------------------------------------------


class _Flaky:
    """An MlflowClient stand-in recording writes; ``down`` makes every call fail as a dead
    server's would (the real server is killed in test_failure_stages.py)."""

    tracking_uri = "http://127.0.0.1:9"

    def __init__(self) -> None:
        self.down = False
        self.calls: list[tuple[str, Any]] = []

    def __getattr__(self, op: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> None:
            if self.down:
                raise ConnectionError("Connection refused")
            self.calls.append((op, kwargs.get("metrics") or args))

        return call


def test_buffered_writes_wait_for_the_server_and_replay_in_order(tmp_path: Path) -> None:
    from mlflow.entities import Metric

    now = [0.0]
    inner = _Flaky()
    client = BufferingClient(inner, retry_every=10, clock=lambda: now[0])
    client.log_batch(run_id="r", metrics=[Metric("loss", 1.0, 1, 0)])
    inner.down = True
    client.log_batch(run_id="r", metrics=[Metric("loss", 0.9, 2, 1)])  # fails: buffered
    client.set_tag("r", "stopped_by", "max_steps")  # within retry_every: not even tried
    assert len(client.pending) == 2 and client.last_error == "Connection refused"
    inner.down = False
    now[0] = 11.0
    client.log_batch(run_id="r", metrics=[Metric("loss", 0.8, 3, 2)])  # flushes all, in order
    assert client.pending == []
    steps = [c[1][0].step for c in inner.calls if c[0] == "log_batch"]
    assert steps == [0, 1, 2] and inner.calls[2][0] == "set_tag"

    inner.down = True
    client.log_batch(run_id="r", metrics=[Metric("loss", 0.7, 4, 3)])
    client.set_terminated("r", "FINISHED")
    assert not client.flush()
    path = client.save_pending(tmp_path / "pending.json")
    assert "2 calls" in client.describe_pending()
    inner.down = False
    assert replay(path, inner) == 2 and not path.exists()
    assert inner.calls[-2][1][0].step == 3 and inner.calls[-1][0] == "set_terminated"


def test_replay_keeps_what_it_could_not_write(tmp_path: Path) -> None:
    from mlflow.entities import Metric

    inner = _Flaky()
    client = BufferingClient(inner)
    inner.down = True
    for step in range(3):
        client.log_batch(run_id="r", metrics=[Metric("loss", 1.0, 1, step)])
    path = client.save_pending(tmp_path / "pending.json")
    with pytest.raises(ConnectionError):
        replay(path, inner)
    assert len(json.loads(path.read_text())["calls"]) == 3  # nothing lost


def test_a_full_disk_is_not_mistaken_for_a_dead_server() -> None:
    class Full(_Flaky):
        def __getattr__(self, op: str) -> Any:
            def call(*args: Any, **kwargs: Any) -> None:
                raise OSError(errno.ENOSPC, "No space left on device")

            return call

    client = BufferingClient(Full())
    with pytest.raises(OSError, match="No space"):
        client.log_artifact("r", "/tmp/x.png", "samples")
