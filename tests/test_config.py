"""Hydra composition at the edge, including `dvc exp run -S` overrides through params.yaml."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import yaml

from glide.config import compose, to_dataclass
from tests.conftest import REPO_ROOT


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(REPO_ROOT / "conf", tmp_path / "conf")
    monkeypatch.setenv("GLIDE_CONF_DIR", str(tmp_path / "conf"))
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    return tmp_path


def test_overrides_and_group_selection(project: Path) -> None:
    cfg = compose("config", ["train=upsampler", "seed=7"])
    assert cfg["train"]["name"] == "upsampler" and cfg["seed"] == 7
    assert cfg["data"]["options"]["seed"] == 7  # interpolations are resolved


def test_dvc_experiment_overrides_reach_every_stage(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What DVC's Hydra composition writes for `dvc exp run -S train.max_steps=5`.
    params = compose("config")
    params["train"]["max_steps"] = 5
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    assert compose("config", ["train=upsampler"])["train"]["max_steps"] != 5  # plain repro
    monkeypatch.setenv("DVC_EXP_NAME", "exp-1")
    cfg = compose("config", ["train=upsampler"])
    assert cfg["train"]["max_steps"] == 5
    assert cfg["train"]["name"] == "upsampler"  # the stage's own selection still applies


def test_to_dataclass_names_unknown_keys() -> None:
    @dataclasses.dataclass(frozen=True)
    class C:
        a: int = 1
        b: tuple[int, ...] = ()

    assert to_dataclass(C, {"a": 2, "b": [1, 2]}) == C(a=2, b=(1, 2))
    with pytest.raises(ValueError, match=r"unknown C option\(s\) \['z'\]"):
        to_dataclass(C, {"z": 1})
