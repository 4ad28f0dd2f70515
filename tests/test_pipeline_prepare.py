"""The `prepare` stage as users run it: the Hydra entry point with MLflow, and real `dvc repro`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT

SMALL = ["data.options.num_records=160", "prepare.num_workers=1", "prepare.shard_size=50"]


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
    env.pop("GLIDE_CONF_DIR", None)
    return env


def _project_copy(dest: Path) -> Path:
    """A copy of what the stage reads, as in a fresh clone."""
    for name in ("conf", "pipelines", "src"):
        shutil.copytree(REPO_ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore", "params.yaml"):
        shutil.copy(REPO_ROOT / name, dest / name)
    return dest


def test_prepare_entry_point_logs_one_mlflow_run(tmp_path: Path) -> None:
    proj = _project_copy(tmp_path / "proj")
    out = subprocess.run(
        [sys.executable, "pipelines/prepare.py", *SMALL],
        cwd=proj,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    stats = json.loads((proj / "metrics" / "prepare.json").read_text())
    assert stats["total"] == 160
    assert stats["kept"] + sum(stats["dropped"].values()) == 160
    assert stats["splits"]["train"] + stats["splits"]["val"] == stats["kept"]
    assert set(stats["ground_truth"]) >= {"corrupt_image", "near_duplicate", "mode_CMYK", "clean"}
    assert (proj / "reports" / "prepare" / "contact_sheet.png").stat().st_size > 1000
    assert list((proj / "data" / "shards" / "train").glob("*.tar"))
    assert (proj / "data" / "eval" / "val" / "captions.json").is_file()

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=_env(tmp_path)["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("glide")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["data.options.num_records"] == "160"
    assert run.data.params["filters.min_side"] == "64"
    assert run.data.metrics["kept"] == stats["kept"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"prepare.json", "contact_sheet.png"}


def test_unreachable_tracking_server_fails_fast(tmp_path: Path) -> None:
    proj = _project_copy(tmp_path / "proj")
    env = _env(tmp_path)
    env["MLFLOW_TRACKING_URI"] = "http://127.0.0.1:9"  # discard port: nothing listens
    out = subprocess.run(
        [sys.executable, "pipelines/prepare.py", *SMALL],
        cwd=proj,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert "MLflow tracking server http://127.0.0.1:9 is unreachable" in out.stderr
    assert not (proj / "data" / "shards").exists()  # no work was done before the check


def _dvc(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    dvc = Path(sys.executable).parent / "dvc"
    return subprocess.run(
        [str(dvc), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_dvc_repro_is_reproducible_and_cached(tmp_path: Path) -> None:
    proj = _project_copy(tmp_path / "repo")
    shapes = proj / "conf" / "data" / "shapes.yaml"
    doc = yaml.safe_load(shapes.read_text())
    doc["options"]["num_records"] = 160
    shapes.write_text(yaml.safe_dump(doc))
    env = _env(tmp_path)
    env.update(
        {
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t",
        }
    )
    regen = subprocess.run(
        [sys.executable, "pipelines/params.py"], cwd=proj, env=env, capture_output=True, text=True
    )  # `make params`: the stage's `params:` read params.yaml
    assert regen.returncode == 0, regen.stderr[-2000:]
    subprocess.run(["git", "init", "-q"], cwd=proj, check=True)
    assert _dvc(["init", "-q"], proj, env).returncode == 0
    shutil.copy(REPO_ROOT / ".dvc" / "config", proj / ".dvc" / "config")

    # Only this stage: the training stages downstream are exercised by tests/test_e2e.py.
    first = _dvc(["repro", "prepare"], proj, env)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    lock1 = yaml.safe_load((proj / "dvc.lock").read_text())
    params = lock1["stages"]["prepare"]["params"]["params.yaml"]
    assert params["data"]["options"]["num_records"] == 160 and "train" not in params
    second = _dvc(["repro", "prepare"], proj, env)
    assert second.returncode == 0
    assert "didn't change" in second.stdout or "up to date" in second.stdout.lower()

    forced = _dvc(["repro", "-f", "prepare"], proj, env)
    assert forced.returncode == 0
    lock2 = yaml.safe_load((proj / "dvc.lock").read_text())
    outs = lambda lock: {  # noqa: E731  (metrics hold wall-clock throughput: excluded)
        o["path"]: o["md5"] for o in lock["stages"]["prepare"]["outs"] if "metrics" not in o["path"]
    }
    assert outs(lock1) == outs(lock2)  # identical bytes from a re-run
    assert set(outs(lock1)) == {"data/shards", "data/eval/val", "reports/prepare"}
    shown = _dvc(["metrics", "show", "--json"], proj, env)
    assert shown.returncode == 0 and '"kept"' in shown.stdout


@pytest.mark.parametrize("bad", ["prepare.part_index=5", "filters.image_format=gif"])
def test_bad_config_is_one_clear_error(tmp_path: Path, bad: str) -> None:
    proj = _project_copy(tmp_path / "proj")
    out = subprocess.run(
        [sys.executable, "pipelines/prepare.py", *SMALL, bad],
        cwd=proj,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert ("part_index" in out.stderr) or ("image_format" in out.stderr)
