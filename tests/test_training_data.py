"""The training datamodule: shard splitting, caption dropout, corrupt samples, exact resume."""

from __future__ import annotations

import dataclasses
import io
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from glide.data.shapes import make_example, to_base_resolution
from glide.data.shards import Sample, ShardWriter
from glide.training import DataConfig, ShardStream, quantize_8bit
from glide.training.datamodule import image_to_tensor, list_shards, square_resize


def write_shards(
    root: Path, *, n: int = 48, per_shard: int = 12, size: int = 64, val: int = 8, seed: int = 0
) -> Path:
    """``root/{train,val}/*.tar`` of rendered shapes examples (PNG, caption, meta)."""
    for split, count, offset in (("train", n, 0), ("val", val, 10_000)):
        with ShardWriter(root / split, max_count=per_shard) as writer:
            for i in range(count):
                img, caption, _ = make_example(seed, offset + i, size=size)
                buf = io.BytesIO()
                img.save(buf, format="PNG")
                key = f"{split}-{i:05d}"
                writer.write(Sample(key, buf.getvalue(), "png", caption, {"index": i}))
    return root


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shards(tmp_path_factory.mktemp("shards"))


def small_data(shards_dir: Path, **kw: object) -> DataConfig:
    base = DataConfig(
        shards_dir=str(shards_dir),
        image_size=32,
        batch_size=4,
        num_workers=0,
        text_ctx=16,
        epoch_length=48,
        shuffle_buffer=8,
        val_batch_size=4,
    )
    return dataclasses.replace(base, **kw)


def _keys(batches: list[dict]) -> list[str]:
    return [k for b in batches for k in b["key"]]


def test_batches_have_the_model_inputs(shards: Path) -> None:
    cfg = small_data(shards)
    batch = next(iter(ShardStream(list_shards(shards, "train"), cfg)))
    assert batch["image"].shape == (4, 3, 32, 32)
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert batch["tokens"].shape == (4, 16) and batch["mask"].dtype == torch.bool
    assert len(batch["key"]) == 4 and int(batch["corrupt"]) == 0


def test_shards_are_split_across_ranks_and_workers(shards: Path) -> None:
    cfg = small_data(shards, resampled=False, num_workers=2)
    files = list_shards(shards, "train")
    assert len(files) == 4
    seen = []
    for rank in range(2):
        stream = ShardStream(files, cfg, rank=rank, world_size=2)
        loader = DataLoader(stream, batch_size=None, num_workers=2)
        it = iter(loader)
        # One data epoch per slot: 4 slots x 1 shard x 12 samples = 3 batches each.
        seen.append(_keys([next(it) for _ in range(6)]))
    assert all(len(s) == len(set(s)) == 24 for s in seen)
    assert not set(seen[0]) & set(seen[1])
    assert len(set(seen[0]) | set(seen[1])) == 48


def test_sample_split_when_fewer_shards_than_slots(shards: Path) -> None:
    cfg = small_data(shards, resampled=False)
    files = list_shards(shards, "train")[:1]
    per_rank = [
        _keys(list(ShardStream(files, cfg, rank=r, world_size=3, train=False))) for r in range(3)
    ]
    flat = [k for keys in per_rank for k in keys]
    assert len(flat) == len(set(flat)) == 12


def test_caption_dropout_rate(tmp_path: Path) -> None:
    root = write_shards(tmp_path, n=200, per_shard=100, size=32, val=1)
    cfg = small_data(root, caption_dropout=0.3, epoch_length=200, batch_size=10)
    stream = ShardStream(list_shards(root, "train"), cfg)
    it = iter(stream)
    batches = [next(it) for _ in range(20)]
    captions = [c for b in batches for c in b["caption"]]
    rate = sum(c == "" for c in captions) / len(captions)
    assert 0.2 <= rate <= 0.4, rate
    empty_masks = torch.cat([b["mask"][[c == "" for c in b["caption"]]] for b in batches])
    assert not empty_masks.any()  # the empty caption is all padding
    none = small_data(root, caption_dropout=0.0, epoch_length=200, batch_size=10)
    assert all(
        c for b in ShardStream(list_shards(root, "train"), none, train=False) for c in b["caption"]
    )


