"""LightningModules on small configs: training steps, learning, EMA, masks, inpainting init."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from glide.models import load_preset
from glide.models.nn import perturb_
from glide.training import (
    EMA,
    ClipModule,
    InpaintModule,
    ShardStream,
    TrainConfig,
    UpsampleModule,
    build_module,
    model_options,
    random_masks,
)
from glide.training.config import DataConfig, OptimConfig, SampleConfig
from glide.training.datamodule import ShardDataModule, list_shards
from glide.training.modules import init_from_smaller_inputs, step_seed
from tests.test_training_data import write_shards

# A few-hundred-kFLOP U-Net at 32x32 with the tiny preset's text side: fast enough for CPU tests.
SMALL_UNET = {
    "image_size": 32,
    "channel_mult": "1,2",
    "attention_resolutions": "8",
    "text_ctx": 16,
    "xf_layers": 1,
}
SMALL_CLIP = {"image_size": 32, "max_text_len": 16}


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shards(tmp_path_factory.mktemp("shards"), n=64, per_shard=16, size=64)


def small_config(shards_dir: Path, out: Path, kind: str = "base", **kw: Any) -> TrainConfig:
    """A :class:`TrainConfig` for a seconds-long run on ``shards_dir``."""
    part = {
        "base": "base",
        "inpaint": "base",
        "upsample": "upsample",
        "clip": "clip",
        "distill": "base",
    }[kind]
    data = DataConfig(
        shards_dir=str(shards_dir),
        image_size=32,
        low_res_size=8 if kind == "upsample" else 0,
        crop_size=16 if kind == "upsample" else 0,
        batch_size=8,
        num_workers=0,
        caption_dropout=0.0 if kind == "clip" else 0.2,
        text_ctx=16,
        epoch_length=64,
        shuffle_buffer=16,
        val_batch_size=8,
    )
    cfg = TrainConfig(
        name=kind,
        kind=kind,
        part=part,
        model_overrides=SMALL_CLIP if kind == "clip" else SMALL_UNET,
        max_steps=4,
        accelerator="cpu",
        devices=1,
        log_every=1,
        checkpoint_every=2,
        out_dir=str(out / "models" / kind),
        plots_file=str(out / "plots" / f"train_{kind}.csv"),
        progress=False,
        log_mlflow_model=False,
        ema_decay=0.9,
        data=data,
        optim=OptimConfig(lr=1e-3, warmup_steps=2),
        sample=SampleConfig(prompts=("a red circle", "a blue square"), steps=2),
    )
    return dataclasses.replace(cfg, **kw)


def first_batch(cfg: TrainConfig) -> dict[str, Any]:
    return next(iter(ShardStream(list_shards(cfg.data.shards_dir, "train"), cfg.data)))


def build(cfg: TrainConfig) -> Any:
    return build_module(cfg, model_options(cfg, load_preset(cfg.preset)))


def _step_grads(module: Any, batch: dict[str, Any]) -> torch.Tensor:
    module.train()
    loss = module.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in module.model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    return loss


def test_base_training_step_logs_hybrid_loss(shards: Path, tmp_path: Path) -> None:
    cfg = small_config(shards, tmp_path)
    module = build(cfg)
    batch = first_batch(cfg)
    out = module.losses(module.model, batch)
    assert set(out) >= {"loss", "mse", "vb", "t"}
    assert torch.allclose(out["loss"], out["mse"] + out["vb"])
    _step_grads(module, batch)


def test_upsampler_step_uses_augmented_8bit_low_res(shards: Path, tmp_path: Path) -> None:
    cfg = small_config(shards, tmp_path, "upsample")
    module = build(cfg)
    assert isinstance(module, UpsampleModule)
    batch = first_batch(cfg)
    assert batch["low_res"].shape[-1] * 4 == batch["image"].shape[-1]
    module.train()
    low = module.conditioning(batch, batch["image"])["low_res"]
    levels = (low + 1) * 127.5
    assert torch.allclose(levels, levels.round(), atol=1e-4)  # still 8-bit levels
    blurred = dataclasses.replace(cfg, upsample=dataclasses.replace(cfg.upsample, blur_prob=1.0))
    module.config = blurred
    assert not torch.equal(module.conditioning(batch, batch["image"])["low_res"], batch["low_res"])
    _step_grads(module, batch)


def test_inpaint_init_from_base_zero_channels_and_step(shards: Path, tmp_path: Path) -> None:
    base_cfg = small_config(shards, tmp_path)
    base = build(base_cfg)
    cfg = small_config(shards, tmp_path, "inpaint")
    module = build(cfg)
    assert isinstance(module, InpaintModule)
    widened = module.init_from_base(base.model.state_dict())
    assert widened == ["input_blocks.0.0.weight"]
    w = module.model.state_dict()["input_blocks.0.0.weight"]
    assert torch.equal(w[:, :3], base.model.state_dict()["input_blocks.0.0.weight"])
    assert not w[:, 3:].any()  # the image*mask and mask channels start at zero
    # Hence the fresh inpainting model computes exactly what the base does.
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([10, 500])
    tokens, mask = torch.zeros(2, 16, dtype=torch.long), torch.ones(2, 16, dtype=torch.bool)
    with torch.no_grad():
        a = base.model(x, t, tokens=tokens, mask=mask)
        b = module.model(x, t, tokens=tokens, mask=mask, inpaint_image=x, inpaint_mask=x[:, :1])
    assert torch.allclose(a, b, atol=1e-5)
    _step_grads(module, first_batch(cfg))


def test_clip_step_contrastive_loss(shards: Path, tmp_path: Path) -> None:
    cfg = small_config(shards, tmp_path, "clip")
    module = build(cfg)
    assert isinstance(module, ClipModule)
    batch = first_batch(cfg)
    t = torch.randint(0, 1000, (8,))
    img, _ = module.features(module.model, batch, t)
    assert torch.allclose(img.norm(dim=-1), torch.ones(8), atol=1e-5)
    loss = _step_grads(module, batch)
    # Untrained: about the chance level log(B) of an 8-way classification.
    assert 0.5 * torch.log(torch.tensor(8.0)) < loss < 4 * torch.log(torch.tensor(8.0))
    assert module.log_logit_scale.grad is not None


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread: on a shared 2-core box, two threads stall on each other's barriers."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_base_loss_falls_in_a_few_dozen_steps(
    shards: Path, tmp_path: Path, one_thread: None
) -> None:
    cfg = small_config(shards, tmp_path, max_steps=30, checkpoint_every=1000, ema_decay=0.9)
    module = build(cfg)
    batch = first_batch(cfg)
    t = torch.linspace(0, 999, 8).long()

    def fixed_loss() -> float:
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(0)
            return float(module.losses(module.model, batch, t)["mse"].mean())

    before = fixed_loss()
    trainer = pl.Trainer(
        max_steps=30,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=ShardDataModule(cfg.data, seed=0))
    after = fixed_loss()
    assert trainer.global_step == 30
    assert after < 0.7 * before, (before, after)
    assert int(module.ema.num_updates) == 30


def test_ema_update_math() -> None:
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.5)
    assert ema.current_decay() == pytest.approx(0.1)  # warm-up: (1 + 0) / (10 + 0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    old = [p.clone() for p in ema.model.parameters()]
    ema.update(model)
    for e, o, p in zip(ema.model.parameters(), old, model.parameters(), strict=True):
        assert torch.allclose(e, 0.1 * o + 0.9 * p)
    assert int(ema.num_updates) == 1
    ema.num_updates.fill_(1000)
    assert ema.current_decay() == 0.5
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_random_masks_mix() -> None:
    g = torch.Generator().manual_seed(0)
    masks = random_masks(200, 32, 32, g, unmasked_fraction=0.2, rect_fraction=0.5)
    assert masks.shape == (200, 1, 32, 32)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    full = masks.flatten(1).all(dim=1).float().mean()
    assert 0.1 < full < 0.3
    holes = 1 - masks.flatten(1).mean(dim=1)
    assert (holes[holes > 0] < 0.9).all()
    g2 = torch.Generator().manual_seed(0)
    assert torch.equal(masks, random_masks(200, 32, 32, g2, unmasked_fraction=0.2))


def test_init_from_smaller_inputs_rejects_mismatch() -> None:
    model = torch.nn.Conv2d(7, 4, 3)
    with pytest.raises(ValueError, match="cannot initialise"):
        init_from_smaller_inputs(model, {"weight": torch.zeros(5, 3, 3, 3), "bias": torch.zeros(4)})


def test_step_seed_distinct() -> None:
    seeds = {step_seed(0, s, r) for s in range(100) for r in range(4)}
    assert len(seeds) == 400


def test_caption_gain_is_zero_without_distinct_captions(shards: Path, tmp_path: Path) -> None:
    """Right-vs-shuffled caption gain: 0 when shuffling changes nothing, nonzero otherwise."""
    cfg = small_config(shards, tmp_path)
    module = build(cfg)
    batch = first_batch(cfg)
    t = torch.full((batch["image"].shape[0],), 700)
    with torch.no_grad():
        perturb_(module.ema.model, std=0.05)  # a fresh U-Net outputs exactly zero
    same = {
        **batch,
        "tokens": batch["tokens"][:1].expand_as(batch["tokens"]).clone(),
        "mask": batch["mask"][:1].expand_as(batch["mask"]).clone(),
    }
    assert module.caption_gain(same, t).item() == 0.0
    assert len(set(map(tuple, batch["tokens"].tolist()))) > 1
    assert abs(module.caption_gain(batch, t).item()) > 1e-6


def test_training_logs_its_export_as_the_mlflow_model_without_pickle(
    shards: Path,
    tmp_path: Path,
    one_thread: None,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``train.log_mlflow_model``: the export itself is the run's logged model ``model`` (a
    python_function model from code), so no pickle and no MLflow warning about one; registering
    the run makes that model the version's source, and the version loads for sampling."""
    import logging
    import warnings

    import mlflow
    import yaml

    from glide.sampling import load_model_source
    from glide.tracking.registry import (
        ModelRegistry,
        PromotionConfig,
        file_sha256,
        version_model_id,
    )
    from glide.training import train

    cfg = small_config(
        shards, tmp_path, max_steps=2, checkpoint_every=1000, num_threads=1, log_mlflow_model=True
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    mlflow_log = logging.getLogger("mlflow")
    mlflow_log.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = train(
                cfg,
                load_preset("tiny"),
                root=tmp_path,
                experiment="test",
                tracking_uri=uri,
                params={"test": True},
            )
    finally:
        mlflow_log.removeHandler(handler)
    printed = capfd.readouterr()
    said = [*seen, *(str(w.message) for w in caught), printed.out, printed.err]
    assert not [m for m in said if "pickle" in m.lower()], [m[:300] for m in said]

    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(result.run_id)
    (logged,) = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    model_file = Path(cfg.out_dir) / "model.pt"
    assert (logged.name, logged.source_run_id, logged.model_type) == (
        "model",
        result.run_id,
        "glide-export",
    )
    assert logged.tags["glide.sha256"] == file_sha256(model_file)
    assert str(logged.status) == "READY" and logged.params["test"] == "True"
    assert [o.model_id for o in run.outputs.model_outputs] == [logged.model_id]

    registry = ModelRegistry(client, PromotionConfig())
    registered = registry.register(
        name="glide-base",
        model_dir=cfg.out_dir,
        metrics={"summary.acc": 0.5},
        lineage={},
        experiment="test",
    )
    mv = client.get_model_version("glide-base", registered.version)
    assert version_model_id(mv) == logged.model_id  # training's model, not a second upload
    assert registry.model_metrics(logged.model_id) == {"summary.acc": 0.5}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    loaded = load_model_source("models:/glide-base@champion")
    assert loaded.kind == "base" and loaded.image_size == 32
    folder = Path(mlflow.artifacts.download_artifacts(mv.source, tracking_uri=uri))
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    assert set(mlmodel["flavors"]) == {"python_function"}
    assert mlmodel["flavors"]["python_function"]["loader_module"].endswith("code_model")
    assert (folder / "artifacts" / "model.pt").read_bytes() == model_file.read_bytes()
    assert not [p.name for p in folder.rglob("*") if p.suffix in (".pkl", ".pth")]
