"""The data stage end to end on a folder with one planted defect of every kind."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image, ImageFilter

from glide.data.filters import FilterConfig
from glide.data.prepare import PrepareConfig, merge_parts, reset_outputs, run_part
from glide.data.sources import FolderSource
from tests.helpers import encode, pattern_image

EXPECTED_DROPS = {
    "not_image": 1,
    "corrupt_image": 2,
    "too_small": 1,
    "bad_aspect": 1,
    "empty_caption": 2,
    "caption_too_long": 1,
    "blocklist": 1,
    "exact_duplicate": 2,
    "near_duplicate": 1,
}
N_CLEAN = 25  # 24 blocky patterns + 1 smooth image (the near-duplicate original)


@pytest.fixture(scope="module")
def messy_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("messy")

    def put(name: str, data: bytes, caption: str | None = "a clean caption") -> None:
        (root / name).write_bytes(data)
        if caption is not None:
            (root / name).with_suffix(".txt").write_text(caption)

    for i in range(N_CLEAN - 1):
        put(f"clean{i:02d}.png", encode(pattern_image(100 + i, (128, 128))), f"clean image {i}")
    smooth = pattern_image(300, (128, 128)).filter(ImageFilter.GaussianBlur(2))
    put("clean99.png", encode(smooth), "a smooth image")
    put("clean90.png", encode(pattern_image(200, (128, 128)).convert("L")), "gray kept")
    put("clean91.png", encode(pattern_image(201, (128, 128)).convert("RGBA")), "rgba kept")
    put("clean92.jpg", encode(pattern_image(202, (128, 128)).convert("CMYK"), "JPEG"), "cmyk")
    put("d_html.jpg", b"<!doctype html><title>oops</title>")
    put("d_trunc1.jpg", encode(pattern_image(1, (128, 128)), "JPEG")[:400])
    put("d_trunc2.png", encode(pattern_image(2, (128, 128)))[:-100])
    put("d_tiny.png", encode(pattern_image(3, (20, 20))))
    put("d_wide.png", encode(pattern_image(4, (300, 64))))
    put("d_nocap.png", encode(pattern_image(5, (128, 128))), None)
    put("d_wscap.png", encode(pattern_image(6, (128, 128))), " \t \n")
    put("d_longcap.png", encode(pattern_image(7, (128, 128))), "word " * 200)
    put("d_block.png", encode(pattern_image(8, (128, 128))), "a forbiddenword here")
    # Duplicates sort after their originals ("e" > "c"), so the copies are the ones dropped.
    put("e_dup1.png", encode(pattern_image(100, (128, 128))), "same pixels")
    put("e_dup2.bmp", encode(pattern_image(101, (128, 128)), "BMP"), "same pixels, other format")
    reenc = smooth.resize((120, 120), Image.Resampling.LANCZOS)
    put("e_near.jpg", encode(reenc, "JPEG", quality=75), "re-encoded copy")
    (root / "blocklist.txt").write_text("# test list\nforbiddenword\n")
    return root


def _configs(root: Path, out: Path, **prep) -> tuple[FilterConfig, PrepareConfig]:
    filters = FilterConfig(
        image_format="png",
        min_side=64,
        blocklist_files=(str(root / "blocklist.txt"),),
        max_caption_chars=300,
    )
    prep_cfg = PrepareConfig(
        shards_dir=str(out / "shards"),
        eval_dir=str(out / "eval"),
        val_fraction=0.25,
        shard_size=8,
        progress=False,
        **prep,
    )
    return filters, prep_cfg


def _run(root: Path, out: Path, **prep) -> dict:
    filters, cfg = _configs(root, out, **prep)
    reset_outputs(cfg)
    for part in range(cfg.num_parts):
        part_cfg = PrepareConfig(**{**cfg.__dict__, "part_index": part})
        run_part(FolderSource(str(root)), filters, part_cfg)
    return merge_parts(cfg)


def _tar_digests(out: Path) -> dict[str, str]:
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((out / "shards").rglob("*.tar"))
    }


def test_every_defect_counted_under_its_reason(messy_folder: Path, tmp_path: Path) -> None:
    stats = _run(messy_folder, tmp_path, num_workers=1)
    total = N_CLEAN + 3 + sum(EXPECTED_DROPS.values())
    assert stats["total"] == total
    assert stats["dropped"] == EXPECTED_DROPS
    assert stats["kept"] == N_CLEAN + 3
    assert stats["splits"]["train"] + stats["splits"]["val"] == stats["kept"]
    assert stats["splits"]["val"] > 0
    assert stats["converted"] == {"mode_CMYK": 1, "mode_L": 1, "mode_RGBA": 1}


def test_shards_and_coco_export_agree(messy_folder: Path, tmp_path: Path) -> None:
    stats = _run(messy_folder, tmp_path, num_workers=1)
    train = sorted((tmp_path / "shards" / "train").glob("*.tar"))
    got = list(wds.WebDataset([str(p) for p in train], shardshuffle=False).decode("pil"))
    assert len(got) == stats["splits"]["train"]
    sample = got[0]
    assert sample["png"].mode == "RGB"
    assert set(sample["json"]) >= {"source", "original_size", "checks"}
    assert sample["json"]["checks"][-1] == "dedup"
    coco = json.loads((tmp_path / "eval" / "captions.json").read_text())
    assert len(coco["images"]) == stats["splits"]["val"]
    first = coco["images"][0]
    img = Image.open(tmp_path / "eval" / "images" / first["file_name"])
    assert img.size == (first["width"], first["height"])
    assert {a["image_id"] for a in coco["annotations"]} == {im["id"] for im in coco["images"]}


def test_deterministic_bytes_across_runs_and_worker_counts(
    messy_folder: Path, tmp_path: Path
) -> None:
    _run(messy_folder, tmp_path / "a", num_workers=1)
    _run(messy_folder, tmp_path / "b", num_workers=2)
    a, b = _tar_digests(tmp_path / "a"), _tar_digests(tmp_path / "b")
    assert a and a == {k: v for k, v in b.items()}
    ca = (tmp_path / "a" / "eval" / "captions.json").read_bytes()
    assert ca == (tmp_path / "b" / "eval" / "captions.json").read_bytes()


def test_parts_merge_to_the_same_counts(messy_folder: Path, tmp_path: Path) -> None:
    whole = _run(messy_folder, tmp_path / "one", num_workers=1)
    parts = _run(messy_folder, tmp_path / "three", num_workers=1, num_parts=3)
    assert parts["total"] == whole["total"]
    # Duplicates whose original fell into another part survive; everything else agrees.
    dup = whole["dropped"]["exact_duplicate"] + whole["dropped"]["near_duplicate"]
    assert whole["kept"] <= parts["kept"] <= whole["kept"] + dup
    assert parts["num_parts"] == 3 and parts["shards"]["train"] >= 3
    coco = json.loads((tmp_path / "three" / "eval" / "captions.json").read_text())
    assert [im["id"] for im in coco["images"]] == list(range(1, len(coco["images"]) + 1))


def test_merge_reports_missing_part(messy_folder: Path, tmp_path: Path) -> None:
    filters, cfg = _configs(messy_folder, tmp_path, num_parts=2, num_workers=1)
    run_part(FolderSource(str(messy_folder)), filters, cfg)
    with pytest.raises(FileNotFoundError, match="part 1 of 2"):
        merge_parts(cfg)


def test_bad_part_index_rejected() -> None:
    with pytest.raises(ValueError, match="part_index"):
        PrepareConfig(num_parts=2, part_index=2)


def test_kept_pixels_survive_unchanged(messy_folder: Path, tmp_path: Path) -> None:
    _run(messy_folder, tmp_path, num_workers=1)
    shards = sorted((tmp_path / "shards").rglob("*.tar"))
    by_key = {s["__key__"]: s for s in wds.WebDataset([str(p) for p in shards], shardshuffle=False)}
    data = by_key["folder-clean05"]["png"]
    ours = np.asarray(Image.open(io.BytesIO(data)))
    assert np.array_equal(ours, np.asarray(pattern_image(105, (128, 128))))


def test_shapes_scrape_every_defect_caught_exactly(tmp_path: Path) -> None:
    """On the built-in raw scrape, each planted defect is dropped under its own reason and
    nothing else is dropped: the filters' counts equal the ground truth exactly."""
    from collections import Counter

    from glide.data.records import CONVERT_KINDS, DROP_KINDS
    from glide.data.scrape import ScrapeConfig, make_raw_record
    from glide.data.sources import ShapesSource

    scrape = ScrapeConfig(seed=3, num_records=400, defect_fraction=0.45, convert_fraction=0.2)
    truth = Counter(make_raw_record(scrape, i).defect for i in range(scrape.num_records))
    cfg = PrepareConfig(
        shards_dir=str(tmp_path / "shards"),
        eval_dir=str(tmp_path / "eval"),
        progress=False,
        num_workers=1,
    )
    counts = run_part(ShapesSource(scrape), FilterConfig(), cfg, has_ground_truth=True)
    assert set(truth) - {None} == set(DROP_KINDS) | set(CONVERT_KINDS)  # every kind planted
    assert counts["dropped"] == {k: truth[k] for k in DROP_KINDS}
    assert counts["kept"] == truth[None] + sum(truth[k] for k in CONVERT_KINDS)
    stats = merge_parts(cfg)
    for kind in DROP_KINDS:
        assert stats["ground_truth"][kind] == {
            "count": truth[kind],
            "precision": 1.0,
            "recall": 1.0,
        }
    for kind in (*CONVERT_KINDS, "clean"):
        assert stats["ground_truth"][kind]["kept_rate"] == 1.0
