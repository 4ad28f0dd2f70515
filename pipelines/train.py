"""DVC stages ``train_base``, ``train_upsampler``, ``train_inpaint``, ``train_clip``.

    python pipelines/train.py train=base|upsampler|inpaint|clip [hydra overrides...]
    python pipelines/train.py train=base train.resume=true      # after a crash: same MLflow run

Writes ``models/<name>/`` (``model.pt`` EMA export, ``checkpoints/``, ``mlflow_run_id``,
``summary.json``, ``samples/``) and the loss curve ``plots/train_<name>.csv``; logs one MLflow
run (params = the composed config, flattened). Multi-GPU / multi-node: set
``train.strategy=ddp train.devices=N train.num_nodes=M`` and start it with torchrun or srun.
"""

from __future__ import annotations

import sys

from glide.config import compose, find_conf_dir, project_root
from glide.models import load_preset
from glide.stage import run_stage
from glide.tracking.datasets import load_prepare_stats, shard_inputs
from glide.training import train, train_config_from_dict


def _stage_name(argv: list[str]) -> str:
    """``train_<name>`` from the ``train=<name>`` override (the dvc.yaml stage's name)."""
    chosen = [a.split("=", 1)[1] for a in argv if a.startswith("train=")]
    return f"train_{chosen[-1]}" if chosen else "train"


def main(argv: list[str]) -> int:
    cfg = compose("config", argv)
    root = project_root()
    config = train_config_from_dict(cfg["train"])
    # A composed `model` group (if the config tree has one) wins over the named preset.
    model_cfg = cfg.get("model")
    if isinstance(model_cfg, dict) and config.part in model_cfg:
        preset = model_cfg
    else:
        preset = load_preset(config.preset, find_conf_dir() / "model")
    # The shards as MLflow datasets (digest = the md5 dvc.lock records), linked to their prepare run.
    inputs = shard_inputs(
        root,
        config.data.shards_dir,
        validation=config.val_every > 0 and config.data.val_batches > 0,
        stats=load_prepare_stats(cfg["metrics_file"]),
    )
    result = train(
        config,
        preset,
        root=root,
        experiment=cfg["experiment"],
        tracking_uri=cfg["tracking_uri"],
        params=cfg,
        inputs=inputs,
    )
    if result.model_path is not None:  # rank 0
        losses = {k: round(v, 4) for k, v in result.metrics.items() if k.startswith("train/")}
        print(
            f"train_{config.name}: {result.step} steps in {result.seconds:.0f} s -> "
            f"{result.model_path} (run {result.run_id}) {losses}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(_stage_name(sys.argv[1:]), main, sys.argv[1:]))
