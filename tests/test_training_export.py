"""The exported-model file: atomic write, weights_only round trip for every kind."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from glide.models import load_preset
from glide.models.export import FORMAT, build_model, load_model, read_metadata, save_model

SMALL = {"image_size": 32, "channel_mult": "1,2", "attention_resolutions": "8", "text_ctx": 16}


@pytest.mark.parametrize(
    ("kind", "part", "extra"),
    [("base", "base", {}), ("inpaint", "base", {"inpaint": True}), ("clip", "clip", {})],
)
def test_round_trip(tmp_path: Path, kind: str, part: str, extra: dict) -> None:
    options = {**load_preset("tiny")[part], **(SMALL if kind != "clip" else {}), **extra}
    model = build_model(kind, options)
    path = save_model(
        tmp_path / "m" / "model.pt",
        model,
        kind=kind,
        options=options,
        tokenizer="clip",
        diffusion={"steps": 1000, "noise_schedule": "squaredcos_cap_v2"},
        extra={"step": 7, "losses": [0.5, 0.25]},
    )
    raw = torch.load(path, weights_only=True)  # nothing but tensors and primitives
    assert raw["format"] == FORMAT and raw["kind"] == kind
    loaded, meta = load_model(path)
    assert type(loaded) is type(model) and not loaded.training
    assert meta["extra"] == {"step": 7, "losses": [0.5, 0.25]}
    assert meta["tokenizer"] == {"name": "clip", "path": None}
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]  # no temp files


def test_rejects_bad_kind_and_non_primitive_meta(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="kind"):
        save_model(tmp_path / "x.pt", model, kind="decoder", options={}, tokenizer="clip")
    with pytest.raises(TypeError, match="not a primitive"):
        save_model(
            tmp_path / "x.pt", model, kind="base", options={}, tokenizer="clip", extra={"p": Path()}
        )
    assert not (tmp_path / "x.pt").exists()


def test_load_rejects_foreign_files(tmp_path: Path) -> None:
    torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a glide-export"):
        load_model(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.pt")


def test_read_metadata_skips_the_weights(tmp_path: Path) -> None:
    extra = {"step": 3, "stopped_by": "max_time", "max_steps": 9}
    path = save_model(
        tmp_path / "model.pt",
        torch.nn.Linear(2, 2),
        kind="base",
        options={},
        tokenizer="clip",
        extra=extra,
    )
    meta = read_metadata(path)
    assert meta["extra"] == extra and meta["kind"] == "base" and "state_dict" not in meta
    (tmp_path / "bytes.pt").write_bytes(b"not a torch file")
    torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
    for name in ("bytes.pt", "other.pt"):
        with pytest.raises(ValueError, match="not a glide-export"):
            read_metadata(tmp_path / name)
