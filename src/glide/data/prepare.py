"""The data stage: source -> per-record filters (parallel) -> dedup -> split -> shards + stats.

``run_part`` processes one contiguous slice of the source's tasks (``part_index`` of
``num_parts``), so a cluster launcher can run parts side by side; ``merge_parts`` then combines
their statistics and COCO exports. A single-machine run is one part followed by the merge.
Deduplication runs within a part (a part is a contiguous slice, so nearby duplicates stay
together); with several parts the merge also compares the hashes each part keeps and reports the
duplicates across parts, and removes them with ``drop_cross_part_duplicates``
(:mod:`glide.data.part_dedup`).
"""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import shutil
import sys
import time
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw
from tqdm import tqdm

from glide.data.dedup import NearDupIndex
from glide.data.filters import Checked, FilterConfig, RecordFilter
from glide.data.part_dedup import (
    HashRecorder,
    find_cross_part_duplicates,
    load_hashes,
    read_removed,
    remove_keys,
)
from glide.data.records import CONVERT_KINDS, DROP_KINDS
from glide.data.shards import CocoExporter, Sample, ShardWriter, split_of, write_json
from glide.data.sources import Source

SPLITS = ("train", "val")


@dataclass(frozen=True)
class PrepareConfig:
    """Where the stage writes and how it parallelises."""

    shards_dir: str = "data/shards"
    eval_dir: str = "data/eval/val"
    val_fraction: float = 0.05
    split_salt: str = "glide-split"
    shard_size: int = 1000
    num_workers: int = 2
    chunksize: int = 16
    num_parts: int = 1
    part_index: int = 0
    progress: bool = True
    # Merge only: remove the duplicates found across parts from the shards and the COCO export
    # (they are always counted and listed).
    drop_cross_part_duplicates: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.part_index < self.num_parts:
            raise ValueError(f"part_index {self.part_index} not in [0, num_parts={self.num_parts})")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")


# Worker state: set once per process so each task ships only its small descriptor.
_WORKER: tuple[Source, RecordFilter] | None = None


def _init_worker(source: Source, record_filter: RecordFilter) -> None:
    global _WORKER
    _WORKER = (source, record_filter)


def _process(task: Any) -> Checked:
    assert _WORKER is not None
    source, record_filter = _WORKER
    try:
        rec = source.load(task)
    except Exception as exc:  # a source bug must not stop the stage; count it instead
        out = Checked(
            key=f"task-{task!r}"[:200], source=source.name, reason="load_error", defect=None
        )
        out.meta = {"error": f"{type(exc).__name__}: {exc}"}
        return out
    return record_filter(rec)


def _checked_stream(
    source: Source, record_filter: RecordFilter, tasks: Sequence[Any], cfg: PrepareConfig
) -> Iterator[Checked]:
    """Filter results in task order, from a process pool when ``num_workers > 1``."""
    if cfg.num_workers <= 1:
        _init_worker(source, record_filter)
        yield from map(_process, tasks)
        return
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    ctx = mp.get_context(method)
    with ctx.Pool(cfg.num_workers, _init_worker, (source, record_filter)) as pool:
        yield from pool.imap(_process, tasks, chunksize=cfg.chunksize)


