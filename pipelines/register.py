"""DVC stage ``register``: trained models -> MLflow Model Registry versions, gated and aliased.

    python pipelines/register.py [hydra overrides...]     # e.g. promotion.tolerance=0.1

Reads ``models/<name>/model.pt`` (+ ``mlflow_run_id``) for each entry of ``promotion.models``,
``metrics/evaluate.json`` and ``dvc.lock`` (lineage). Each export becomes a version of its
registered model (once: re-running is a no-op) tagged with lineage, its logged model carrying
the metrics; the gate in ``conf/promotion`` gives it ``champion`` (the old one becomes
``previous``) or ``challenger``.
Writes ``reports/register.json``; logs one MLflow run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from glide.config import compose, project_root
from glide.io import atomic_write_text
from glide.stage import run_stage
from glide.tracking import tracked_run
from glide.tracking.registry import (
    ModelRegistry,
    PromotionConfig,
    RegistryError,
    flatten_metrics,
    lineage_tags,
)
from glide.tracking.store import RetryLocked, store_lock


def main(argv: list[str]) -> int:
    cfg = compose("config", argv)
    root = project_root()
    config = PromotionConfig.from_dict(cfg["promotion"])
    metrics_path = Path(config.metrics_file)
    document = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    metrics = flatten_metrics(document)
    # The evaluate run that wrote the metrics: versions link to it, and it logs them against
    # each version's logged model.
    evaluate_run_id = (document.get("info") or {}).get("mlflow_run_id")
    if not metrics:
        print(f"register: no evaluation metrics in {metrics_path}", file=sys.stderr)
    with (
        tracked_run(
            root=root,
            experiment=cfg["experiment"],
            run_name="register",
            params={"promotion": cfg["promotion"]},
            tags={"stage": "register"},
            uri=cfg["tracking_uri"],
        ) as mlflow,
        store_lock(mlflow.get_tracking_uri(), "registry", root),
    ):
        # Under the registry lock: two register stages at once (`dvc queue start -j 2`) decide
        # one after the other, each against the champion the other may have just set.
        registry = ModelRegistry(RetryLocked(mlflow.MlflowClient()), config)
        report = {}
        for name, model_dir in config.models.items():
            if not (Path(model_dir) / "model.pt").is_file():
                print(f"register: {name}: no {model_dir}/model.pt, skipped", file=sys.stderr)
                continue
            try:
                result = registry.register(
                    name=name,
                    model_dir=model_dir,
                    metrics=metrics,
                    lineage=lineage_tags(root, model_dir),
                    experiment=cfg["experiment"],
                    evaluate_run_id=evaluate_run_id,
                )
            except RegistryError as exc:
                print(f"register: {name}: {exc}", file=sys.stderr)
                return 1
            report[name] = result.as_dict()
            mlflow.set_tag(f"version.{name}", result.version)
            mlflow.log_metric(f"promoted.{name}", float(result.decision == "champion"))
            state = "registered" if result.created else "already registered"
            print(
                f"register: {name} v{result.version} {state}: {result.decision} "
                f"(champion: v{result.champion})"
            )
            for reason in result.reasons:
                print(f"  {reason}")
        out = Path(config.report_file)
        atomic_write_text(out, json.dumps(report, indent=2, sort_keys=True) + "\n")
        mlflow.log_artifact(str(out))
    return 0


if __name__ == "__main__":
    sys.exit(run_stage("register", main, sys.argv[1:]))
