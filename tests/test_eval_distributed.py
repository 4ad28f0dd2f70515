"""The evaluate stage under ``torchrun`` with two gloo processes on the CPU: the same images, byte
for byte, and the same metrics as one process; and a ``kill -9`` of one rank mid-point, after
which the same command finishes from the images already on disk.

Every run pins one thread per process: the guarantee is "the same batches through the same
kernels", and the thread count is a kernel choice some CPUs make differently.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from glide.evaluation.captions import is_builtin_caption
from tests.conftest import REPO_ROOT
from tests.test_eval_frechet import random_inception_weights
from tests.test_eval_runner import _save
from tests.test_sampling_support import micro_model, write_shapes_coco

EVALUATE = REPO_ROOT / "pipelines" / "evaluate.py"
FAULTS = REPO_ROOT / "tests" / "faults"
CAPTIONS = 5  # chunks of 2: three per point, split 2 + 1 over two ranks
TOLERANCE = 1e-6


def _project(root: Path, *, coco: bool = False) -> list[str]:
    """A project folder with micro models and a caption set; returns the evaluate overrides."""
    shutil.copytree(REPO_ROOT / "conf", root / "conf")
    captions = write_shapes_coco(root / "set", 8, size=128)
    if coco:  # free-text captions: a COCO-format set outside the oracle's grammar
        doc = json.loads(captions.read_text())
        for ann in doc["annotations"]:
            ann["caption"] = f"a photograph of toy number {ann['id']} on a table"
            assert not is_builtin_caption(ann["caption"])
        captions.write_text(json.dumps(doc))
    parts = (("base", "base"), ("upsample", "upsampler"), ("clip", "clip"))
    for part, name in (*parts, ("base_inpaint", "inpaint")):
        _save(micro_model(part), root / "models" / name / "model.pt")
    overrides = [
        f"tracking_uri=sqlite:///{root / 'mlflow.db'}",
        f"evaluate.captions={captions}",
        f"evaluate.num_captions={CAPTIONS}",
        "evaluate.min_single_object=0",
        "evaluate.batch_size=2",
        "evaluate.inpaint_eval.num_images=3",
        "evaluate.inpaint_eval.sampler=dpm++-2",
        "evaluate.clip_retrieval.candidates=2",
        "evaluate.clip_retrieval.timesteps=[0,25]",
        "evaluate.upsample_count=3",
        "evaluate.upsample_at=[cfg:3]",
        "evaluate.upsample_sampler=dpm++-2",
        "evaluate.sweep.cfg_scales=[1,3]",
        "evaluate.sweep.sampler=dpm++-2",
        "evaluate.sweep.clip_scales=[0,20]",
        "evaluate.sweep.clip_sampler=ancestral-2",
        "evaluate.sweep.grid_images=4",
        "evaluate.sampler_table.samplers=[ancestral-3]",
        "evaluate.sampler_table.num_images=3",
        "evaluate.sampler_table.recipes=[fast]",
    ]
    if coco:
        weights = random_inception_weights(root)
        overrides += [f"evaluate.fid.weights_path={weights}", "evaluate.fid.feature=64"]
    else:
        overrides.append(f"evaluate.fid.weights_path={root / 'missing.pth'}")
    return overrides


def _env(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "GLIDE_FAULT"))}
    env.update(GLIDE_CONF_DIR=str(root / "conf"), OMP_NUM_THREADS="1", **extra)
    return env


def _command(processes: int, overrides: list[str]) -> list[str]:
    if processes == 1:
        return [sys.executable, str(EVALUATE), *overrides]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*launcher, f"--nproc-per-node={processes}", str(EVALUATE), *overrides]


def _evaluate(root: Path, overrides: list[str], processes: int) -> dict[str, Any]:
    done = subprocess.run(
        _command(processes, overrides),
        cwd=root,
        env=_env(root),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return json.loads((root / "metrics" / "evaluate.json").read_text())


def _pngs(root: Path) -> dict[str, bytes]:
    """Every image the run kept (the cache) and every grid, by path from the project."""
    paths = [*(root / ".glide-work").rglob("*.png"), *(root / "reports").rglob("*.png")]
    return {str(p.relative_to(root)): p.read_bytes() for p in paths}


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    """Every metric as ``section.point.name`` (timings and run info aside)."""
    out: dict[str, float] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}.{key}", sub)
        elif isinstance(value, list):
            for i, sub in enumerate(value):
                walk(f"{prefix}.{i}", sub)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[prefix] = float(value)

    for section in ("cfg", "clip", "samplers", "inpaint", "noised_clip", "summary"):
        walk(section, metrics.get(section, {}))
    return {k: v for k, v in out.items() if "seconds_per_image" not in k}


def _assert_same_metrics(a: dict[str, Any], b: dict[str, Any]) -> None:
    na, nb = _numbers(a), _numbers(b)
    assert set(na) == set(nb)
    far = {k: (na[k], nb[k]) for k in na if abs(na[k] - nb[k]) > TOLERANCE}
    assert not far, far


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The built-in set evaluated by one process: the reference the others are held to."""
    root = tmp_path_factory.mktemp("one")
    metrics = _evaluate(root, _project(root), processes=1)
    return root, metrics