def part_slice(n: int, num_parts: int, part_index: int) -> range:
    return range(n * part_index // num_parts, n * (part_index + 1) // num_parts)


def _clear_part_outputs(cfg: PrepareConfig) -> None:
    prefix = f"{cfg.part_index:03d}-"
    for split in SPLITS:
        for p in (Path(cfg.shards_dir) / split).glob(f"{prefix}*.tar*"):
            p.unlink()
    # Until it finishes, the part is unfinished for the merge; re-run, it brings back any
    # samples an earlier merge removed from it.
    _part_stats_path(cfg).unlink(missing_ok=True)
    _hashes_path(cfg).unlink(missing_ok=True)
    _removed_path(cfg).unlink(missing_ok=True)


def run_part(
    source: Source,
    filter_cfg: FilterConfig,
    cfg: PrepareConfig,
    *,
    has_ground_truth: bool = False,
) -> dict[str, Any]:
    """Process this part's slice of ``source``; write its shards, COCO part and raw counts."""
    start = time.perf_counter()
    all_tasks = source.tasks()
    tasks = [all_tasks[i] for i in part_slice(len(all_tasks), cfg.num_parts, cfg.part_index)]
    _clear_part_outputs(cfg)
    record_filter = RecordFilter(filter_cfg)
    near = NearDupIndex(filter_cfg.near_dup_radius, filter_cfg.near_dup_max_thumb_diff)
    digests: set[bytes] = set()
    dropped: Counter[str] = Counter()
    converted: Counter[str] = Counter()
    confusion: dict[str, Counter[str]] = {}
    errors: list[dict[str, str]] = []
    prefix = f"{cfg.part_index:03d}-"
    writers = {
        s: ShardWriter(Path(cfg.shards_dir) / s, prefix=prefix, max_count=cfg.shard_size)
        for s in SPLITS
    }
    coco = CocoExporter(Path(cfg.eval_dir))
    # One part of several keeps its hashes for the merge's cross-part check (a single part has
    # nothing to compare with, and its outputs stay as they were).
    hashes = HashRecorder() if cfg.num_parts > 1 else None
    bar = tqdm(
        total=len(tasks),
        desc=f"prepare part {cfg.part_index}/{cfg.num_parts}",
        unit="rec",
        disable=not cfg.progress,
        file=sys.stderr,
    )
    for rec in _checked_stream(source, record_filter, tasks, cfg):
        bar.update(1)
        if rec.reason is None and filter_cfg.exact_dedup:
            if rec.digest in digests:
                rec.reason = "exact_duplicate"
            else:
                digests.add(rec.digest)
        if rec.reason is None and filter_cfg.near_dedup:
            assert rec.thumb is not None
            if near.query(rec.phash, rec.thumb) is not None:
                rec.reason = "near_duplicate"
            else:
                near.add(rec.key, rec.phash, rec.thumb)
        if has_ground_truth:
            confusion.setdefault(rec.defect or "clean", Counter())[rec.reason or "kept"] += 1
        if rec.reason is not None:
            dropped[rec.reason] += 1
            if "error" in rec.meta and len(errors) < 20:
                errors.append({"key": rec.key, "error": str(rec.meta["error"])})
            continue
        if rec.original_mode != "RGB":
            converted[f"mode_{rec.original_mode.replace(';', '')}"] += 1
        split = split_of(rec.key, cfg.val_fraction, cfg.split_salt)
        sample = Sample(
            rec.key, rec.image_bytes, filter_cfg.image_format, rec.caption, _sample_meta(rec)
        )
        writers[split].write(sample)
        if split == "val":
            coco.add(sample, rec.width, rec.height)
        if hashes is not None:
            hashes.add(rec.key, split, rec.defect, rec.digest, rec.phash, rec.thumb)
    bar.close()
    shards = {s: {p.name: None for p in w.close()} for s, w in writers.items()}
    counts = {
        "part_index": cfg.part_index,
        "num_parts": cfg.num_parts,
        "total": len(tasks),
        "kept": sum(w.total for w in writers.values()),
        "dropped": dict(sorted(dropped.items())),
        "splits": {s: w.total for s, w in writers.items()},
        "converted": dict(sorted(converted.items())),
        "shards": {s: sorted(v) for s, v in shards.items()},
        "errors": errors,
    }
    if has_ground_truth:
        counts["confusion"] = {k: dict(sorted(v.items())) for k, v in sorted(confusion.items())}
    part_doc = coco.document()
    # The part file is a DVC output: no wall-clock time in it, or re-runs would differ.
    if hashes is not None:
        hashes.save(_hashes_path(cfg))
    write_json(Path(cfg.eval_dir) / "parts" / f"part-{cfg.part_index:03d}.json", part_doc)
    # Last: the stats file is what marks the part finished for the merge.
    write_json(_part_stats_path(cfg), counts)
    return {**counts, "seconds": time.perf_counter() - start}


def _sample_meta(rec: Checked) -> dict[str, Any]:
    meta = {
        "source": rec.source,
        "original_size": list(rec.original_size),
        "original_mode": rec.original_mode,
        "checks": [*rec.checks, "dedup"],
    }
    # Keep what the source knows (COCO ids, all captions, paths), never ground-truth labels.
    meta.update({k: v for k, v in rec.meta.items() if k not in ("duplicate_of", "error")})
    return meta


def _part_stats_path(cfg: PrepareConfig, part: int | None = None) -> Path:
    index = cfg.part_index if part is None else part
    return Path(cfg.shards_dir) / "stats" / f"part-{index:03d}.json"


def _hashes_path(cfg: PrepareConfig, part: int | None = None) -> Path:
    index = cfg.part_index if part is None else part
    return Path(cfg.shards_dir) / "stats" / f"part-{index:03d}.hashes.npy"


def _removed_path(cfg: PrepareConfig, part: int | None = None) -> Path:
    index = cfg.part_index if part is None else part
    return Path(cfg.shards_dir) / "stats" / f"part-{index:03d}.removed.json"


def cross_part_report_path(cfg: PrepareConfig) -> Path:
    """Where a merge of several parts lists the duplicates it found across them."""
    return Path(cfg.shards_dir) / "stats" / "cross_part_duplicates.json"


def check_parts(cfg: PrepareConfig) -> list[dict[str, Any]]:
    """Every part's counts, once each has finished as part of this cut into ``cfg.num_parts``
    (and, with several parts, kept its hashes); else an error naming the part to run again."""
    parts = []
    for i in range(cfg.num_parts):
        path = _part_stats_path(cfg, i)
        if not path.is_file():
            raise FileNotFoundError(
                f"part {i} of {cfg.num_parts} has not finished: {path} is missing "
                f"(run the stage with prepare.part_index={i})"
            )
        part = json.loads(path.read_text())
        if part["num_parts"] != cfg.num_parts:  # a leftover of a run cut into other parts
            raise ValueError(
                f"part {i} of {cfg.num_parts} was run with num_parts={part['num_parts']} "
                f"({path}): run the stage again with prepare.part_index={i}"
            )
        hashes = _hashes_path(cfg, i)
        if cfg.num_parts > 1 and not hashes.is_file():
            raise FileNotFoundError(
                f"part {i} of {cfg.num_parts} has no hashes for the cross-part duplicate "
                f"check: {hashes} is missing (run the stage again with prepare.part_index={i})"
            )
        parts.append(part)
    return parts


def merge_parts(
    cfg: PrepareConfig, *, seconds: float | None = None, filters: FilterConfig | None = None
) -> dict[str, Any]:
    """Combine every part's counts and COCO export; return the stage's metrics document.

    ``seconds`` (the wall time of a single-machine run) adds a throughput figure. With several
    parts, their kept records are compared across parts with the dedup settings of ``filters``
    (default: :class:`FilterConfig`'s); the duplicates are counted under
    ``cross_part_duplicates``, listed in :func:`cross_part_report_path`, and with
    ``cfg.drop_cross_part_duplicates`` removed from the shards and the COCO export.
    """
    parts = check_parts(cfg)
    dropped: Counter[str] = Counter()
    converted: Counter[str] = Counter()
    confusion: dict[str, Counter[str]] = {}
    for p in parts:
        dropped.update(p["dropped"])
        converted.update(p["converted"])
        for kind, outcomes in p.get("confusion", {}).items():
            confusion.setdefault(kind, Counter()).update(outcomes)
    cross, removed = _cross_part_duplicates(cfg, parts, filters or FilterConfig())
    splits = {s: sum(p["splits"][s] for p in parts) for s in SPLITS}
    for entry in removed:  # removed duplicates count as dropped, under their dedup reason
        splits[entry["split"]] -= 1
        dropped[entry["reason"]] += 1
        if confusion:
            outcomes = confusion[entry["defect"] or "clean"]
            outcomes["kept"] -= 1
            outcomes[entry["reason"]] += 1
    total = sum(p["total"] for p in parts)
    stats: dict[str, Any] = {
        "total": total,
        "kept": sum(p["kept"] for p in parts) - len(removed),
        "dropped": dict(sorted(dropped.items())),
        "splits": splits,
        "converted": dict(sorted(converted.items())),
        "num_parts": cfg.num_parts,
        "shards": {s: sum(len(p["shards"][s]) for p in parts) for s in SPLITS},
        "cross_part_duplicates": cross,
    }
    if seconds:
        stats["seconds"] = round(seconds, 3)
        stats["records_per_s"] = round(total / seconds, 1)
    if confusion:
        stats["ground_truth"] = filter_quality(confusion, dropped)
    _merge_coco(cfg, {e["key"] for e in removed if e["split"] == "val"})
    return stats


def _cross_part_duplicates(
    cfg: PrepareConfig, parts: list[dict[str, Any]], filters: FilterConfig
) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Find (and with the option, remove) duplicates across parts: ``(counts, removed)``.

    ``removed`` holds every sample now missing from the shards, including those an earlier merge
    removed (their parts' ``removed.json``): the stats must describe the shards as they are.
    """
    counts = {"found": 0, "exact": 0, "near": 0, "removed": 0}
    if cfg.num_parts == 1:
        return counts, []
    tables = [load_hashes(_hashes_path(cfg, i)) for i in range(cfg.num_parts)]  # checked
    found = find_cross_part_duplicates(tables, filters)
    write_json(cross_part_report_path(cfg), found)
    rows = {
        str(row["key"]): {"split": str(row["split"]), "defect": str(row["defect"]) or None}
        for table in tables
        for row in table
    }
    removed: list[dict[str, Any]] = []
    for i in range(cfg.num_parts):
        before = read_removed(_removed_path(cfg, i))
        after = dict(before)
        if cfg.drop_cross_part_duplicates:
            after.update({e["key"]: e["reason"] for e in found if e["part"] == i})
        new = set(after) - set(before)
        if new:
            shards = [
                Path(cfg.shards_dir) / split / name
                for split in SPLITS
                for name in parts[i]["shards"][split]
            ]
            remove_keys(shards, new)
            write_json(_removed_path(cfg, i), dict(sorted(after.items())))
        removed += [{"key": k, "reason": r, **rows[k]} for k, r in sorted(after.items())]
    counts["found"] = len(found)
    counts["exact"] = sum(e["reason"] == "exact_duplicate" for e in found)
    counts["near"] = len(found) - counts["exact"]
    counts["removed"] = len(removed)
    return counts, removed


def filter_quality(
    confusion: dict[str, Counter[str]], dropped: Counter[str]
) -> dict[str, dict[str, Any]]:
    """Per defect kind: precision and recall of the filter named after it; keep rates otherwise.

    precision(K) = correctly dropped K / all dropped as K; recall(K) = correctly dropped K / all K.
    Convert kinds and clean records must be kept: their ``kept_rate`` should be 1.
    """
    out: dict[str, dict[str, Any]] = {}
    for kind in DROP_KINDS:
        n = sum(confusion.get(kind, {}).values())
        tp = confusion.get(kind, {}).get(kind, 0)
        predicted = dropped.get(kind, 0)
        out[kind] = {
            "count": n,
            "precision": round(tp / predicted, 4) if predicted else None,
            "recall": round(tp / n, 4) if n else None,
        }
    for kind in (*CONVERT_KINDS, "clean"):
        n = sum(confusion.get(kind, {}).values())
        kept = confusion.get(kind, {}).get("kept", 0)
        out[kind] = {"count": n, "kept_rate": round(kept / n, 4) if n else None}
    return out


def _merge_coco(cfg: PrepareConfig, removed: Collection[str] = ()) -> None:
    """``captions.json`` from the parts' exports, renumbered, without the ``removed`` keys."""
    eval_dir = Path(cfg.eval_dir)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for i in range(cfg.num_parts):
        doc = json.loads((eval_dir / "parts" / f"part-{i:03d}.json").read_text())
        id_map = {}
        for im in doc["images"]:
            if im["file_name"].rsplit(".", 1)[0] in removed:
                (eval_dir / "images" / im["file_name"]).unlink(missing_ok=True)
                continue
            id_map[im["id"]] = len(images) + 1
            images.append({**im, "id": len(images) + 1})
        for ann in doc["annotations"]:
            if ann["image_id"] not in id_map:
                continue
            annotations.append(
                {**ann, "id": len(annotations) + 1, "image_id": id_map[ann["image_id"]]}
            )
    info = {"description": "val split of the GLIDE data stage", "version": "1"}
    document = {"info": info, "images": images, "annotations": annotations}
    write_json(eval_dir / "captions.json", document, indent=1)


def contact_sheet(shard_paths: Sequence[Path], *, n: int = 64, tile: int = 96) -> Image.Image:
    """A grid of the first ``n`` samples of the shards, each captioned (for eyeballing the data)."""
    import tarfile

    samples: list[tuple[bytes, str]] = []
    for path in shard_paths:
        members: dict[str, dict[str, bytes]] = {}
        with tarfile.open(path) as tf:
            for m in tf:
                key, ext = m.name.split(".", 1)
                f = tf.extractfile(m)
                if f is not None:
                    members.setdefault(key, {})[ext] = f.read()
        for parts in members.values():
            img = parts.get("png") or parts.get("jpg")
            if img is not None:
                samples.append((img, parts.get("txt", b"").decode()))
        if len(samples) >= n:
            break
    samples = samples[:n]
    cols = 8
    rows = max(1, -(-len(samples) // cols))
    text_h = 24
    sheet = Image.new("RGB", (cols * tile, rows * (tile + text_h)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (data, caption) in enumerate(samples):
        x, y = (i % cols) * tile, (i // cols) * (tile + text_h)
        img = Image.open(io.BytesIO(data)).convert("RGB")
        img.thumbnail((tile, tile))
        sheet.paste(img, (x, y))
        words, lines = caption.split(), ["", ""]
        for w in words:  # two short lines of the caption under each tile
            line = 0 if len(lines[0]) + len(w) < 18 else 1
            lines[line] = f"{lines[line]} {w}".strip()
        draw.text((x + 2, y + tile), lines[0][:20], fill=(0, 0, 0))
        draw.text((x + 2, y + tile + 11), lines[1][:20], fill=(0, 0, 0))
    return sheet


def reset_outputs(cfg: PrepareConfig) -> None:
    """Remove the stage's previous outputs (single-part runs own the whole output folders)."""
    for path in (Path(cfg.shards_dir), Path(cfg.eval_dir)):
        if path.exists():
            shutil.rmtree(path)
