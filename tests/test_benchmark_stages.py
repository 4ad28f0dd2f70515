"""``benchmarks/stages.py`` (where a training step's time goes) and ``benchmarks/stage_curves.py``
(a stage's checkpoints exported as models) on seconds-long runs of the micro networks."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from glide.models import load_preset
from glide.models.export import load_model
from glide.training import ShardDataModule, build_module, model_options
from tests.conftest import REPO_ROOT
from tests.test_training_data import write_shards
from tests.test_training_modules import small_config


def _load(name: str) -> ModuleType:
    path = REPO_ROOT / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_profile_step_splits_a_step_into_its_phases(tmp_path: Path) -> None:
    stages = _load("stages")
    cfg = small_config(write_shards(tmp_path / "shards", size=32), tmp_path)
    prof = stages.profile_step(cfg, steps=2)
    assert all(prof[p] > 0 for p in stages.PHASES), prof
    assert prof["step"] == sum(prof[p] for p in stages.PHASES)
    assert prof["compute"] == prof["step"] - prof["data"]
    assert prof["images_per_s"] == 1e3 * cfg.data.batch_size / prof["compute"]


def test_stage_curves_exports_a_checkpoint_as_the_stage_would(tmp_path: Path) -> None:
    curves = _load("stage_curves")
    cfg = small_config(write_shards(tmp_path / "shards", size=32), tmp_path)
    torch.manual_seed(0)
    module = build_module(cfg, model_options(cfg, load_preset("tiny")))
    ckpt_dir = Path(cfg.out_dir) / "checkpoints"
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        callbacks=[
            ModelCheckpoint(
                dirpath=ckpt_dir,
                filename="step-{step:07d}",
                auto_insert_metric_name=False,
                every_n_train_steps=1,
                save_top_k=-1,
                monitor="step",
                mode="max",
            )
        ],
    )
    trainer.fit(module, datamodule=ShardDataModule(cfg.data, seed=0))
    found = curves.checkpoints(Path(cfg.out_dir))
    assert [step for step, _ in found] == [1, 2]
    path = curves.export_checkpoint(cfg, found[-1][1], tmp_path / "export")
    model, meta = load_model(path)
    assert meta["kind"] == "base" and meta["extra"]["step"] == 2
    for (name, got), want in zip(
        model.state_dict().items(), module.ema.model.state_dict().values(), strict=True
    ):
        assert torch.equal(got, want), name
