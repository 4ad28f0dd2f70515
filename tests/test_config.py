"""Hydra composition at the edge, including `dvc exp run -S` overrides through params.yaml."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import yaml

from glide.config import compose, params_yaml, to_dataclass, write_params
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


def test_committed_params_yaml_is_conf_composed(monkeypatch: pytest.MonkeyPatch) -> None:
    """params.yaml (read by the ``params:`` of dvc.yaml under plain ``dvc repro``) must be conf/
    composed: after editing conf/, run ``make params`` (``python pipelines/params.py``)."""
    monkeypatch.setenv("GLIDE_CONF_DIR", str(REPO_ROOT / "conf"))
    committed = (REPO_ROOT / "params.yaml").read_text(encoding="utf-8")
    assert committed == params_yaml(), "params.yaml is stale: run `make params` and commit it"


@pytest.mark.parametrize("overrides", [[], ["train.max_steps=3", "seed=5", "evaluate=coco30k"]])
def test_params_yaml_is_what_dvc_exp_run_writes(project: Path, overrides: list[str]) -> None:
    """Byte for byte DVC's Hydra composition (dvc.utils.hydra.compose_and_dump, as ``dvc exp
    run [-S ...]`` calls it with .dvc/config's defaults: conf/, config), so ``dvc exp run``
    without -S shows no parameter change."""
    from dvc.utils.hydra import compose_and_dump

    out = project / "dvc_params.yaml"
    compose_and_dump(out, str(project / "conf"), None, "config", str(project), overrides)
    assert out.read_text(encoding="utf-8") == params_yaml(overrides=overrides)


def test_write_params_writes_and_checks(project: Path) -> None:
    path = project / "params.yaml"
    assert write_params(check=True) is False and not path.exists()
    assert write_params() is False  # written
    assert yaml.safe_load(path.read_text())["evaluate"]["num_captions"] > 0
    assert write_params(check=True) is True
    (project / "conf" / "config.yaml").write_text(
        (project / "conf" / "config.yaml").read_text().replace("seed: 0", "seed: 4")
    )
    assert write_params(check=True) is False
    assert write_params() is False and yaml.safe_load(path.read_text())["train"]["seed"] == 4


def test_dvc_stages_read_params_yaml_sections() -> None:
    """Each stage's ``params:`` are top-level sections of params.yaml; ``-S train.x`` reaches
    the training stages only, ``-S evaluate.x`` evaluate, ``-S promotion.x`` register; DVC's
    Hydra composition is on in the committed .dvc/config."""
    from configobj import ConfigObj

    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    sections = set(yaml.safe_load((REPO_ROOT / "params.yaml").read_text()))
    reads = {name: set(stage.get("params") or ()) for name, stage in stages.items()}
    for name, keys in reads.items():
        assert keys and keys <= sections, (name, keys - sections)
    assert {name for name, keys in reads.items() if "train" in keys} == {
        "train_base",
        "train_upsampler",
        "train_inpaint",
        "train_clip",
    }
    assert {name for name, keys in reads.items() if "evaluate" in keys} == {"evaluate"}
    assert {name for name, keys in reads.items() if "promotion" in keys} == {"register"}
    assert {"prepare", "data", "filters"} <= reads["prepare"]
    assert ConfigObj(str(REPO_ROOT / ".dvc" / "config"))["hydra"]["enabled"] == "true"


def test_dvc_experiment_evaluate_override(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `evaluate` is in the defaults list, so `dvc exp run -S evaluate.num_captions=8` composes
    (project / "params.yaml").write_text(params_yaml(overrides=["evaluate.num_captions=8"]))
    monkeypatch.setenv("DVC_EXP_NAME", "exp-1")
    assert compose("config", ["evaluate=default"])["evaluate"]["num_captions"] == 8
    in_experiment = compose("config", ["train=clip"])
    monkeypatch.delenv("DVC_EXP_NAME")
    plain = compose("config", ["train=clip"])
    assert in_experiment["train"] == plain["train"] and plain["evaluate"]["num_captions"] != 8


def test_to_dataclass_names_unknown_keys() -> None:
    @dataclasses.dataclass(frozen=True)
    class C:
        a: int = 1
        b: tuple[int, ...] = ()

    assert to_dataclass(C, {"a": 2, "b": [1, 2]}) == C(a=2, b=(1, 2))
    with pytest.raises(ValueError, match=r"unknown C option\(s\) \['z'\]"):
        to_dataclass(C, {"z": 1})
