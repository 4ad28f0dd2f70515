"""DVC stage ``prepare``: raw image-text pairs -> filtered WebDataset shards + COCO val export.

    python pipelines/prepare.py [hydra overrides...]

Writes (as dvc.yaml declares): ``data/shards/{train,val}/*.tar``, ``data/eval/val/`` (COCO
captions JSON + images), ``metrics/prepare.json`` and ``reports/prepare/contact_sheet.png``; logs
one MLflow run.

At scale the source is cut into ``prepare.num_parts`` parts, run side by side as a Hydra multirun
on a launcher, then merged (docs/prepare_at_scale.md)::

    python pipelines/prepare.py --multirun hydra/launcher=joblib \
        prepare.num_parts=4 'prepare.part_index=range(4)'      # or hydra/launcher=submitit_slurm
    python pipelines/prepare.py prepare.num_parts=4 merge_only=true

Any Hydra flag (``--multirun``, ``--cfg job``, ...) hands the command line to ``hydra.main``;
without one the config is composed as by every other stage. Each part keeps the hashes of what it
kept; the merge reports duplicates across parts and, with
``prepare.drop_cross_part_duplicates=true``, removes them. Running each part as its own process
(``prepare.num_parts=N prepare.part_index=i``) and then the merge works as well.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from glide.config import compose, find_conf_dir, project_root, to_dataclass
from glide.data.filters import FilterConfig
from glide.data.prepare import (
    PrepareConfig,
    check_parts,
    contact_sheet,
    cross_part_report_path,
    merge_parts,
    reset_outputs,
    run_part,
)
from glide.data.sources import build_source
from glide.io import atomic_path, atomic_write_text, describe_disk_full, is_disk_full
from glide.stage import StageError, run_stage
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
    if any(arg.startswith("-") for arg in argv):  # overrides never start with "-"; flags do
        return _hydra_main(argv)
    return stage(compose("config", argv))


def _hydra_main(argv: list[str]) -> int:
    """Run ``argv`` through ``hydra.main``: ``--multirun`` sends each job (:func:`stage`) to the
    launcher chosen with ``hydra/launcher=...``. conf/config.yaml's ``hydra:`` section keeps the
    working directory and sends Hydra's own logs to ``.hydra-runs/``."""
    import hydra
    from hydra.errors import CompactHydraException
    from omegaconf import DictConfig, OmegaConf

    def job(cfg: DictConfig) -> int:
        container = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(container, dict)
        try:
            return stage(container)
        except Exception as exc:
            line = _one_line(exc)
            if line is None:
                raise
            # The job ran in a launcher's worker: Hydra prints this line under the job's
            # overrides (which name the part) instead of a traceback from another process.
            raise CompactHydraException(line) from None

    app = hydra.main(config_path=str(find_conf_dir()), config_name="config", version_base="1.3")
    saved = sys.argv
    sys.argv = [saved[0], *argv]  # hydra.main reads its command line from sys.argv
    try:
        app(job)()
    finally:
        sys.argv = saved
    return 0


def _one_line(exc: BaseException) -> str | None:
    """The one-line report of a bad input, a stage error or a full disk; ``None`` for a bug."""
    if isinstance(exc, OSError) and is_disk_full(exc):
        return describe_disk_full(exc, "prepare")
    if isinstance(exc, ValueError | StageError | FileNotFoundError):
        return f"prepare: {exc}"
    return None


def stage(cfg: dict[str, Any]) -> int:
    """The stage on a composed config: one part of several, or the whole run / the merge."""
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

    if prep.num_parts > 1:
        try:  # before the MLflow run: a merge that cannot start logs nothing
            check_parts(prep)
        except (FileNotFoundError, ValueError) as exc:
            raise StageError(str(exc)) from None
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
        stats = merge_parts(prep, seconds=seconds, filters=filters)

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
    if prep.num_parts > 1:
        cross = stats["cross_part_duplicates"]
        action = (
            f"{cross['removed']} removed from the shards and the COCO export"
            if cross["removed"]
            else "kept (prepare.drop_cross_part_duplicates=true removes them)"
        )
        print(
            f"prepare: {cross['found']} duplicate(s) across parts ({cross['exact']} exact, "
            f"{cross['near']} near), listed in {cross_part_report_path(prep)}; {action}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(run_stage("prepare", main, sys.argv[1:]))
