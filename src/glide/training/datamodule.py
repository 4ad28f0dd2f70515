"""WebDataset ``LightningDataModule`` over the prepare stage's ``{train,val}/*.tar`` shards.

The training stream is a pure function of ``(seed, data epoch, slot)``, where a *slot* is one
(rank, dataloader worker) pair. Each slot reads its own shards (shards are split across slots
when there are enough of them, else samples are split by index), shuffles them through a seeded
buffer, decodes, resizes, tokenises with caption dropout and collates whole batches inside the
worker. ``resampled`` mode draws shards with replacement and gives every data epoch a fixed
length. Resuming at batch ``b`` restarts each worker exactly where the uninterrupted run would be
(whole data epochs are jumped over without reading), so a resumed run sees the same batches.

Corrupt samples (unreadable tar members, undecodable images, missing captions) are skipped with a
warning naming the key; each batch carries in ``corrupt`` how many were skipped before it.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from glide.data.shapes import to_base_resolution
from glide.text import EMPTY_CAPTION, Tokenizer, get_tokenizer
from glide.training.config import DataConfig

log = logging.getLogger(__name__)

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")


def list_shards(shards_dir: str | Path, split: str) -> list[Path]:
    """The sorted ``*.tar`` shards of one split."""
    return sorted((Path(shards_dir) / split).glob("*.tar"))


def image_to_tensor(img: Image.Image) -> Tensor:
    """RGB PIL image -> float [3, H, W] in [-1, 1]."""
    arr = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.uint8).copy())
    return arr.permute(2, 0, 1).float() / 127.5 - 1.0


def quantize_8bit(x: Tensor) -> Tensor:
    """Round [-1, 1] images to the 256 levels of an 8-bit image, as a sample saved as PNG is.

    The upsampler's low-res input is always 8-bit: at sampling time it is the base model's output
    quantised this way, in training the downsampled training image (also 8-bit).
    """
    return ((x + 1.0) * 127.5).round().clamp(0, 255) / 127.5 - 1.0


def square_resize(img: Image.Image, size: int) -> Image.Image:
    """Centre-crop to a square, then resize with the data stage's filter (PIL bicubic)."""
    w, h = img.size
    if w != h:
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
    return to_base_resolution(img, size)


class _Skipped(Exception):
    """A sample that cannot be used (reported and counted, never raised out of the stream)."""


