"""DVC stage ``prepare``: raw image-text pairs -> filtered WebDataset shards + COCO val export.

    python pipelines/prepare.py [hydra overrides...]

Writes (as dvc.yaml declares): ``data/shards/{train,val}/*.tar``, ``data/eval/val/`` (COCO
captions JSON + images), ``metrics/prepare.json`` and ``reports/prepare/contact_sheet.png``; logs
one MLflow run. For a cluster, run each ``prepare.num_parts=N prepare.part_index=i`` side by side,
then once with ``merge_only=true``.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from glide.config import compose, project_root, to_dataclass
from glide.data.filters import FilterConfig
from glide.data.prepare import PrepareConfig, contact_sheet, merge_parts, reset_outputs, run_part
from glide.data.sources import build_source
from glide.io import atomic_path, atomic_write_text
from glide.stage import run_stage
from glide.tracking import flatten_params, tracked_run
from glide.tracking.datasets import coco_dataset, log_datasets, shard_dataset


def _metrics(stats: dict) -> dict[str, float]:
    flat = flatten_params({k: v for k, v in stats.items() if k != "ground_truth"})
    for kind, values in stats.get("ground_truth", {}).items():
        flat.update({f"ground_truth.{kind}.{k}": str(v) for k, v in values.items()})
    out = {}
    for key, value in flat.items():
        key = re.sub(r"[^\w\-. :/]", "_", key)  # MLflow metric-name alphabet
        try:
            out[key] = float(value)
        except ValueError:
            continue
    return out


def main(argv: list[str]) -> int:
    cfg = compose("config", argv)
    root = project_root()
    prep = to_dataclass(PrepareConfig, cfg["prepare"])
    filters = to_dataclass(FilterConfig, cfg["filters"])
    source = build_source(cfg["data"]["source"], **cfg["data"]["options"])
    has_truth = cfg["data"]["source"] == "shapes"

    if prep.num_parts > 1 and not cfg["merge_only"]:
        counts = run_part(source, filters, prep, has_ground_truth=has_truth)
        rate = counts["total"] / counts["seconds"]
        print(
            f"part {prep.part_index}/{prep.num_parts}: kept {counts['kept']}/{counts['total']} "
            f"({rate:.1f} records/s); merge with merge_only=true when all parts are done"
        )
        return 0

    run_name = "prepare" if prep.num_parts == 1 else f"prepare-merge-{prep.num_parts}"
    with tracked_run(
        root=root,
        experiment=cfg["experiment"],
        run_name=run_name,
        params=cfg,
        tags={"stage": "prepare"},
        uri=cfg["tracking_uri"],
    ) as mlflow:
        seconds = None
        if prep.num_parts == 1:
            reset_outputs(prep)
            seconds = run_part(source, filters, prep, has_ground_truth=has_truth)["seconds"]
        stats = merge_parts(prep, seconds=seconds)

        metrics_path = Path(cfg["metrics_file"])
        atomic_write_text(metrics_path, json.dumps(stats, indent=2, sort_keys=True) + "\n")
        reports = Path(cfg["reports_dir"])
        reports.mkdir(parents=True, exist_ok=True)
        train_shards = sorted((Path(prep.shards_dir) / "train").glob("*.tar"))
        sheet = contact_sheet(train_shards, n=cfg["contact_sheet_samples"])
        with atomic_path(reports / "contact_sheet.png") as tmp:
            sheet.save(tmp, format="PNG", optimize=False)

        mlflow.log_metrics(_metrics(stats))
        mlflow.log_artifact(str(metrics_path))
        mlflow.log_artifact(str(reports / "contact_sheet.png"))
        # What this run wrote, as MLflow datasets with the digests dvc.lock will record (MLflow
        # has no dataset outputs: they are inputs in context "output").
        written = [
            shard_dataset(root, prep.shards_dir, "train", stats=stats),
            shard_dataset(root, prep.shards_dir, "val", stats=stats),
            coco_dataset(
                root, Path(prep.eval_dir) / "captions.json", export_dir=prep.eval_dir, stats=stats
            ),
        ]
        run_id = mlflow.active_run().info.run_id
        log_datasets(mlflow.MlflowClient(), run_id, [(ref, "output") for ref in written])
    print(
        f"prepare: kept {stats['kept']}/{stats['total']} "
        f"(train {stats['splits']['train']}, val {stats['splits']['val']}), "
        f"dropped {stats['dropped']}, {stats.get('records_per_s', '-')} records/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_stage("prepare", main, sys.argv[1:]))
