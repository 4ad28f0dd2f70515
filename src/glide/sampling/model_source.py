"""Resolve a model source to a ready-to-sample network, its tokenizer and diffusion settings.

A source is one of:

- a path to a model exported by training (``glide.models.export``): ``models/<name>/`` or the
  ``model.pt`` inside it;
- an MLflow model URI, ``models:/<name>@<alias>`` or ``models:/<name>/<version>``: the export
  ``export/model.pt`` of the run that logged the registered version;
- a released OpenAI checkpoint: ``openai:<name>`` (``base``, ``upsample``, ``base-inpaint``,
  ``upsample-inpaint``), looked up as ``<name>.pt`` (dashes as underscores) in
  ``$GLIDE_OPENAI_DIR`` (default ``~/.cache/glide/openai``), or a path to such a ``.pt`` file.
  Nothing is downloaded: a missing file raises an error naming the file and the folder. These use
  the GPT-2 BPE, read from ``tokenizer_path`` (or ``$GLIDE_GPT2_DIR``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from glide.models import NoisedCLIP, Text2ImUNet, load_openai_checkpoint, load_preset
from glide.sampling.samplers import DiffusionSpec
from glide.text import Tokenizer, get_tokenizer

__all__ = [
    "OPENAI_FILES",
    "LoadedModel",
    "ModelSourceError",
    "load_model_source",
    "openai_dir",
]

OPENAI_FILES = {
    "base": ("base.pt", "base", DiffusionSpec(1000, "squaredcos_cap_v2")),
    "upsample": ("upsample.pt", "upsample", DiffusionSpec(1000, "linear")),
    "base-inpaint": ("base_inpaint.pt", "base_inpaint", DiffusionSpec(1000, "squaredcos_cap_v2")),
    "upsample-inpaint": (
        "upsample_inpaint.pt",
        "upsample_inpaint",
        DiffusionSpec(1000, "linear"),
    ),
}
EXPORT_FILE = "model.pt"  # models/<name>/model.pt, and export/model.pt in the training run
_RELEASE_URL = "https://openaipublic.blob.core.windows.net/diffusion/dec-2021/"


class ModelSourceError(ValueError):
    """A model source that cannot be resolved (unknown URI, missing file, wrong kind)."""


@dataclass
class LoadedModel:
    """A network with everything needed to sample from it."""

    model: nn.Module
    kind: str  # "base" | "upsample" | "inpaint" | "clip"
    options: dict[str, Any]
    tokenizer: Tokenizer
    diffusion: DiffusionSpec
    version: str  # shown in PNG metadata and reports
    sampler: str | None = None  # the sampler a progressive student learned (e.g. "pd-4")

    @property
    def image_size(self) -> int:
        return int(self.options.get("image_size", 64))

    @property
    def text_ctx(self) -> int:
        key = "max_text_len" if isinstance(self.model, NoisedCLIP) else "text_ctx"
        return int(self.options.get(key, 128))

    @property
    def super_res(self) -> bool:
        return bool(getattr(getattr(self.model, "text_config", None), "super_res", False))

    @property
    def inpaint(self) -> bool:
        return bool(getattr(getattr(self.model, "text_config", None), "inpaint", False))


def openai_dir() -> Path:
    """Where released ``.pt`` files are looked up: ``$GLIDE_OPENAI_DIR`` or ~/.cache/glide/openai."""
    env = os.environ.get("GLIDE_OPENAI_DIR")
    return Path(env) if env else Path.home() / ".cache" / "glide" / "openai"


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def _diffusion_from_meta(meta: dict[str, Any]) -> DiffusionSpec:
    d = meta.get("diffusion") or {}
    return DiffusionSpec(
        steps=int(d.get("steps", d.get("diffusion_steps", 1000))),
        noise_schedule=str(d.get("noise_schedule", "squaredcos_cap_v2")),
        parametrization=str(d.get("parametrization", "eps")),  # files before v2 of the recipe
    )


@lru_cache(maxsize=4)
def _tokenizer(name: str, path: str | None) -> Tokenizer:
    """Tokenizers are immutable and slow to build: share one per (name, path)."""
    return get_tokenizer(name, path)


def _tokenizer_from_meta(meta: dict[str, Any], tokenizer_path: str | None) -> Tokenizer:
    tok = meta.get("tokenizer") or "clip"
    name, path = (
        (tok.get("name", "clip"), tok.get("path")) if isinstance(tok, dict) else (tok, None)
    )
    return _tokenizer(str(name), tokenizer_path or path)


def _load_export(path: Path, version: str, tokenizer_path: str | None) -> LoadedModel:
    from glide.models.export import load_model

    if path.is_dir():
        path = path / EXPORT_FILE
    model, meta = load_model(path)
    extra = meta.get("extra") or {}
    run_id = extra.get("run_id")
    return LoadedModel(
        model=model.eval(),
        kind=str(meta.get("kind", "base")),
        options=dict(meta.get("options") or {}),
        tokenizer=_tokenizer_from_meta(meta, tokenizer_path),
        diffusion=_diffusion_from_meta(meta),
        version=f"{version} (run {run_id})" if run_id and "run " not in version else version,
        sampler=extra.get("sampler") if isinstance(extra.get("sampler"), str) else None,
    )


def _load_openai(name: str, path: Path | None, tokenizer_path: str | None) -> LoadedModel:
    if name not in OPENAI_FILES:
        raise ModelSourceError(
            f"unknown released model {name!r}; expected one of {sorted(OPENAI_FILES)}"
        )
    file_name, part, diffusion = OPENAI_FILES[name]
    path = path or openai_dir() / file_name
    if not path.is_file():
        raise FileNotFoundError(
            f"released GLIDE checkpoint {file_name} not found at {path}: this tool never "
            f"downloads; fetch {_RELEASE_URL}{file_name} yourself and put it in {path.parent} "
            "(or set GLIDE_OPENAI_DIR)"
        )
    tokenizer_path = tokenizer_path or os.environ.get("GLIDE_GPT2_DIR")
    if tokenizer_path is None:
        raise ModelSourceError(
            "released GLIDE models use the GPT-2 BPE: pass --tokenizer-path DIR (or set "
            "GLIDE_GPT2_DIR) with its encoder.json and vocab.bpe"
        )
    options = dict(load_preset("filtered")[part])
    model = load_openai_checkpoint(path, options)
    kind = "inpaint" if "inpaint" in name else name
    return LoadedModel(
        model=model.eval(),
        kind=kind,
        options=options,
        tokenizer=_tokenizer("gpt2", tokenizer_path),
        diffusion=diffusion,
        version=f"openai:{name} sha256:{_file_digest(path)}",
    )


def _mlflow_download(uri: str) -> tuple[Path, str]:
    """Fetch the export file of a registered model version: the ``export/model.pt`` artifact of
    the run that logged it (training logs both). Returns (local file, "uri (v<version>, run ...)").
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from glide.config import project_root
    from glide.tracking import ensure_reachable, resolve_tracking_uri

    try:
        root = project_root()
    except FileNotFoundError:
        root = Path.cwd()
    tracking = resolve_tracking_uri(root)
    ensure_reachable(tracking)
    mlflow.set_tracking_uri(tracking)
    body = uri[len("models:/") :]
    client = mlflow.MlflowClient()
    try:
        if "@" in body:
            name, alias = body.split("@", 1)
            mv = client.get_model_version_by_alias(name, alias)
        elif "/" in body:
            name, number = body.split("/", 1)
            mv = client.get_model_version(name, number)
        else:
            raise ModelSourceError(
                f"model URI {uri!r} names no version: use models:/<name>@<alias> or "
                "models:/<name>/<version>"
            )
        if mv.run_id:
            local = mlflow.artifacts.download_artifacts(
                run_id=mv.run_id, artifact_path=f"export/{EXPORT_FILE}"
            )
        else:  # a version registered without a run: look for the export inside its artifacts
            local = str(next(Path(mlflow.artifacts.download_artifacts(uri)).rglob(EXPORT_FILE)))
    except MlflowException as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelSourceError(
            f"unknown model URI {uri!r} in tracking store {tracking}: {first}"
        ) from None
    except StopIteration:
        raise ModelSourceError(f"{uri} holds no {EXPORT_FILE} export") from None
    return Path(local), f"{uri} (v{mv.version}, run {mv.run_id})"


def load_model_source(
    source: str | Path,
    *,
    tokenizer_path: str | None = None,
    device: torch.device | str = "cpu",
) -> LoadedModel:
    """Load ``source`` (see the module docstring) onto ``device`` in eval mode."""
    text = str(source)
    if text.startswith("models:/"):
        local, version = _mlflow_download(text)
        loaded = _load_export(local, version, tokenizer_path)
    elif text.startswith("openai:"):
        loaded = _load_openai(text[len("openai:") :], None, tokenizer_path)
    else:
        path = Path(text)
        if not path.exists():
            raise FileNotFoundError(
                f"model {path} not found: give an exported model (e.g. models/base after "
                "`dvc repro`), an MLflow URI models:/<name>@<alias>, or openai:<name>"
            )
        release = {v[0]: k for k, v in OPENAI_FILES.items()}
        if path.is_file() and path.name in release:
            loaded = _load_openai(release[path.name], path, tokenizer_path)
        else:
            loaded = _load_export(path, str(path), tokenizer_path)
    loaded.model.to(device)
    return loaded


def is_text2im(loaded: LoadedModel) -> bool:
    """Whether the loaded network is a GLIDE U-Net (not the noised CLIP)."""
    return isinstance(loaded.model, Text2ImUNet)
