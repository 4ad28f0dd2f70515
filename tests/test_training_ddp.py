"""Two-process DDP on CPU (gloo): each rank reads different samples; weights stay in sync."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.test_training_data import write_shards

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import pytorch_lightning as pl
    import torch
    sys.path.insert(0, {repo!r})
    from glide.models import load_preset
    from glide.training import ShardDataModule, build_module, model_options
    from tests.test_training_modules import small_config

    class Record(pl.Callback):
        keys = []
        def on_train_batch_start(self, trainer, module, batch, i):
            self.keys.extend(batch["key"])
        def on_train_end(self, trainer, module):
            digest = float(sum(p.double().sum() for p in module.model.parameters()))
            out = Path({out!r}) / f"rank{{trainer.global_rank}}.json"
            out.write_text(json.dumps({{"keys": self.keys, "digest": digest,
                                        "world": trainer.world_size}}))

    torch.set_num_threads(1)
    cfg = small_config(Path({shards!r}), Path({out!r}), max_steps=3)
    module = build_module(cfg, model_options(cfg, load_preset("tiny")))
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_steps=3, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, use_distributed_sampler=False, callbacks=[Record()],
    )
    trainer.fit(module, datamodule=ShardDataModule(cfg.data, seed=0))
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(600)
def test_two_process_ddp_ranks_see_different_samples(tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "shards", n=64, per_shard=16, size=32)
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT.format(repo=str(REPO), out=str(tmp_path), shards=str(shards)))
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    env["PYTHONPATH"] = str(REPO / "src")
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["world"] == 2 for r in ranks)
    keys0, keys1 = set(ranks[0]["keys"]), set(ranks[1]["keys"])
    assert len(ranks[0]["keys"]) == len(ranks[1]["keys"]) == 3 * 8
    assert not keys0 & keys1  # shards are split across ranks
    assert ranks[0]["digest"] == pytest.approx(ranks[1]["digest"], rel=1e-6)  # grads all-reduced
