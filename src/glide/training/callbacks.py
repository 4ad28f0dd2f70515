"""Lightning callbacks: loss-curve CSV + throughput, and the sample grid logged to MLflow."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from PIL import Image
from torch import Tensor

from glide.io import atomic_path
from glide.sampling.io import labelled_grid

CSV_FIELDS = (
    "step",
    "loss",
    "mse",
    "vb",
    "acc",
    "lr",
    "images_per_s",
    "val_loss",
    "corrupt_total",
)
_METRICS = {
    "loss": "train/loss",
    "mse": "train/mse",
    "vb": "train/vb",
    "acc": "train/acc",
    "lr": "train/lr",
    "val_loss": "val/loss",
    "corrupt_total": "data/corrupt_total",
}


class TrainMonitor(pl.Callback):
    """Logs ``train/images_per_s`` and appends a row to the loss-curve CSV every ``every`` steps.

    The CSV (``step, loss, mse, vb, ...``) is what ``dvc plots`` draws; on resume the rows after
    the checkpoint's step are dropped so the curve has no duplicate steps.
    """

    def __init__(self, csv_path: str | Path, *, every: int = 10) -> None:
        self.csv_path = Path(csv_path)
        self.every = max(1, every)
        self._t0: float | None = None
        self._images = 0
        self.last_row: dict[str, Any] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        kept: list[dict[str, str]] = []
        if trainer.global_step > 0 and self.csv_path.is_file():
            with self.csv_path.open(newline="") as f:
                kept = [r for r in csv.DictReader(f) if int(r["step"]) <= trainer.global_step]
        with self.csv_path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            writer.writeheader()
            writer.writerows(kept)
        self._t0 = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        self._images += int(batch["image"].shape[0]) * trainer.world_size
        step = trainer.global_step
        if step % self.every or not trainer.is_global_zero or self._t0 is None:
            return
        if (i + 1) % trainer.accumulate_grad_batches:
            return
        now = time.perf_counter()
        rate = self._images / max(now - self._t0, 1e-9)
        self._t0, self._images = now, 0
        pl_module.log("train/images_per_s", rate, rank_zero_only=True)
        metrics = trainer.callback_metrics
        row: dict[str, Any] = {"step": step, "images_per_s": f"{rate:.3f}"}
        for name, key in _METRICS.items():
            if key in metrics:
                row[name] = f"{float(metrics[key]):.6g}"
        self.last_row = row
        with self.csv_path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=CSV_FIELDS).writerow(row)


def to_grid(images: Tensor, *, nrow: int = 8) -> Image.Image:
    """[N, 3, H, W] in [-1, 1] -> one PIL image, ``nrow`` images per row."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    n, c, h, w = x.shape
    rows = (n + nrow - 1) // nrow
    canvas = torch.zeros(c, rows * h, min(n, nrow) * w, dtype=torch.uint8)
    for i in range(n):
        r, k = divmod(i, nrow)
        canvas[:, r * h : (r + 1) * h, k * w : (k + 1) * w] = x[i]
    return Image.fromarray(canvas.permute(1, 2, 0).numpy())


class SampleGrid(pl.Callback):
    """Every ``every`` steps (and at the end) sample a grid from the EMA weights with fixed prompts
    and seed, save it under ``out_dir/samples/`` and log it to the MLflow run."""

    def __init__(self, out_dir: str | Path, *, every: int = 0) -> None:
        self.out_dir = Path(out_dir) / "samples"
        self.every = every
        self.paths: list[Path] = []

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        was_training = pl_module.training
        pl_module.eval()
        try:
            images = pl_module.sample_grid()  # type: ignore[operator]
        finally:
            pl_module.train(was_training)
        if images is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"step-{trainer.global_step:07d}.png"
        labels = getattr(pl_module, "grid_labels", lambda _: None)(images)
        if labels is None:
            grid = to_grid(images)
        else:  # each tile with its prompt and the oracle's verdict
            pil = [to_grid(img[None], nrow=1) for img in images]
            grid = labelled_grid(pil, labels[0], verdicts=labels[1], cols=min(8, len(pil)))
        with atomic_path(path, fsync=False) as tmp:
            grid.save(tmp, format="PNG")
        self.paths.append(path)
        logger = trainer.logger
        if logger is not None and hasattr(logger, "run_id") and logger.run_id:
            logger.experiment.log_artifact(logger.run_id, str(path), "samples")

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        step = trainer.global_step
        if self.every and step % self.every == 0 and (i + 1) % trainer.accumulate_grad_batches == 0:
            self._log(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        done = self.paths and self.paths[-1].name == f"step-{trainer.global_step:07d}.png"
        if not done:
            self._log(trainer, pl_module)