class ShardStream(IterableDataset):
    """Batches from WebDataset shards; see the module docstring for the determinism contract.

    Args:
        files: shard paths.
        config: the data options.
        seed: stream seed (with the data epoch and slot it seeds every random choice).
        train: shuffle, resample, drop captions and loop forever; else one ordered pass.
        rank, world_size: this process in the data-parallel group.
        start_batch: index of the first batch to produce on this rank (resume position).
    """

    def __init__(
        self,
        files: Sequence[str | Path],
        config: DataConfig,
        *,
        seed: int = 0,
        train: bool = True,
        rank: int = 0,
        world_size: int = 1,
        start_batch: int = 0,
    ) -> None:
        super().__init__()
        if not files:
            raise FileNotFoundError("no shards given to ShardStream")
        self.files = [str(f) for f in files]
        self.config = config
        self.seed = seed
        self.train = train
        self.rank = rank
        self.world_size = world_size
        self.start_batch = start_batch
        self.batch_size = config.batch_size if train else config.val_batch_size
        self._tokenizer: Tokenizer | None = None

    # ------------------------------------------------------------------ stream structure
    def batches_per_epoch(self, n_slots: int) -> int:
        """Batches one slot yields per data epoch in resampled mode."""
        per_slot = self.config.epoch_length // n_slots
        return max(1, per_slot // self.batch_size)

    def _rng(self, epoch: int, slot: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, slot, stream])

    def _raw_samples(self, epoch: int, slot: int, n_slots: int) -> Iterator[dict[str, Any]]:
        """Undecoded samples of one slot for one data epoch (infinite when resampled)."""
        from webdataset.tariterators import tarfile_samples

        def handler(exn: Exception) -> bool:
            self._corrupt += 1
            log.warning("skipping unreadable shard data: %s", exn)
            return True

        if self.train and self.config.resampled:
            rng = self._rng(epoch, slot, 0)
            # Draw from this slot's share of the (epoch-shuffled) shards when there are enough,
            # so ranks and workers see disjoint samples within a data epoch.
            pool = list(self.files)
            np.random.default_rng([self.seed, epoch]).shuffle(pool)
            pool = pool[slot::n_slots] if len(pool) >= n_slots else pool

            def urls() -> Iterator[dict[str, str]]:
                while True:
                    yield {"url": pool[int(rng.integers(len(pool)))]}

            yield from tarfile_samples(urls(), handler=handler)
            return
        order = list(self.files)
        if self.train:  # same order on every slot, so the split below partitions the shards
            np.random.default_rng([self.seed, epoch]).shuffle(order)
        if len(order) >= n_slots:
            mine = [{"url": u} for u in order[slot::n_slots]]
            yield from tarfile_samples(mine, handler=handler)
            return
        # Fewer shards than slots: every slot reads all of them and keeps every n-th sample.
        for i, sample in enumerate(tarfile_samples([{"url": u} for u in order], handler=handler)):
            if i % n_slots == slot:
                yield sample

    def _shuffled(self, samples: Iterator[dict[str, Any]], rng: np.random.Generator) -> Iterator:
        size = self.config.shuffle_buffer
        if not self.train or size <= 1:
            yield from samples
            return
        buf: list[dict[str, Any]] = []
        for s in samples:
            buf.append(s)
            if len(buf) >= size:
                j = int(rng.integers(len(buf)))
                buf[j], buf[-1] = buf[-1], buf[j]
                yield buf.pop()
        while buf:
            j = int(rng.integers(len(buf)))
            buf[j], buf[-1] = buf[-1], buf[j]
            yield buf.pop()

    # ------------------------------------------------------------------ decoding
    def _decode(self, raw: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        key = raw.get("__key__", "?")
        ext = next((e for e in IMAGE_EXTS if e in raw), None)
        if ext is None or "txt" not in raw:
            raise _Skipped(f"sample {key} lacks an image or a caption (has {sorted(raw)})")
        try:
            img = Image.open(io.BytesIO(raw[ext]))
            if img.format == "JPEG":
                # Let the decoder skip what the resize throws away: a 256 px JPEG read for a
                # 32 px model decodes at 64 (DCT scaling), ~3x faster, then resizes as usual;
                # the result is within ~3 levels of a full decode (mean 0.2) on the shapes world.
                size = 2 * self.config.image_size
                img.draft("RGB", (size, size))
            img.load()
            caption = raw["txt"].decode("utf-8").strip()
        except Exception as exn:  # any decoder failure means a corrupt sample
            raise _Skipped(f"sample {key}: {type(exn).__name__}: {exn}") from None
        cfg = self.config
        # Draw every random number unconditionally so the stream never depends on the outcome.
        drop = rng.random() < cfg.caption_dropout if self.train else False
        img = square_resize(img.convert("RGB"), cfg.image_size)
        out: dict[str, Any] = {"key": key, "caption": EMPTY_CAPTION if drop else caption}
        if cfg.low_res_size:
            low = to_base_resolution(img, cfg.low_res_size)  # uint8: already 8-bit quantised
            hr, lr = image_to_tensor(img), image_to_tensor(low)
            if cfg.crop_size:
                r = cfg.image_size // cfg.low_res_size
                n_pos = (cfg.image_size - cfg.crop_size) // r + 1
                oy, ox = (int(v) for v in rng.integers(n_pos, size=2))
                c = cfg.crop_size
                hr = hr[:, oy * r : oy * r + c, ox * r : ox * r + c]
                lr = lr[:, oy : oy + c // r, ox : ox + c // r]
            out.update(image=hr, low_res=lr)
        else:
            out["image"] = image_to_tensor(img)
        return out

    def _collate(self, items: list[dict[str, Any]], corrupt: int, epoch: int) -> dict[str, Any]:
        assert self._tokenizer is not None
        captions = [it["caption"] for it in items]
        tokens, mask = self._tokenizer.batch(captions, self.config.text_ctx)
        batch: dict[str, Any] = {
            "image": torch.stack([it["image"] for it in items]),
            "tokens": tokens,
            "mask": mask,
            "key": [it["key"] for it in items],
            "caption": captions,
            "corrupt": torch.tensor(corrupt),
            "epoch": torch.tensor(epoch),
        }
        if "low_res" in items[0]:
            batch["low_res"] = torch.stack([it["low_res"] for it in items])
        return batch

    def _epoch_batches(self, epoch: int, slot: int, n_slots: int) -> Iterator[dict[str, Any]]:
        raw = self._raw_samples(epoch, slot, n_slots)
        rng = self._rng(epoch, slot, 1)
        limit = self.batches_per_epoch(n_slots) if self.train and self.config.resampled else None
        items: list[dict[str, Any]] = []
        made = 0
        for sample in self._shuffled(raw, rng):
            try:
                items.append(self._decode(sample, rng))
            except _Skipped as exn:
                self._corrupt += 1
                log.warning("skipping corrupt sample: %s", exn)
                continue
            if len(items) == self.batch_size:
                yield self._collate(items, self._take_corrupt(), epoch)
                items, made = [], made + 1
                if limit is not None and made >= limit:
                    return
        if items and not self.train:
            yield self._collate(items, self._take_corrupt(), epoch)

    def _take_corrupt(self) -> int:
        n, self._corrupt = self._corrupt, 0
        return n

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self._tokenizer is None:
            self._tokenizer = get_tokenizer(self.config.tokenizer, self.config.tokenizer_path)
        self._corrupt = 0
        info = get_worker_info()
        n_workers, worker = (info.num_workers, info.id) if info else (1, 0)
        # The DataLoader takes batch k from worker k % n_workers: after a resume at batch s,
        # worker w must continue the stream of logical worker (w + s) % n_workers.
        logical = (worker + self.start_batch) % n_workers
        skip = (self.start_batch - logical + n_workers - 1) // n_workers
        slot = self.rank * n_workers + logical
        n_slots = self.world_size * n_workers
        epoch = 0
        if self.train and self.config.resampled:
            epoch, skip = divmod(skip, self.batches_per_epoch(n_slots))
        while True:
            made = 0
            for batch in self._epoch_batches(epoch, slot, n_slots):
                made += 1
                if skip:
                    skip -= 1
                    continue
                yield batch
            if not self.train:
                return
            if made == 0:
                raise RuntimeError(
                    f"data slot {slot}/{n_slots} got no complete batch of {self.batch_size} from "
                    f"{len(self.files)} shard(s): lower data.batch_size or add data"
                )
            epoch += 1


class ShardDataModule(pl.LightningDataModule):
    """Train/val dataloaders over ``<shards_dir>/{train,val}``; resumes at the trainer's step."""

    def __init__(self, config: DataConfig, *, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        self.seed = seed

    def _files(self, split: str) -> list[Path]:
        files = list_shards(self.config.shards_dir, split)
        if not files:
            raise FileNotFoundError(
                f"no {split} shards under {Path(self.config.shards_dir) / split}: run the "
                "prepare stage (python pipelines/prepare.py) or set data.shards_dir"
            )
        return files

    def _position(self) -> tuple[int, int, int]:
        """``(rank, world_size, first batch)`` from the attached trainer (restored on resume)."""
        trainer = self.trainer
        if trainer is None:
            return 0, 1, 0
        start = trainer.global_step * trainer.accumulate_grad_batches
        return trainer.global_rank, trainer.world_size, start

    def train_stream(self) -> ShardStream:
        rank, world, start = self._position()
        return ShardStream(
            self._files("train"),
            self.config,
            seed=self.seed,
            train=True,
            rank=rank,
            world_size=world,
            start_batch=start,
        )

    def _loader(self, stream: ShardStream) -> DataLoader:
        workers = self.config.num_workers
        return DataLoader(
            stream,
            batch_size=None,  # the stream collates whole batches in the workers
            num_workers=workers,
            persistent_workers=False,
            prefetch_factor=4 if workers else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_stream())

    def val_dataloader(self) -> DataLoader:
        stream = ShardStream(self._files("val"), self.config, seed=self.seed, train=False)
        return self._loader(stream)

    def state_dict(self) -> dict[str, Any]:
        """The data position saved in every checkpoint (resume recomputes it from the step)."""
        _, world, start = self._position()
        return {
            "batches": start,
            "seed": self.seed,
            "world_size": world,
            "num_workers": max(1, self.config.num_workers),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("num_workers") not in (None, max(1, self.config.num_workers)):
            log.warning(
                "resuming with %s data workers instead of %s: the data order will differ",
                max(1, self.config.num_workers),
                state_dict["num_workers"],
            )


def samples_per_epoch(config: DataConfig, world_size: int = 1) -> int:
    """Samples per data epoch actually produced in resampled mode (whole batches per slot)."""
    n_slots = world_size * max(1, config.num_workers)
    per_slot = max(1, config.epoch_length // n_slots // config.batch_size)
    return per_slot * n_slots * config.batch_size


__all__ = [
    "ShardDataModule",
    "ShardStream",
    "image_to_tensor",
    "list_shards",
    "quantize_8bit",
    "samples_per_epoch",
    "square_resize",
]