def _png(index: int) -> bytes:
    img, _, _ = make_example(0, index, size=32)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_corrupt_samples_are_skipped_counted_and_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    members = [
        ("ok-0.png", _png(0)),
        ("ok-0.txt", b"a red circle"),
        ("broken-1.png", b"\x89PNG not really"),
        ("broken-1.txt", b"a blue square"),
        ("nocap-2.png", _png(2)),
        ("ok-3.png", _png(3)),
        ("ok-3.txt", b"a green star"),
    ]
    (tmp_path / "train").mkdir()
    shard = tmp_path / "train" / "000000.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    cfg = small_data(tmp_path, resampled=False, val_batch_size=1, shuffle_buffer=0)
    with caplog.at_level(logging.WARNING, logger="glide.training.datamodule"):
        batches = list(ShardStream([shard], cfg, train=False))
    assert [b["key"][0] for b in batches] == ["ok-0", "ok-3"]
    assert [int(b["corrupt"]) for b in batches] == [0, 2]
    assert "broken-1" in caplog.text and "nocap-2" in caplog.text


def test_truncated_shard_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = write_shards(tmp_path, n=8, per_shard=4, size=32, val=1)
    files = list_shards(root, "train")
    data = files[0].read_bytes()
    files[0].write_bytes(data[: len(data) // 2 + 100])  # cut mid-member
    cfg = small_data(root, resampled=False, val_batch_size=1)
    with caplog.at_level(logging.WARNING):
        batches = list(ShardStream(files, cfg, train=False))
    keys = [b["key"][0] for b in batches]
    assert set(keys) >= {f"train-{i:05d}" for i in range(4, 8)}
    assert len(keys) < 8


@pytest.mark.parametrize("resampled", [True, False])
def test_resume_position_continues_the_stream(shards: Path, resampled: bool) -> None:
    cfg = small_data(shards, num_workers=2, resampled=resampled, epoch_length=32)
    files = list_shards(shards, "train")

    def run(start: int, n: int) -> list[list[str]]:
        loader = DataLoader(
            ShardStream(files, cfg, seed=3, start_batch=start), batch_size=None, num_workers=2
        )
        it = iter(loader)
        return [next(it)["key"] for _ in range(n)]

    full = run(0, 14)  # crosses data epochs (resampled: 4 batches per slot per epoch)
    assert run(5, 9) == full[5:]
    assert run(8, 6) == full[8:]


def test_upsampler_low_res_is_the_8bit_downsample(shards: Path) -> None:
    cfg = small_data(shards, image_size=64, low_res_size=16, crop_size=32, resampled=False)
    batch = next(iter(ShardStream(list_shards(shards, "train"), cfg, train=False)))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["low_res"].shape == (4, 3, 8, 8)
    assert torch.equal(quantize_8bit(batch["low_res"]), batch["low_res"])
    # Uncropped: low_res is exactly the bicubic downsample of the high-res training image.
    full = small_data(shards, image_size=64, low_res_size=16, resampled=False)
    b = next(iter(ShardStream(list_shards(shards, "train"), full, train=False)))
    img, _, _ = make_example(0, 0, size=64)
    hr = square_resize(img, 64)
    assert torch.equal(b["image"][0], image_to_tensor(hr))
    assert torch.equal(b["low_res"][0], image_to_tensor(to_base_resolution(hr, 16)))
    # The crop is aligned: it sits inside the full image at a multiple of the 4x ratio.
    hits = [
        (y, x)
        for y in range(0, 33, 4)
        for x in range(0, 33, 4)
        if torch.equal(full_crop := b["image"][0][:, y : y + 32, x : x + 32], batch["image"][0])
        and torch.equal(
            b["low_res"][0][:, y // 4 : y // 4 + 8, x // 4 : x // 4 + 8], batch["low_res"][0]
        )
    ]
    del full_crop
    assert len(hits) == 1


def test_quantize_8bit_matches_png_round_trip() -> None:
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    arr = ((x[0] + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
    via_png = image_to_tensor(Image.fromarray(np.ascontiguousarray(arr)))
    assert torch.allclose(quantize_8bit(x)[0], via_png, atol=1e-6)
