"""Every source on small data written by the test: folder, coco, webdataset, jsonl, parquet."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from glide.data.sources import (
    CocoSource,
    FolderSource,
    TableSource,
    WebDatasetSource,
    build_source,
    safe_key,
)
from tests.helpers import encode, pattern_image


def load_all(source) -> list:
    return [source.load(t) for t in source.tasks()]


def test_folder_source(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.jpg").write_bytes(encode(pattern_image(1), "JPEG"))
    (tmp_path / "a.txt").write_text("first caption")
    (tmp_path / "sub" / "b.png").write_bytes(encode(pattern_image(2)))
    (tmp_path / "sub" / "b.txt").write_text("second")
    (tmp_path / "c.png").write_bytes(encode(pattern_image(3)))  # no caption file
    (tmp_path / "notes.md").write_text("ignored")
    recs = load_all(FolderSource(str(tmp_path)))
    assert [r.caption for r in recs] == ["first caption", None, "second"]
    assert [r.key for r in recs] == ["folder-a", "folder-c", "folder-sub_b"]
    assert recs[0].ext == "jpg" and recs[0].image_bytes[:2] == b"\xff\xd8"


def test_folder_source_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="directory not found"):
        FolderSource(str(tmp_path / "nope")).tasks()


def test_coco_source(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    for i in (1, 2):
        (tmp_path / "images" / f"{i:012d}.jpg").write_bytes(encode(pattern_image(i), "JPEG"))
    doc = {
        "images": [
            {"id": 2, "file_name": "000000000002.jpg", "width": 96, "height": 96},
            {"id": 1, "file_name": "000000000001.jpg", "width": 96, "height": 96},
            {"id": 3, "file_name": "missing.jpg", "width": 96, "height": 96},
        ],
        "annotations": [
            {"id": 11, "image_id": 1, "caption": "b caption"},
            {"id": 10, "image_id": 1, "caption": "a caption"},
            {"id": 12, "image_id": 2, "caption": "two"},
        ],
    }
    ann = tmp_path / "captions_val2017.json"
    ann.write_text(json.dumps(doc))
    recs = load_all(CocoSource(str(ann), str(tmp_path / "images")))
    assert [r.key for r in recs] == ["coco-000000000001", "coco-000000000002", "coco-000000000003"]
    assert recs[0].caption == "a caption"
    assert recs[0].meta["captions"] == ["a caption", "b caption"]
    assert recs[2].caption is None and "load_error" in recs[2].meta


def _write_wds(path: Path, samples: dict[str, dict[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tf:
        for key, members in samples.items():
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


def test_webdataset_source(tmp_path: Path) -> None:
    _write_wds(
        tmp_path / "00000.tar",
        {
            "000000001": {"jpg": encode(pattern_image(1), "JPEG"), "txt": b"laion caption"},
            "000000002": {"png": encode(pattern_image(2)), "json": b'{"caption": "from json"}'},
            "000000003": {"txt": b"no image"},
        },
    )
    _write_wds(tmp_path / "00001.tar", {"x": {"jpg": b"\xff\xd8junk", "txt": b"broken"}})
    src = build_source("webdataset", paths=[str(tmp_path / "*.tar")])
    recs = load_all(src)
    assert [r.caption for r in recs] == ["laion caption", "from json", "no image", "broken"]
    assert recs[0].key == "webdataset-00000-000000001"
    assert recs[1].ext == "png"
    assert "load_error" in recs[2].meta
    with pytest.raises(FileNotFoundError, match="no shards"):
        WebDatasetSource([str(tmp_path / "none-*.tar")]).tasks()


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_table_source(tmp_path: Path, fmt: str) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "0.png").write_bytes(encode(pattern_image(1)))
    rows = [
        {"image_path": "img/0.png", "caption": "zero"},
        {"image_path": str(tmp_path / "img" / "0.png"), "caption": "absolute"},
        {"image_path": "img/missing.png", "caption": "gone"},
    ]
    if fmt == "jsonl":
        path = tmp_path / "t.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = tmp_path / "t.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
    recs = load_all(TableSource(str(path)))
    assert [r.caption for r in recs] == ["zero", "absolute", "gone"]
    assert recs[0].image_bytes == recs[1].image_bytes != b""
    assert "load_error" in recs[2].meta


def test_unknown_source_kind() -> None:
    with pytest.raises(ValueError, match="unknown data source"):
        build_source("s3")


def test_safe_key() -> None:
    assert safe_key("a/b.c d") == "a_b_c_d"
