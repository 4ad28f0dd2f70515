"""Preparation in parts: a Hydra multirun on the local joblib launcher, the merge, and the
duplicates that only the merge can see (a copy whose original fell into another part)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import webdataset as wds
from PIL import ImageFilter

from glide.data.filters import FilterConfig
from glide.data.part_dedup import remove_keys
from glide.data.prepare import PrepareConfig, merge_parts, reset_outputs, run_part
from glide.data.shards import Sample, ShardWriter, split_of
from glide.data.sources import FolderSource
from tests.helpers import encode, pattern_image
from tests.test_pipeline_prepare import _env, _project_copy

PARTS = 4
COMMON = [
    "data.options.num_records=160",
    "prepare.shard_size=20",
    "prepare.progress=false",
    f"prepare.num_parts={PARTS}",
]


def _stage(proj: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, "pipelines/prepare.py", *args],
        cwd=proj,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out


def _digests(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_joblib_multirun_then_merge_equals_sequential_parts(tmp_path: Path) -> None:
    par, seq = _project_copy(tmp_path / "par"), _project_copy(tmp_path / "seq")
    # Parallel: the parts as one multirun on joblib (2 at a time, each with its own pool of 2
    # filter processes, which must work inside loky's workers), then the merge.
    env = _env(tmp_path / "par")
    run = _stage(
        par,
        env,
        "--multirun",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        *COMMON,
        "prepare.num_workers=2",
        f"prepare.part_index=range({PARTS})",
    )
    assert "Joblib.Parallel(n_jobs=2" in run.stdout and f"launching {PARTS} jobs" in run.stdout
    merged = _stage(par, env, *COMMON, "merge_only=true")
    # Sequential: each part as its own process (the shell loop), then the merge.
    env = _env(tmp_path / "seq")
    for i in range(PARTS):
        _stage(seq, env, *COMMON, "prepare.num_workers=1", f"prepare.part_index={i}")
    _stage(seq, env, *COMMON, "merge_only=true")

    shards = _digests(par / "data" / "shards")
    assert sum(name.endswith(".tar") for name in shards) >= 2 * PARTS
    assert shards == _digests(seq / "data" / "shards")  # tars, part stats and hashes
    assert _digests(par / "data" / "eval") == _digests(seq / "data" / "eval")
    assert _digests(par / "reports") == _digests(seq / "reports")
    stats = json.loads((par / "metrics" / "prepare.json").read_text())
    assert stats == json.loads((seq / "metrics" / "prepare.json").read_text())
    assert not {"seconds", "records_per_s"} & set(stats)  # a merge alone has no timing
    assert stats["total"] == 160 and stats["num_parts"] == PARTS
    # This seed plants a near-duplicate whose original fell into the part before.
    cross = stats["cross_part_duplicates"]
    assert cross == {"found": 1, "exact": 0, "near": 1, "removed": 0}
    assert "1 duplicate(s) across parts (0 exact, 1 near)" in merged.stdout
    # Hydra wrote its logs under .hydra-runs/ only and left the working directory alone.
    assert {p.name for p in par.iterdir()} == {p.name for p in seq.iterdir()} | {".hydra-runs"}
    logs = list((par / ".hydra-runs" / "prepare").glob("multirun-*/*/prepare.log"))
    assert len(logs) == PARTS


def test_part_and_merge_errors_are_one_line(tmp_path: Path) -> None:
    proj = _project_copy(tmp_path / "proj")
    small = ["data.options.num_records=8", "prepare.progress=false", "prepare.num_parts=2"]

    def fail(*args: str, flag: tuple[str, ...] = ()) -> str:
        out = subprocess.run(
            [sys.executable, "pipelines/prepare.py", *flag, *small, *args],
            cwd=proj,
            env=_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
        return out.stderr

    # A part failing in a launcher's worker: its overrides, then one line.
    err = fail(
        "hydra/launcher=joblib", "hydra.launcher.n_jobs=1", "prepare.part_index=2", flag=("-m",)
    )
    assert "prepare.part_index=2']\nprepare: part_index 2 not in [0, num_parts=2)\n" in err
    # A merge before its parts: the part to run, and no MLflow run started.
    err = fail("merge_only=true")
    assert err.strip() == (
        "prepare: part 0 of 2 has not finished: data/shards/stats/part-000.json is missing "
        "(run the stage with prepare.part_index=0)"
    )
    assert not (tmp_path / "mlflow.db").exists()


@pytest.fixture()
def folder_with_copies(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """Twelve images in two parts of six; the second part ends with an exact copy (in val) and
    a re-encoded copy (in train) of two images of the first part."""
    root = tmp_path / "src"
    root.mkdir()

    def put(name: str, data: bytes) -> str:
        (root / name).write_bytes(data)
        (root / name).with_suffix(".txt").write_text(f"caption of {name}")
        return f"folder-{name.rsplit('.', 1)[0]}"

    original = pattern_image(1, (128, 128))
    smooth = pattern_image(2, (128, 128)).filter(ImageFilter.GaussianBlur(2))
    put("a0.png", encode(original))
    put("a1.png", encode(smooth))
    for i in range(8):
        put(f"b{i}.png", encode(pattern_image(10 + i, (128, 128))))

    def name_in(split: str, stem: str) -> str:  # deterministic: the split is a hash of the key
        return next(
            f"{stem}{n}" for n in range(1000) if split_of(f"folder-{stem}{n}", 0.25) == split
        )

    exact = put(f"{name_in('val', 'y')}.bmp", encode(original, "BMP"))
    near = put(
        f"{name_in('train', 'z')}.jpg", encode(smooth.resize((120, 120)), "JPEG", quality=75)
    )
    return root, {"exact": exact, "near": near}


def _prep(root: Path, out: Path, parts: int, **kw: object) -> PrepareConfig:
    return PrepareConfig(
        shards_dir=str(out / "shards"),
        eval_dir=str(out / "eval"),
        val_fraction=0.25,
        shard_size=4,
        num_workers=1,
        progress=False,
        num_parts=parts,
        **kw,  # type: ignore[arg-type]
    )


FILTERS = FilterConfig(image_format="png")


def _run_parts(root: Path, cfg: PrepareConfig, only: int | None = None) -> None:
    for i in range(cfg.num_parts) if only is None else [only]:
        part = PrepareConfig(**{**cfg.__dict__, "part_index": i})
        run_part(FolderSource(str(root)), FILTERS, part)


def _keys(out: Path) -> set[str]:
    shards = sorted(str(p) for p in (out / "shards").rglob("*.tar"))
    return {s["__key__"] for s in wds.WebDataset(shards, shardshuffle=False)}


def _coco_keys(out: Path) -> set[str]:
    doc = json.loads((out / "eval" / "captions.json").read_text())
    assert {a["image_id"] for a in doc["annotations"]} == {im["id"] for im in doc["images"]}
    assert [im["id"] for im in doc["images"]] == list(range(1, len(doc["images"]) + 1))
    return {im["file_name"].rsplit(".", 1)[0] for im in doc["images"]}


def test_merge_reports_cross_part_duplicates_and_removes_them_on_request(
    folder_with_copies: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    root, copies = folder_with_copies
    single = _prep(root, tmp_path / "one", 1)
    reset_outputs(single)
    _run_parts(root, single)
    whole = merge_parts(single, filters=FILTERS)
    assert whole["dropped"] == {"exact_duplicate": 1, "near_duplicate": 1}  # one part sees both
    assert whole["cross_part_duplicates"]["found"] == 0
    # A single part's outputs are as before: no hashes kept, no cross-part report.
    assert sorted(p.name for p in (tmp_path / "one" / "shards" / "stats").iterdir()) == [
        "part-000.json"
    ]

    out = tmp_path / "two"
    cfg = _prep(root, out, 2)
    _run_parts(root, cfg)
    stats = merge_parts(cfg, filters=FILTERS)
    assert stats["dropped"] == {}  # each copy's original is in the other part
    assert stats["cross_part_duplicates"] == {"found": 2, "exact": 1, "near": 1, "removed": 0}
    report = json.loads((out / "shards" / "stats" / "cross_part_duplicates.json").read_text())
    assert [
        (e["key"], e["reason"], e["duplicate_of"], e["part"], e["duplicate_of_part"])
        for e in report
    ] == [
        (copies["exact"], "exact_duplicate", "folder-a0", 1, 0),
        (copies["near"], "near_duplicate", "folder-a1", 1, 0),
    ]
    assert set(copies.values()) <= _keys(out) and copies["exact"] in _coco_keys(out)

    dropping = _prep(root, out, 2, drop_cross_part_duplicates=True)
    stats = merge_parts(dropping, filters=FILTERS)
    assert stats["cross_part_duplicates"]["removed"] == 2
    for key in ("kept", "dropped", "splits", "total"):
        assert stats[key] == whole[key], key  # here: what one part over everything keeps
    assert _keys(out) == _keys(tmp_path / "one")
    assert _coco_keys(out) == _coco_keys(tmp_path / "one")
    assert not list((out / "eval" / "images").glob(f"{copies['exact']}.*"))
    shards_after = _digests(out / "shards")

    # Removal sticks (the stats describe the shards as they are), and repeats nothing ...
    again = merge_parts(cfg, filters=FILTERS)
    assert again["kept"] == whole["kept"] and again["cross_part_duplicates"]["removed"] == 2
    assert _digests(out / "shards") == shards_after
    # ... until the part is run again, which brings its samples back.
    _run_parts(root, cfg, only=1)
    restored = merge_parts(cfg, filters=FILTERS)
    assert restored["cross_part_duplicates"]["removed"] == 0
    assert set(copies.values()) <= _keys(out)


def test_merge_names_the_part_without_hashes_or_of_another_cut(
    folder_with_copies: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    root, _ = folder_with_copies
    cfg = _prep(root, tmp_path, 2)
    _run_parts(root, cfg)
    (tmp_path / "shards" / "stats" / "part-001.hashes.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"part 1 of 2 has no hashes .*part_index=1"):
        merge_parts(cfg, filters=FILTERS)
    with pytest.raises(ValueError, match="part 0 of 1 was run with num_parts=2"):
        merge_parts(_prep(root, tmp_path, 1), filters=FILTERS)


def test_removed_samples_leave_the_bytes_the_writer_would_have_written(tmp_path: Path) -> None:
    samples = [
        Sample(f"k{i}", encode(pattern_image(i, (16, 16))), "png", f"cap {i}", {"i": i})
        for i in range(7)
    ]

    def write(folder: str, keep: list[int]) -> list[Path]:
        with ShardWriter(tmp_path / folder, max_count=4) as writer:
            for i in keep:
                writer.write(samples[i])
        return writer.paths

    shards = write("full", list(range(7)))  # k0-k3, k4-k6
    assert remove_keys(shards, {"k1", "k5", "k6", "absent"}) == 3
    assert shards[0].read_bytes() == write("a", [0, 2, 3])[0].read_bytes()
    assert shards[1].read_bytes() == write("b", [4])[0].read_bytes()
    assert remove_keys(shards, {"k1"}) == 0  # a repeated removal changes nothing