def test_two_gloo_processes_match_one_process_on_the_builtin_set(
    tmp_path: Path, one_process: tuple[Path, dict[str, Any]]
) -> None:
    ref_root, ref = one_process
    metrics = _evaluate(tmp_path, _project(tmp_path), processes=2)
    assert metrics["info"]["processes"] == 2 and ref["info"]["processes"] == 1
    made = metrics["info"]["images_generated"]
    assert made == ref["info"]["images_generated"] > 0 and metrics["info"]["images_cached"] == 0
    ours, theirs = _pngs(tmp_path), _pngs(ref_root)
    assert len(ours) > made // 2 and set(ours) == set(theirs)
    assert [p for p in ours if ours[p] != theirs[p]] == []
    _assert_same_metrics(metrics, ref)
    assert "caption_accuracy" in metrics["cfg"]["3"] and "inpaint_accuracy" in metrics["inpaint"]


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_on_a_coco_set_with_fid(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    ref = _evaluate(one, _project(one, coco=True), processes=1)
    metrics = _evaluate(two, _project(two, coco=True), processes=2)
    assert "fid" in ref["cfg"]["3"] and "fid" in metrics["clip"]["20"]
    assert "caption_accuracy" in ref["unavailable"]
    ours, theirs = _pngs(two), _pngs(one)
    assert set(ours) == set(theirs) and all(ours[p] == theirs[p] for p in ours)
    _assert_same_metrics(metrics, ref)


def _rank_pid(launcher: int, rank: int) -> int | None:
    """The worker process of ``rank`` among the launcher's descendants (by its environment)."""
    children = subprocess.run(["pgrep", "-P", str(launcher)], capture_output=True, text=True)
    for pid in children.stdout.split():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return int(pid)
    return None


def test_kill_9_of_one_rank_then_rerun_finishes_with_the_same_metrics(
    tmp_path: Path, one_process: tuple[Path, dict[str, Any]]
) -> None:
    ref_root, ref = one_process
    overrides = _project(tmp_path)
    slow = _env(tmp_path, PYTHONPATH=str(FAULTS), GLIDE_FAULT_CHUNK_DELAY="0.5")
    first = subprocess.Popen(
        _command(2, overrides),
        cwd=tmp_path,
        env=slow,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    point = tmp_path / ".glide-work" / "evaluate" / "cfg_3"
    deadline = time.monotonic() + 300
    while not list(point.glob("*/chunk-*.json")):  # midway through the second sweep point
        assert first.poll() is None and time.monotonic() < deadline, "no chunk of cfg_3 appeared"
        time.sleep(0.05)
    victim = _rank_pid(first.pid, rank=1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    _, err = first.communicate(timeout=120)
    assert first.returncode != 0, err[-2000:]
    assert not (tmp_path / "metrics" / "evaluate.json").exists()
    kept = len(list((tmp_path / ".glide-work").rglob("chunk-*.json")))
    assert kept >= 3  # cfg_1's three chunks and at least one of cfg_3

    metrics = _evaluate(tmp_path, overrides, processes=2)
    total = ref["info"]["images_generated"]
    again, cached = metrics["info"]["images_generated"], metrics["info"]["images_cached"]
    assert cached >= CAPTIONS + 1 and again + cached == total and again < total
    _assert_same_metrics(metrics, ref)
    ours, theirs = _pngs(tmp_path), _pngs(ref_root)
    assert set(ours) == set(theirs) and all(ours[p] == theirs[p] for p in ours)


_SLURM_RANK = """
import torch
from glide.evaluation.distributed import init_world, shutdown_world
world = init_world("cpu")
total = world.all_reduce(torch.tensor([float(world.rank + 1)], dtype=torch.float64))
print(world.rank, world.size, world.local_rank, float(total[0]), world.gather(world.rank))
shutdown_world(world)
"""


def test_srun_environment_forms_the_group_without_torchrun(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_", "LOCAL_"))}
    base.update(SLURM_NTASKS="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _SLURM_RANK],
            env={**base, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert [o.strip() for o, _ in outs] == ["0 2 0 3.0 [0, 1]", "1 2 1 3.0 [0, 1]"]
    # without the rendezvous address: one line saying what to export
    env = {**base, "SLURM_PROCID": "0"}
    del env["MASTER_ADDR"]
    failed = subprocess.run(
        [sys.executable, "-c", _SLURM_RANK], env=env, capture_output=True, text=True, timeout=60
    )
    assert failed.returncode != 0 and "MASTER_ADDR not set" in failed.stderr
