"""Failure modes with real components and real stage processes (all ``slow``): queued DVC
experiments two at a time into the project's SQLite store, a real ``mlflow server`` killed and
restarted (or not) under a training stage, a real SIGTERM to stage processes followed by
``dvc repro``, and a full disk injected at the write call of a stage process
(``tests/faults``)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from glide.training import load_checkpoint
from tests.test_e2e import _env, commands, project, ran, run, set_keys
from tests.test_registry import template_db  # noqa: F401  (fixture)
from tests.test_tracking_server import start_server, stop_server
from tests.test_training_checkpoint import shards, tiny_base_overrides  # noqa: F401

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
FAULTS = REPO / "tests" / "faults"
STAGES = {"prepare", "train_base", "train_upsampler", "train_inpaint", "train_clip", "evaluate",
          "register"}  # fmt: skip


def _client(uri: str) -> Any:
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def _wait(predicate: Any, timeout: float, what: str, proc: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended (rc {proc.returncode}) before {what}")
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp" in p.name and ".dvc" not in p.parts]


# --- queued DVC experiments, two at a time -------------------------------------------------------


def test_queued_experiments_two_at_a_time_land_in_the_project_store(tmp_path: Path) -> None:
    proj = tmp_path / "repo"
    env = _env(tmp_path, "")
    env.pop("MLFLOW_TRACKING_URI")  # the default store: <project>/mlflow.db
    project(proj, env)
    head = run(["git", "rev-parse", "HEAD"], proj, env).strip()
    for name, steps in (("exp-a", 2), ("exp-b", 3)):
        run(
            ["dvc", "exp", "run", "--queue", "-n", name, "-S", f"train.max_steps={steps}"],
            proj,
            env,
        )
    run(["dvc", "queue", "start", "-j", "2"], proj, env)

    def finished() -> bool:
        status = run(["dvc", "queue", "status"], proj, env)
        return "Queued" not in status and "Running" not in status

    _wait(finished, 1500, "the queue to finish")
    status = run(["dvc", "queue", "status"], proj, env)
    assert status.count("Success") == 2, status
    for log_name in ("exp-a", "exp-b"):
        logs = subprocess.run(
            ["dvc", "queue", "logs", log_name], cwd=proj, env=env, capture_output=True, text=True
        ).stdout
        assert "database is locked" not in logs, logs[-3000:]
    assert not list((proj / ".dvc" / "tmp" / "exps").glob("tmp*/mlflow.db"))

    client = _client(f"sqlite:///{proj / 'mlflow.db'}")
    exp = client.get_experiment_by_name("glide")
    for name in ("exp-a", "exp-b"):
        runs = client.search_runs([exp.experiment_id], f"tags.`dvc.exp_name` = '{name}'")
        assert {r.data.tags["stage"] for r in runs} == STAGES, name
        assert all(r.info.status == "FINISHED" for r in runs)
        assert {r.data.tags["dvc.exp_baseline_rev"] for r in runs} == {head}
        evaluate = next(r for r in runs if r.data.tags["stage"] == "evaluate")
        grid = next(a.path for a in client.list_artifacts(evaluate.info.run_id, "grids"))
        local = Path(client.download_artifacts(evaluate.info.run_id, grid, str(tmp_path)))
        assert local.stat().st_size > 0  # readable after DVC deleted the workspace
    # the registry: one version per experiment and model; one champion, and it says so
    for model in ("glide-base", "glide-clip"):
        versions = client.search_model_versions(f"name='{model}'")
        assert len(versions) == 2, model
        aliases = client.get_registered_model(model).aliases
        champion = aliases["champion"]
        decisions = {v.version: v.tags.get("promotion.decision") for v in versions}
        assert decisions[champion] == "champion", (model, decisions, aliases)
        for version, decision in decisions.items():
            if version != champion and decision == "champion":  # promoted first, then replaced
                assert aliases.get("previous") == version
                assert int(version) < int(champion)
    out = commands(proj, env, "compare", "exp-a", "exp-b")
    assert out.returncode == 0, out.stderr
    assert "exp-a" in out.stdout and "exp-b" in out.stdout


# --- the tracking server dies mid-stage ------------------------------------------------------------


def _train_cmd(shards_dir: Path, out: Path, *extra: str) -> list[str]:
    script = str(REPO / "pipelines" / "train.py")
    overrides = tiny_base_overrides(shards_dir, out)
    return [sys.executable, script, "train=base", *overrides, "train.log_every=1", *extra]


def _checkout(tmp_path: Path) -> Path:
    """A folder with the project's conf/: the stage's root (pending files, locks)."""
    root = tmp_path / "proj"
    shutil.copytree(REPO / "conf", root / "conf")
    return root


def _stage_env(uri: str | None = None, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), **extra}
    env.pop("GLIDE_CONF_DIR", None)
    if uri:
        env["MLFLOW_TRACKING_URI"] = uri
    return env


def _steps(client: Any, run_id: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, "train/loss"))


def _losses_logged(uri: str, out: Path, n: int) -> Any:
    def check() -> bool:
        run_file = out / "models" / "base" / "mlflow_run_id"
        if not run_file.is_file():
            return False
        try:
            return len(_steps(_client(uri), run_file.read_text().strip())) >= n
        except Exception:
            return False

    return check


def _training_under(
    server: subprocess.Popen[bytes],
    uri: str,
    tmp_path: Path,
    shards_dir: Path,
    steps: int,
    every: int,
    **popen: Any,
) -> tuple[Path, subprocess.Popen[bytes]]:
    """A training stage process logging to the ``server`` at ``uri``, once its first losses
    reached the store (on a failure before that, both processes are stopped)."""
    root = _checkout(tmp_path)
    cmd = _train_cmd(
        shards_dir, tmp_path, f"train.max_steps={steps}", f"train.checkpoint_every={every}"
    )
    stage = subprocess.Popen(cmd, cwd=root, env=_stage_env(uri), stdout=subprocess.PIPE, **popen)
    try:
        _wait(_losses_logged(uri, tmp_path, 3), 180, "the first losses", stage)
    except BaseException:
        stage.kill()
        stop_server(server)
        raise
    return root, stage


def test_training_outlives_a_tracking_server_that_dies_and_comes_back(
    tmp_path: Path,
    template_db: Path,  # noqa: F811
    shards: Path,  # noqa: F811
) -> None:
    server = tmp_path / "server"
    proc, uri = start_server(server, template_db)
    port = int(uri.rsplit(":", 1)[1])
    steps = 300
    root, stage = _training_under(proc, uri, tmp_path, shards, steps, 10, stderr=subprocess.STDOUT)
    try:
        stop_server(proc)  # the server dies mid-stage
        ckdir = tmp_path / "models" / "base" / "checkpoints"
        at_kill = (
            load_checkpoint(ckdir / "last.ckpt")["global_step"]
            if (ckdir / "last.ckpt").exists()
            else 0
        )

        def went_on() -> bool:
            try:
                return load_checkpoint(ckdir / "last.ckpt")["global_step"] >= at_kill + 30
            except Exception:
                return False

        _wait(went_on, 180, "training to go on without the server", stage)
        proc, _ = start_server(server, port=port)  # back, same store and address
        output = stage.communicate(timeout=600)[0].decode()
    finally:
        if stage.poll() is None:
            stage.kill()
        stop_server(proc)
    assert stage.returncode == 0, output[-3000:]
    proc, uri = start_server(server, port=port)
    try:
        client = _client(uri)
        run_id = (tmp_path / "models" / "base" / "mlflow_run_id").read_text().strip()
        assert _steps(client, run_id) == list(range(steps))  # every step, once
        run_ = client.get_run(run_id)
        assert run_.info.status == "FINISHED" and run_.data.tags["stopped_by"] == "max_steps"
        assert {a.path for a in client.list_artifacts(run_id, "export")} >= {"export/model.pt"}
    finally:
        stop_server(proc)
    assert not (root / "mlflow-pending").exists()


def test_a_server_that_stays_down_leaves_outputs_and_a_replay_file(
    tmp_path: Path,
    template_db: Path,  # noqa: F811
    shards: Path,  # noqa: F811
) -> None:
    server = tmp_path / "server"
    proc, uri = start_server(server, template_db)
    steps = 60
    root, stage = _training_under(proc, uri, tmp_path, shards, steps, 20, stderr=subprocess.PIPE)
    try:
        stop_server(proc)
        _, err = stage.communicate(timeout=600)
    finally:
        if stage.poll() is None:
            stage.kill()
    err = err.decode()
    assert stage.returncode == 1, err[-3000:]
    line = err.strip().splitlines()[-1]
    match = re.search(r"run `glide replay (\S+)`, then `dvc commit train_base`", line)
    assert line.startswith("train_base: the MLflow server") and match, err[-3000:]
    assert "Traceback" not in err
    pending = Path(match.group(1))
    assert pending.parent == root / "mlflow-pending" and pending.is_file()
    out = tmp_path / "models" / "base"
    for name in ("model.pt", "summary.json", "checkpoints/last.ckpt"):
        assert (out / name).is_file(), name
    assert json.loads((out / "summary.json").read_text())["step"] == steps

    proc, uri = start_server(server)  # back, on another port: replay takes --tracking-uri
    try:
        glide = Path(sys.executable).with_name("glide")
        replayed = subprocess.run(
            [str(glide), "replay", str(pending), "--tracking-uri", uri],
            cwd=root,
            env=_stage_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert replayed.returncode == 0, replayed.stderr[-3000:]
        assert not pending.exists()
        client = _client(uri)
        run_id = (out / "mlflow_run_id").read_text().strip()
        assert _steps(client, run_id) == list(range(steps))
        assert client.get_run(run_id).info.status == "FINISHED"
        logged = client.search_logged_models(
            experiment_ids=[client.get_run(run_id).info.experiment_id],
            filter_string=f"source_run_id='{run_id}'",
        )
        assert len(logged) == 1  # the model logged from the export on replay
    finally:
        stop_server(proc)


# --- a stop signal to real stage processes, then dvc repro ----------------------------------------


def _pid_of(proj: Path, needle: str) -> int | None:
    """The pid of the stage process running ``needle`` in ``proj`` (from /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if needle in cmdline and "python" in cmdline and Path(cwd) == proj:
            return int(entry.name)
    return None


def test_sigterm_stops_stages_cleanly_and_dvc_repro_resumes(tmp_path: Path) -> None:
    proj = tmp_path / "repo"
    uri = f"sqlite:///{proj / 'mlflow.db'}"
    env = _env(tmp_path, uri)
    project(proj, env)
    set_keys(proj / "conf" / "train" / "base.yaml", {"max_steps": 120, "checkpoint_every": 10})
    run([sys.executable, "pipelines/params.py"], proj, env)
    run(["git", "commit", "-qam", "longer base"], proj, env)
    client = _client(uri)

    repro = subprocess.Popen(
        ["dvc", "repro"], cwd=proj, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    ckdir = proj / "models" / "base" / "checkpoints"
    try:
        _wait(lambda: bool(list(ckdir.glob("step-*.ckpt"))), 600, "a base checkpoint", repro)
        pid = _pid_of(proj, "pipelines/train.py train=base")
        assert pid is not None
        t0 = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        first = repro.communicate(timeout=120)[0].decode()
        assert time.monotonic() - t0 < 30  # stops within seconds (one step, a checkpoint)
    finally:
        if repro.poll() is None:
            repro.kill()
    assert repro.returncode != 0
    assert "train_base: stopped by SIGTERM at step" in first, first[-3000:]
    stopped_at = load_checkpoint(ckdir / "last.ckpt")["global_step"]
    assert 10 <= stopped_at < 120
    run_id = (proj / "models" / "base" / "mlflow_run_id").read_text().strip()
    assert client.get_run(run_id).info.status == "KILLED"
    assert not _leftovers(proj / "models")

    again = subprocess.run(["dvc", "repro"], cwd=proj, env=env, capture_output=True, text=True)
    second = again.stdout + again.stderr
    assert again.returncode == 0, second[-3000:]
    assert {"train_base", "evaluate", "register"} <= ran(second), second
    assert "train_base: resuming from models/base/checkpoints/last.ckpt" in second, second[-3000:]
    assert json.loads((proj / "models" / "base" / "summary.json").read_text())["step"] == 120
    assert client.get_run(run_id).info.status == "FINISHED"
    assert _steps(client, run_id) == list(range(120))  # continued, not restarted

    # SIGTERM to the evaluate stage: its MLflow run is KILLED, no partial output is left
    evaluate = subprocess.Popen(
        [sys.executable, "pipelines/evaluate.py", "evaluate.num_captions=64"],  # a long one
        cwd=proj,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    exp_id = client.get_experiment_by_name("glide").experiment_id

    def evaluating() -> bool:
        runs = client.search_runs(
            [exp_id], "tags.stage = 'evaluate' and attributes.status = 'RUNNING'"
        )
        return bool(runs)

    _wait(evaluating, 300, "the evaluate run", evaluate)
    time.sleep(0.5)
    t0 = time.monotonic()
    evaluate.send_signal(signal.SIGTERM)
    _, err = evaluate.communicate(timeout=60)
    assert time.monotonic() - t0 < 20
    assert evaluate.returncode == 128 + signal.SIGTERM, err.decode()[-3000:]
    assert "evaluate: stopped by SIGTERM" in err.decode()
    runs = client.search_runs(
        [exp_id], "tags.stage = 'evaluate'", order_by=["attributes.start_time DESC"]
    )
    assert runs[0].info.status == "KILLED"
    assert not _leftovers(proj / "metrics") and not _leftovers(proj / "plots")


# --- a full disk in a stage process ---------------------------------------------------------------


def _stage(root: Path, args: list[str], uri: str, fault: str | None = None) -> Any:
    extra = {}
    if fault:
        extra = {"GLIDE_FAULT_ENOSPC": fault, "PYTHONPATH": f"{FAULTS}{os.pathsep}{REPO / 'src'}"}
    return subprocess.run(
        [sys.executable, *args], cwd=root, env=_stage_env(uri, **extra), capture_output=True,
        text=True, timeout=900,
    )  # fmt: skip


@pytest.mark.parametrize(
    "fault",
    ["*/data/shards/train/*", "*/mlartifacts/*"],
    ids=["shards", "mlflow-artifacts"],
)
def test_a_full_disk_ends_prepare_with_one_line_and_the_rerun_succeeds(
    tmp_path: Path, fault: str
) -> None:
    root = _checkout(tmp_path)
    shutil.copytree(REPO / "pipelines", root / "pipelines")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    args = ["pipelines/prepare.py", "data.options.num_records=200", "prepare.progress=false"]
    full = _stage(root, args, uri, fault)
    assert full.returncode == 1, full.stderr[-3000:]
    line = full.stderr.strip().splitlines()[-1]
    assert line.startswith("prepare: no space left on device writing "), full.stderr[-3000:]
    assert "free space and run the same command again" in line
    assert "Traceback" not in full.stderr
    assert not _leftovers(root)
    ok = _stage(root, args, uri)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert list((root / "data" / "shards" / "train").glob("*.tar"))


def test_a_full_disk_at_a_checkpoint_ends_training_with_one_line(
    tmp_path: Path,
    shards: Path,  # noqa: F811
) -> None:
    root = _checkout(tmp_path)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    cmd = _train_cmd(shards, tmp_path, "train.max_steps=6", "train.checkpoint_every=2",
                     "train.log_mlflow_model=false")  # fmt: skip
    full = _stage(root, cmd[1:], uri, "*/checkpoints/*")
    assert full.returncode == 1, full.stderr[-3000:]
    line = full.stderr.strip().splitlines()[-1]
    ckpt = tmp_path / "models" / "base" / "checkpoints"
    assert line.startswith(f"train_base: no space left on device writing {ckpt}/"), line
    assert "needs ~" in line and "Traceback" not in full.stderr
    assert not _leftovers(tmp_path / "models") and not list(ckpt.glob("*.ckpt"))
    ok = _stage(root, cmd[1:], uri)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert load_checkpoint(ckpt / "last.ckpt")["global_step"] == 6
