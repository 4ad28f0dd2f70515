"""Data sources behind one interface: ``tasks()`` lists cheap picklable work items in a stable order
and ``load(task)`` turns one into a :class:`RawRecord` (in a worker process).

``load`` never raises for a bad item: an unreadable file becomes a record whose ``meta`` holds
``load_error``, which the filters count as ``missing_file``.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from glide.data.records import RawRecord

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


class Source(Protocol):
    name: str

    def tasks(self) -> Sequence[Any]: ...

    def load(self, task: Any) -> RawRecord: ...


def safe_key(text: str) -> str:
    """A WebDataset-safe key (no dots or slashes: WebDataset splits names at the first dot)."""
    return _KEY_UNSAFE.sub("_", text).strip("_") or "item"


def unique_keys(names: Sequence[str], prefix: str) -> list[str]:
    """Safe keys for ``names``, made unique deterministically by suffixing repeats."""
    seen: dict[str, int] = {}
    keys = []
    for name in names:
        base = f"{prefix}-{safe_key(name)}"
        n = seen.get(base, 0)
        seen[base] = n + 1
        keys.append(base if n == 0 else f"{base}-{n}")
    return keys


def _read(path: Path) -> tuple[bytes, dict]:
    try:
        return path.read_bytes(), {}
    except OSError as exc:
        return b"", {"load_error": f"{type(exc).__name__}: {exc}"}


@dataclass
class ShapesSource:
    """The built-in procedural world in raw-scrape mode (records with ground-truth defects)."""

    config: Any  # glide.data.scrape.ScrapeConfig
    name: str = "shapes"

    def tasks(self) -> Sequence[int]:
        return range(self.config.num_records)

    def load(self, task: int) -> RawRecord:
        from glide.data.scrape import make_raw_record

        return make_raw_record(self.config, task)


@dataclass
class FolderSource:
    """Images with sidecar captions: ``dir/a/cat.jpg`` + ``dir/a/cat.txt`` (fine-tuning layout)."""

    root: str
    name: str = "folder"

    def tasks(self) -> Sequence[tuple[str, str]]:
        root = Path(self.root)
        if not root.is_dir():
            raise FileNotFoundError(f"folder source: directory not found: {root}")
        files = sorted(
            p.relative_to(root).as_posix()
            for p in root.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_EXTS
        )
        stems = [f.rsplit(".", 1)[0] for f in files]
        return list(zip(files, unique_keys(stems, self.name), strict=True))

    def load(self, task: tuple[str, str]) -> RawRecord:
        rel, key = task
        path = Path(self.root) / rel
        data, meta = _read(path)
        txt = path.with_suffix(".txt")
        caption = txt.read_text(encoding="utf-8", errors="replace") if txt.is_file() else None
        meta["path"] = rel
        return RawRecord(key, data, caption, self.name, path.suffix.lower().lstrip("."), meta)


@dataclass
class CocoSource:
    """A COCO captions file (e.g. ``captions_train2017.json``) plus its image directory.

    One record per image; ``txt`` is the first caption (by annotation id) and ``meta["captions"]``
    keeps all of them, so no image is duplicated and no caption is lost.
    """

    annotations: str
    image_dir: str
    name: str = "coco"

    def tasks(self) -> Sequence[tuple[int, str, list[str]]]:
        path = Path(self.annotations)
        if not path.is_file():
            raise FileNotFoundError(
                f"coco source: captions JSON not found: {path} (e.g. annotations/"
                "captions_val2014.json from the MS-COCO download)"
            )
        doc = json.loads(path.read_text(encoding="utf-8"))
        captions: dict[int, list[tuple[int, str]]] = {}
        for ann in doc.get("annotations", []):
            captions.setdefault(ann["image_id"], []).append((ann.get("id", 0), ann["caption"]))
        tasks = []
        for img in sorted(doc.get("images", []), key=lambda im: im["id"]):
            caps = [c for _, c in sorted(captions.get(img["id"], []))]
            tasks.append((img["id"], img["file_name"], caps))
        return tasks

    def load(self, task: tuple[int, str, list[str]]) -> RawRecord:
        image_id, file_name, caps = task
        data, meta = _read(Path(self.image_dir) / file_name)
        meta.update({"coco_id": image_id, "file_name": file_name, "captions": caps})
        ext = Path(file_name).suffix.lower().lstrip(".")
        key = f"{self.name}-{image_id:012d}"
        return RawRecord(key, data, caps[0] if caps else None, self.name, ext, meta)


@dataclass
class WebDatasetSource:
    """Existing WebDataset tar shards (img2dataset/LAION layout: ``key.jpg`` + ``key.txt``).

    Tasks hold byte offsets of each sample's members, so workers read samples directly.
    """

    paths: Sequence[str]
    name: str = "webdataset"

    def _tar_files(self) -> list[Path]:
        files: list[Path] = []
        for pattern in self.paths:
            p = Path(pattern)
            matches = sorted(p.parent.glob(p.name)) if any(c in p.name for c in "*?[") else [p]
            for m in matches:
                if not m.is_file():
                    raise FileNotFoundError(f"webdataset source: shard not found: {m}")
                files.append(m)
        if not files:
            raise FileNotFoundError(f"webdataset source: no shards match {list(self.paths)}")
        return files

    def tasks(self) -> Sequence[tuple[str, str, dict[str, tuple[int, int]]]]:
        tasks = []
        for tar_path in self._tar_files():
            samples: dict[str, dict[str, tuple[int, int]]] = {}
            try:
                with tarfile.open(tar_path, "r:") as tf:
                    for member in tf:
                        if not member.isfile():
                            continue
                        base = member.name.rsplit("/", 1)[-1]
                        if "." not in base:
                            continue
                        stem, ext = base.split(".", 1)
                        prefix = member.name[: len(member.name) - len(base)]
                        samples.setdefault(prefix + stem, {})[ext.lower()] = (
                            member.offset_data,
                            member.size,
                        )
            except tarfile.TarError:
                # A broken tail still yields the samples read so far; the rest are unreadable.
                pass
            tasks += [(str(tar_path), key, exts) for key, exts in samples.items()]
        return tasks

    def load(self, task: tuple[str, str, dict[str, tuple[int, int]]]) -> RawRecord:
        tar_path, key, exts = task
        members: dict[str, bytes] = {}
        with open(tar_path, "rb") as fh:
            for ext, (offset, size) in exts.items():
                fh.seek(offset)
                members[ext] = fh.read(size)
        img_ext = next((e for e in ("jpg", "jpeg", "png", "webp") if e in members), "")
        meta: dict[str, Any] = {"shard": Path(tar_path).name, "original_key": key}
        caption = members["txt"].decode("utf-8", errors="replace") if "txt" in members else None
        if caption is None and "json" in members:
            try:
                caption = json.loads(members["json"]).get("caption")
            except (ValueError, AttributeError):
                caption = None
        if not img_ext:
            meta["load_error"] = f"sample {key} has no image member ({sorted(members)})"
        key = f"{self.name}-{safe_key(Path(tar_path).stem)}-{safe_key(key)}"
        return RawRecord(key, members.get(img_ext, b""), caption, self.name, img_ext, meta)


@dataclass
class TableSource:
    """A ``.jsonl`` or ``.parquet`` table with an image path column and a caption column.

    Relative paths are resolved against ``base_dir`` (default: the table's directory).
    """

    path: str
    image_column: str = "image_path"
    caption_column: str = "caption"
    base_dir: str | None = None
    name: str = "table"

    def _rows(self) -> list[dict[str, Any]]:
        path = Path(self.path)
        if not path.is_file():
            raise FileNotFoundError(f"table source: file not found: {path}")
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path, columns=[self.image_column, self.caption_column]).to_pylist()
        if path.suffix in (".jsonl", ".ndjson"):
            rows = []
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    rows.append({"__bad_line__": n})
            return rows
        raise ValueError(f"table source: expected .jsonl or .parquet, got {path.name}")

    def tasks(self) -> Sequence[tuple[int, Any, Any]]:
        return [
            (i, row.get(self.image_column), row.get(self.caption_column))
            for i, row in enumerate(self._rows())
        ]

    def load(self, task: tuple[int, Any, Any]) -> RawRecord:
        row, image_path, caption = task
        key = f"{self.name}-{row:09d}"
        if not image_path:
            return RawRecord(key, b"", caption, self.name, "", {"load_error": "no image path"})
        base = Path(self.base_dir) if self.base_dir else Path(self.path).parent
        path = Path(image_path) if Path(image_path).is_absolute() else base / image_path
        data, meta = _read(path)
        meta["path"] = str(image_path)
        return RawRecord(key, data, caption, self.name, path.suffix.lower().lstrip("."), meta)


def build_source(kind: str, **kwargs: Any) -> Source:
    """Build a source by name: ``shapes``, ``folder``, ``coco``, ``webdataset``, ``table``."""
    if kind == "shapes":
        from glide.data.scrape import ScrapeConfig

        return ShapesSource(ScrapeConfig(**kwargs))
    classes = {
        "folder": FolderSource,
        "coco": CocoSource,
        "webdataset": WebDatasetSource,
        "table": TableSource,
        "jsonl": TableSource,
        "parquet": TableSource,
    }
    if kind not in classes:
        raise ValueError(
            f"unknown data source {kind!r}; expected one of shapes, {', '.join(classes)}"
        )
    return classes[kind](**kwargs)
