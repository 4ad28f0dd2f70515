"""Model sources: exported files and folders, MLflow registry URIs, released-file errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from glide.models.export import save_model
from glide.sampling import ModelSourceError, load_model_source
from tests.test_sampling_support import micro_model


@pytest.fixture
def exported(tmp_path: Path) -> Path:
    loaded = micro_model("base")
    path = tmp_path / "models" / "base" / "model.pt"
    save_model(
        path,
        loaded.model,
        kind="base",
        options=loaded.options,
        tokenizer="clip",
        diffusion={"steps": 50, "noise_schedule": "squaredcos_cap_v2"},
        extra={"run_id": "abc123"},
    )
    return path


def test_exported_folder_and_file_load_the_same_model(exported: Path) -> None:
    by_dir = load_model_source(exported.parent)
    by_file = load_model_source(exported)
    assert by_dir.kind == "base" and by_dir.diffusion.steps == 50 and by_dir.image_size == 32
    assert "abc123" in by_dir.version and not by_dir.super_res and not by_dir.inpaint
    for a, b in zip(
        by_dir.model.state_dict().values(), by_file.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    assert not by_dir.model.training


def test_mlflow_registry_uri_resolves_to_the_runs_export(
    exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(exported), "export")
    client = mlflow.MlflowClient()
    client.create_registered_model("glide-base")
    mv = client.create_model_version(
        "glide-base", source=f"runs:/{run.info.run_id}/export", run_id=run.info.run_id
    )
    client.set_registered_model_alias("glide-base", "champion", mv.version)

    loaded = load_model_source("models:/glide-base@champion")
    assert loaded.kind == "base" and f"v{mv.version}" in loaded.version
    assert run.info.run_id in loaded.version
    by_number = load_model_source(f"models:/glide-base/{mv.version}")
    expected = load_model_source(exported).model.state_dict()
    for key, value in by_number.model.state_dict().items():
        assert torch.equal(value, expected[key])
    with pytest.raises(ModelSourceError, match="unknown model URI"):
        load_model_source("models:/glide-base@nobody")
    with pytest.raises(ModelSourceError, match="names no version"):
        load_model_source("models:/glide-base")


def test_released_files_are_never_downloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GLIDE_OPENAI_DIR", str(tmp_path / "release"))
    with pytest.raises(FileNotFoundError, match=r"upsample_inpaint\.pt") as info:
        load_model_source("openai:upsample-inpaint")
    assert str(tmp_path / "release") in str(info.value)
    with pytest.raises(ModelSourceError, match="unknown released model"):
        load_model_source("openai:huge")
    (tmp_path / "release").mkdir()
    (tmp_path / "release" / "base.pt").write_bytes(b"")
    monkeypatch.delenv("GLIDE_GPT2_DIR", raising=False)
    with pytest.raises(ModelSourceError, match="GPT-2 BPE"):
        load_model_source(tmp_path / "release" / "base.pt")
