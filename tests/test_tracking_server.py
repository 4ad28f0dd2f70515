"""The registry, the register stage and the commands against a real ``mlflow server`` that the
test starts on 127.0.0.1 (free port, bounded wait, always terminated), and the fail-fast path
when the server is down."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from glide.tracking.registry import ModelRegistry, PromotionConfig, version_model_id
from tests.test_registry import GATE, REPO_ROOT, template_db  # noqa: F401  (fixture)

MLFLOW = Path(sys.executable).with_name("mlflow")
START_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    root: Path, template: Path | None = None, port: int | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """``mlflow server`` on 127.0.0.1 (a free port unless ``port``: a restart) over
    ``root/server.db``; waits for /health."""
    root.mkdir(parents=True, exist_ok=True)
    if template is not None and not (root / "server.db").exists():
        shutil.copyfile(template, root / "server.db")  # skips the schema migration
    port = port or free_port()
    with (root / "server.log").open("ab") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [
                str(MLFLOW),
                "server",
                "--backend-store-uri",
                f"sqlite:///{root / 'server.db'}",
                "--artifacts-destination",
                str(root / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=root,
        )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
                if resp.status == 200:
                    return proc, uri
        except OSError:
            time.sleep(0.5)
    stop_server(proc)
    raise RuntimeError(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, template_db: Path) -> Iterator[str]:  # noqa: F811
    proc, uri = start_server(tmp_path_factory.mktemp("mlflow-server"), template_db)
    try:
        yield uri
    finally:
        stop_server(proc)


def _git_project(root: Path) -> Path:
    """A minimal checkout: conf/ and a git commit (for the lineage tags)."""
    shutil.copytree(REPO_ROOT / "conf", root / "conf")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t"}
    env.update(GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    for cmd in (["init", "-q"], ["add", "conf"], ["commit", "-qm", "conf"]):
        subprocess.run(["git", *cmd], cwd=root, check=True, env=env)
    return root


def _train_run(client: object, root: Path, name: str, payload: bytes) -> None:
    """``models/<name>/`` + a training run in the server, as the train stage leaves them."""
    folder = root / "models" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.pt").write_bytes(payload)
    exp = client.get_experiment_by_name("glide")  # type: ignore[attr-defined]
    exp_id = exp.experiment_id if exp else client.create_experiment("glide")  # type: ignore[attr-defined]
    run = client.create_run(exp_id, run_name=f"train_{name}", tags={"stage": f"train_{name}"})  # type: ignore[attr-defined]
    client.log_artifact(run.info.run_id, str(folder / "model.pt"), "export")  # type: ignore[attr-defined]
    client.set_terminated(run.info.run_id)  # type: ignore[attr-defined]
    (folder / "mlflow_run_id").write_text(run.info.run_id)


def _register_stage(root: Path, uri: str, *overrides: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "GLIDE_CONF_DIR": str(root / "conf")}
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "pipelines" / "register.py"), *overrides],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_register_stage_and_commands_against_server(
    server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import mlflow

    from glide.tracking.commands import add_compare_parser, add_promote_parser

    client = mlflow.MlflowClient(tracking_uri=server, registry_uri=server)
    root = _git_project(tmp_path / "proj")
    models = ["promotion.models={glide-base:models/base,glide-clip:models/clip}"]
    _train_run(client, root, "base", b"b1")
    _train_run(client, root, "clip", b"c1")
    (root / "metrics").mkdir()
    evaluation = {"summary": {"cfg_best_caption_accuracy": 0.5}, "cfg": {"3": {"fd_clip": 2.0}}}
    (root / "metrics" / "evaluate.json").write_text(json.dumps(evaluation))

    first = _register_stage(root, server, *models)
    assert first.returncode == 0, first.stderr
    assert "glide-base v1 registered: champion" in first.stdout
    report = json.loads((root / "reports" / "register.json").read_text())
    assert report["glide-clip"] == {**report["glide-clip"], "version": 1, "champion": 1}
    mv = client.get_model_version_by_alias("glide-base", "champion")
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert mv.tags["lineage.git_commit"] == commit
    assert mv.tags["lineage.train_run_id"] == (root / "models/base/mlflow_run_id").read_text()
    assert not [k for k in mv.tags if k.startswith("metric.")]  # on the logged model instead
    metrics = ModelRegistry(client, PromotionConfig()).model_metrics(version_model_id(mv))
    assert metrics == {"summary.cfg_best_caption_accuracy": 0.5, "cfg.3.fd_clip": 2.0}

    again = _register_stage(root, server, *models)  # idempotent
    assert again.returncode == 0 and "v1 already registered" in again.stdout
    assert len(client.search_model_versions("name='glide-base'")) == 1

    # a worse base model: challenger, champion stays
    _train_run(client, root, "base", b"b2")
    evaluation["summary"]["cfg_best_caption_accuracy"] = 0.2
    (root / "metrics" / "evaluate.json").write_text(json.dumps(evaluation))
    worse = _register_stage(root, server, *models)
    assert worse.returncode == 0, worse.stderr
    assert "glide-base v2 registered: challenger (champion: v1)" in worse.stdout
    assert client.get_model_version_by_alias("glide-base", "challenger").version == "2"

    parser = argparse.ArgumentParser()
    subs = parser.add_subparsers()
    add_promote_parser(subs)
    add_compare_parser(subs)
    env_uri = ["--tracking-uri", server]
    args = parser.parse_args(
        ["promote", "--model", "glide-base", "--version", "2", "--force", *env_uri]
    )
    assert args._run(args) == 0
    assert client.get_model_version_by_alias("glide-base", "champion").version == "2"
    args = parser.parse_args(["promote", "--model", "glide-base", "--rollback", *env_uri])
    assert args._run(args) == 0
    assert client.get_model_version_by_alias("glide-base", "champion").version == "1"
    capsys.readouterr()
    args = parser.parse_args(["compare", "--model", "glide-base", *env_uri])
    assert args._run(args) == 0
    out = capsys.readouterr().out
    assert "glide-base v1 @champion" in out and "glide-base v2" in out


def test_stages_and_commands_fail_fast_when_server_is_down(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from glide.tracking.commands import add_promote_parser

    root = _git_project(tmp_path / "proj")
    down = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    proc = _register_stage(root, down)
    assert proc.returncode != 0
    assert time.monotonic() - start < 60
    last = proc.stderr.strip().splitlines()[-1]
    assert f"MLflow tracking server {down} is unreachable" in last
    assert not (root / "reports").exists()  # no work was done

    parser = argparse.ArgumentParser()
    add_promote_parser(parser.add_subparsers())
    args = parser.parse_args(
        ["promote", "--model", "glide-base", "--rollback", "--tracking-uri", down]
    )
    assert args._run(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("glide promote: error: MLflow tracking server") and "\n" not in err


def test_registry_over_http_and_sampling_uri(server: str, tmp_path: Path) -> None:
    """Aliases and ``models:/...@champion`` through the REST API (artifacts proxied)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=server, registry_uri=server)
    _train_run(client, tmp_path, "upsampler", b"u1")
    registry = ModelRegistry(client, GATE)
    cfg_metrics = {"summary.cfg_best_caption_accuracy": 0.4}
    result = registry.register(
        name="glide-upsampler",
        model_dir=tmp_path / "models/upsampler",
        metrics=cfg_metrics,
        lineage={},
    )
    assert result.decision == "champion"
    mv = client.get_model_version_by_alias("glide-upsampler", "champion")
    local = mlflow.artifacts.download_artifacts(
        run_id=mv.run_id, artifact_path="export/model.pt", tracking_uri=server
    )
    assert Path(local).read_bytes() == b"u1"
    # the logged model, its metrics and its files (artifacts proxied) through the REST API
    model_id = version_model_id(mv)
    assert mv.source == f"models:/{model_id}"
    assert registry.model_metrics(model_id) == cfg_metrics
    assert registry.version_metrics("glide-upsampler", mv.version) == cfg_metrics
    files = {a.path for a in client.list_logged_model_artifacts(model_id)}
    assert {"MLmodel", "pyfunc_code.py", "artifacts"} <= files
    assert PromotionConfig().champion_alias == "champion"
