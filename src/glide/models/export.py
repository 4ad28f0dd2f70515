"""The exported-model file: one ``.pt`` that sampling, evaluation and the registry load.

Format (a plain ``dict`` written by :func:`torch.save`, readable with ``weights_only=True``)::

    {
      "format": "glide-export",        # marker, checked on load
      "version": 1,
      "kind": "base" | "upsample" | "inpaint" | "clip",
      "options": {...},                # release-style options: from_openai_options(options), or
                                       # clip_from_openai_options(options) for kind "clip"
      "tokenizer": {"name": "clip", "path": None},   # glide.text.get_tokenizer(name, path)
      "diffusion": {"steps": 1000, "noise_schedule": "squaredcos_cap_v2",
                    "parametrization": "eps"},   # eps | x0 | v (absent: eps); {} for clip
      "extra": {...},                  # free-form primitives: training step, losses, run id, ...
      "state_dict": {name: tensor},    # the weights (the EMA weights for trained models)
    }

Every value outside ``state_dict`` is a primitive (str, int, float, bool, None) or a list / dict
of them, so loading never unpickles code. Files are written atomically (temporary file in the
same folder, fsync, ``os.replace``): a reader never sees a half-written model.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from glide.io import atomic_path
from glide.models.options import clip_from_openai_options, from_openai_options

FORMAT = "glide-export"
VERSION = 1
KINDS = ("base", "upsample", "inpaint", "clip")


def _check_primitive(value: Any, where: str) -> None:
    if value is None or isinstance(value, str | int | float | bool):
        return
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_primitive(v, f"{where}[{i}]")
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: keys must be str, got {k!r}")
            _check_primitive(v, f"{where}.{k}")
        return
    raise TypeError(f"{where}: {type(value).__name__} is not a primitive value")


def _plain(value: Any) -> Any:
    """Tuples -> lists, mappings -> dicts (what ``weights_only`` loading accepts everywhere)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors nested in ``obj``: what a ``torch.save`` of it needs, give or take."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename over ``path``
    (:func:`glide.io.atomic_path`: a full disk names ``path`` and the bytes needed)."""
    with atomic_path(path, needed=_tensor_bytes(obj)) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
    return Path(path)


def save_model(
    path: str | Path,
    model: nn.Module,
    *,
    kind: str,
    options: Mapping[str, Any],
    tokenizer: str | Mapping[str, Any],
    diffusion: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model``'s weights and everything needed to rebuild it; see the module docstring."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    tok = {"name": tokenizer, "path": None} if isinstance(tokenizer, str) else dict(tokenizer)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "options": _plain(options),
        "tokenizer": _plain(tok),
        "diffusion": _plain(diffusion or {}),
        "extra": _plain(extra or {}),
    }
    _check_primitive(meta, "meta")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return atomic_torch_save({**meta, "state_dict": state}, path)


def build_model(kind: str, options: Mapping[str, Any]) -> nn.Module:
    """An untrained network of ``kind`` from release-style ``options``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return clip_from_openai_options(options) if kind == "clip" else from_openai_options(options)


def _load_payload(path: Path, **kwargs: Any) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"exported model {path} not found (train it: pipelines/train.py)")
    payload = torch.load(path, weights_only=True, **kwargs)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} file")
    if payload.get("version", 0) > VERSION:
        raise ValueError(f"{path} has format version {payload['version']} > {VERSION}")
    return payload


def read_metadata(path: str | Path) -> dict[str, Any]:
    """An export's metadata (everything but ``state_dict``) without building the model; the
    weights are memory-mapped, not read. ``ValueError`` for a file that is not an export."""
    path = Path(path)
    try:
        payload = _load_payload(path, map_location="cpu", mmap=True)
    except (RuntimeError, pickle.UnpicklingError) as exc:  # not a torch zip file at all
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path} is not a {FORMAT} file: {first}") from None
    payload.pop("state_dict", None)
    return payload


def load_model(
    path: str | Path, *, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild and load an exported model (strictly); return ``(model in eval mode, meta)``."""
    payload = _load_payload(Path(path), map_location=map_location)
    state = payload.pop("state_dict")
    model = build_model(payload["kind"], payload["options"])
    model.load_state_dict(state, strict=True)
    return model.eval(), payload


def model_digest(model: nn.Module) -> str:
    """A digest of a network's parameters and buffers (names, dtypes, shapes and bytes): the
    same weights give the same digest whatever file or registry they were loaded from."""
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
