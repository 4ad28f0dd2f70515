"""Shard writer: deterministic bytes, size limits, and a round trip through webdataset."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import webdataset as wds

from glide.data.shards import Sample, ShardWriter, split_of
from tests.helpers import encode, pattern_image


def _samples(n: int) -> list[Sample]:
    return [
        Sample(
            f"k{i:04d}",
            encode(pattern_image(i, (32, 32))),
            "png",
            f"caption {i}",
            {"source": "test", "i": i},
        )
        for i in range(n)
    ]


def _write(directory: Path, samples: list[Sample], size: int) -> list[Path]:
    with ShardWriter(directory, max_count=size) as writer:
        for s in samples:
            writer.write(s)
    return writer.paths


def test_shard_sizes_and_headers(tmp_path: Path) -> None:
    paths = _write(tmp_path, _samples(7), size=3)
    assert [p.name for p in paths] == ["000000.tar", "000001.tar", "000002.tar"]
    with tarfile.open(paths[0]) as tf:
        members = tf.getmembers()
    assert len(members) == 9
    assert {(m.mtime, m.uid, m.gid, m.uname, m.mode) for m in members} == {(0, 0, 0, "", 0o644)}
    assert not list(tmp_path.glob("*.tmp"))


def test_identical_input_identical_bytes(tmp_path: Path) -> None:
    a = _write(tmp_path / "a", _samples(5), size=2)
    b = _write(tmp_path / "b", _samples(5), size=2)
    digest = lambda ps: [hashlib.sha256(p.read_bytes()).hexdigest() for p in ps]  # noqa: E731
    assert digest(a) == digest(b)


def test_webdataset_round_trip(tmp_path: Path) -> None:
    samples = _samples(5)
    paths = _write(tmp_path, samples, size=2)
    ds = wds.WebDataset([str(p) for p in paths], shardshuffle=False).decode("pil")
    got = list(ds)
    assert [s["__key__"] for s in got] == [s.key for s in samples]
    assert got[3]["txt"] == "caption 3"
    assert got[3]["json"] == {"source": "test", "i": 3}
    assert got[3]["png"].size == (32, 32)
    assert list(got[3]["png"].getdata()) == list(pattern_image(3, (32, 32)).getdata())
    assert json.loads(json.dumps(got[0]["json"]))["i"] == 0


def test_split_is_stable_and_near_requested_fraction() -> None:
    keys = [f"key-{i}" for i in range(4000)]
    splits = [split_of(k, 0.1) for k in keys]
    assert splits == [split_of(k, 0.1) for k in keys]
    assert 0.08 < splits.count("val") / len(keys) < 0.12
    assert split_of("x", 0.0) == "train"
