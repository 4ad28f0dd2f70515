"""Hydra at the edge: compose the project's config tree and turn sections into dataclasses.

Pipeline entry points call :func:`compose`; the library itself only sees typed dataclasses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def config_digest(fields: Mapping[str, Any]) -> str:
    """16 hex digits hashing ``fields`` (JSON, keys sorted; non-JSON values by ``repr``): the key
    of a configuration (evaluation image cache, ``glide sample``'s ``settings`` text chunk)."""
    text = json.dumps(fields, sort_keys=True, default=repr)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def find_conf_dir() -> Path:
    """``$GLIDE_CONF_DIR``, else ``./conf``, else the ``conf/`` of the source checkout."""
    env = os.environ.get("GLIDE_CONF_DIR")
    if env:
        return Path(env).resolve()
    for candidate in (Path.cwd() / "conf", Path(__file__).resolve().parents[2] / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate.resolve()
    raise FileNotFoundError(
        "no Hydra config tree found: run from the repository root (which has conf/config.yaml) "
        "or set GLIDE_CONF_DIR"
    )


def project_root() -> Path:
    """The folder holding ``conf/``: where ``mlflow.db`` and stage outputs live."""
    return find_conf_dir().parent


def compose(config_name: str = "config", overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Compose ``conf/<config_name>.yaml`` with Hydra overrides; return a plain resolved dict.

    Inside ``dvc exp run -S key=value`` the ``-S`` overrides (which DVC's Hydra composition
    writes into ``params.yaml``) are applied too, before ``overrides``.
    """
    extra: list[str] = []
    if os.environ.get("DVC_EXP_NAME"):  # only then is params.yaml DVC's fresh composition
        extra = experiment_overrides(project_root(), _compose(config_name, ()))
    return _compose(config_name, [*extra, *overrides])


def _hydra_compose(config_name: str, overrides: Sequence[str], version_base: str | None) -> Any:
    """The ``DictConfig`` of ``conf/<config_name>.yaml`` with ``overrides`` (unresolved)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(find_conf_dir()), version_base=version_base):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def _compose(config_name: str, overrides: Sequence[str]) -> dict[str, Any]:
    from omegaconf import OmegaConf

    cfg = _hydra_compose(config_name, overrides, version_base="1.3")
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    return container  # type: ignore[return-value]


PARAMS_FILE = "params.yaml"


def params_yaml(config_name: str = "config", overrides: Sequence[str] = ()) -> str:
    """The text DVC's Hydra composition (``hydra.enabled``) writes to ``params.yaml``: the tree
    in :func:`find_conf_dir` composed, interpolations resolved, dumped by OmegaConf — byte for
    byte what ``dvc exp run`` without ``-S`` writes (``dvc.utils.hydra.compose_and_dump``), so the
    committed file never shows up as a spurious parameter change."""
    from omegaconf import OmegaConf

    cfg = _hydra_compose(config_name, overrides, version_base=None)  # as DVC initialises Hydra
    OmegaConf.resolve(cfg)
    return OmegaConf.to_yaml(cfg)


def write_params(path: str | Path | None = None, *, check: bool = False) -> bool:
    """Write :func:`params_yaml` to ``path`` (default: ``params.yaml`` beside ``conf/``), which
    the ``params:`` of ``dvc.yaml`` read under plain ``dvc repro``. Returns whether the file was
    already up to date; with ``check`` nothing is written."""
    path = Path(path) if path is not None else project_root() / PARAMS_FILE
    text = params_yaml()
    fresh = path.is_file() and path.read_text(encoding="utf-8") == text
    if not fresh and not check:
        path.write_text(text, encoding="utf-8")
    return fresh


def to_dataclass(cls: type[T], section: dict[str, Any] | None) -> T:
    """Build ``cls`` from a config section, naming unknown keys instead of a bare TypeError."""
    section = dict(section or {})
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(section) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} option(s) {unknown}; known: {sorted(names)}")
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        # YAML lists arrive as lists; frozen configs use tuples.
        if f.name in section and isinstance(section[f.name], list):
            section[f.name] = tuple(section[f.name])
    return cls(**section)


def _leaves(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, Mapping) and obj:
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(_leaves(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): obj}


def hydra_overrides(params: Mapping[str, Any], defaults: Mapping[str, Any]) -> list[str]:
    """Hydra overrides turning the composed ``defaults`` into ``params`` (changed leaves as
    ``key=value``, new ones as ``+key=value``, removed ones as ``~key``)."""
    new, old = _leaves(params), _leaves(defaults)
    out = []
    for key in sorted(new):
        if key not in old:
            out.append(f"+{key}={json.dumps(new[key])}")
        elif new[key] != old[key]:
            out.append(f"{key}={json.dumps(new[key])}")
    out += [f"~{key}" for key in sorted(set(old) - set(new)) if not key.startswith("hydra")]
    return out


def experiment_overrides(
    root: str | Path, defaults: Mapping[str, Any], *, params_file: str = PARAMS_FILE
) -> list[str]:
    """Inside ``dvc exp run`` (``$DVC_EXP_NAME`` set) with Hydra composition enabled, DVC writes
    the composed config with the ``-S`` overrides to ``params.yaml``; return those overrides
    relative to ``defaults`` (the stage's composition without them). Outside an experiment, or
    without the file: ``[]`` (``conf/`` alone is the truth for ``dvc repro``)."""
    import yaml

    path = Path(root) / params_file
    if not os.environ.get("DVC_EXP_NAME") or not path.is_file():
        return []
    params = yaml.safe_load(path.read_text()) or {}
    return hydra_overrides(params, defaults)
