"""DVC stage ``evaluate``: guidance sweeps and a sampler table of the trained cascade.

    python pipelines/evaluate.py [evaluate=coco30k] [hydra overrides...]
    torchrun --nproc-per-node N pipelines/evaluate.py [...]      # N processes, same results

Reads the COCO-format set ``evaluate.captions`` (default: the val export of ``prepare``) and the
models ``evaluate.base`` / ``upsampler`` / ``clip`` (default: ``models/*`` from training).
Writes ``metrics/evaluate.json`` (``{"cfg": {scale: metrics}, "clip": ..., "samplers": ...}``),
``plots/guidance.csv`` and ``plots/samplers.csv`` (``dvc plots``), ``plots/guidance_pareto.png``
and one sample grid per point under ``reports/evaluate/``; logs one MLflow run. Another
``evaluate.name`` (``evaluate=distilled``: ``evaluate_distilled``) writes
``metrics/<name>.json``, ``plots/<name>/`` and ``reports/<name>/`` instead.

Under ``torchrun`` (or ``srun``) every rank generates and measures its share of each point's
captions; the first rank alone writes the outputs and the MLflow run. Finished images are kept in
``evaluate.cache_dir``, so the same command after a crash (or ``kill -9``) resumes.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from glide.config import compose, find_conf_dir, project_root
from glide.evaluation import (
    EvaluateConfig,
    Evaluator,
    guidance_rows,
    sampler_rows,
    write_csv,
    write_pareto_plot,
)
from glide.evaluation.distributed import World, init_world, shutdown_world
from glide.evaluation.report import GUIDANCE_COLUMNS, SAMPLER_COLUMNS
from glide.io import atomic_path, atomic_write_text
from glide.sampling import load_model_source
from glide.stage import run_stage
from glide.tracking import tracked_run
from glide.tracking.datasets import coco_dataset, link_inputs, load_prepare_stats


def _outputs(name: str) -> tuple[Path, Path, Path]:
    """The metrics file, plots folder and grid folder of an evaluation called ``name``
    (``evaluate.name``: ``evaluate`` for the main pipeline's stage, ``evaluate_distilled`` for
    the distillation pipeline's)."""
    plots = Path("plots") if name == "evaluate" else Path("plots") / name
    return Path(f"metrics/{name}.json"), plots, Path("reports") / name


def _overrides(argv: list[str]) -> list[str]:
    """Select the ``evaluate`` group (default ``default``), appending it when config.yaml's
    defaults list does not name it."""
    doc = yaml.safe_load((find_conf_dir() / "config.yaml").read_text()) or {}
    listed = any(isinstance(d, dict) and "evaluate" in d for d in doc.get("defaults", []))
    chosen = [a for a in argv if a.lstrip("+").startswith("evaluate=")]
    rest = [a for a in argv if a not in chosen]
    group = chosen[-1].lstrip("+") if chosen else "evaluate=default"
    return [group if listed else f"+{group}", *rest]


def _flat_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """MLflow metrics: ``cfg.3.attributes_single.color``, ``cfg.3.caption_accuracy_ci95.lo``..."""
    out: dict[str, float] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}.{key}", sub)
        elif isinstance(value, list | tuple) and len(value) == 2:  # a 95% interval
            walk(f"{prefix}.lo", value[0])
            walk(f"{prefix}.hi", value[1])
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[prefix.replace("+", "p")] = float(value)

    for section in ("cfg", "clip", "samplers", "inpaint", "noised_clip", "summary"):
        walk(section, metrics.get(section, {}))
    return out


def _evaluate(config: EvaluateConfig, world: World) -> Any:
    load = {"tokenizer_path": config.tokenizer_path, "device": config.device}
    base = load_model_source(config.base, **load)
    upsampler = load_model_source(config.upsampler, **load) if config.upsampler else None
    clip = load_model_source(config.clip, **load) if config.clip else None
    inpaint = load_model_source(config.inpaint, **load) if config.inpaint else None
    distilled = load_model_source(config.distilled, **load) if config.distilled else None
    up = config.distilled_upsampler
    distilled_upsampler = load_model_source(up, **load) if distilled and up else None
    evaluator = Evaluator(
        config,
        base=base,
        upsampler=upsampler,
        clip=clip,
        inpaint=inpaint,
        distilled=distilled,
        distilled_upsampler=distilled_upsampler,
        world=world,
    )
    return evaluator.run()


def main(argv: list[str]) -> int:
    cfg = compose("config", _overrides(argv))
    config = EvaluateConfig.from_dict(cfg["evaluate"])
    world = init_world(config.device)
    try:
        config = dataclasses.replace(config, device=world.device)
        torch.manual_seed(config.seed)
        if not world.is_main:  # the first rank writes every output and the MLflow run
            _evaluate(config, world)
            return 0
        return _main_rank(cfg, config, world)
    finally:
        shutdown_world(world)


def _main_rank(cfg: Any, config: EvaluateConfig, world: World) -> int:
    root = project_root()
    metrics_file, plots_dir, reports_dir = _outputs(config.name)
    with tracked_run(
        root=root,
        experiment=cfg["experiment"],
        run_name=config.name,
        params={"seed": cfg["seed"], "evaluate": cfg["evaluate"]},
        tags={"stage": config.name, "processes": str(world.size)},
        uri=cfg["tracking_uri"],
    ) as mlflow:
        run_id = mlflow.active_run().info.run_id
        # The caption set as an MLflow dataset (the prepare export's dvc.lock md5, or the file's);
        # a missing file is left to the evaluator, which names it.
        if Path(config.captions).is_file():
            captions = coco_dataset(
                root,
                config.captions,
                export_dir=cfg["prepare"]["eval_dir"],
                stats=load_prepare_stats(cfg["metrics_file"]),
            )
            link_inputs(mlflow.MlflowClient(), run_id, [(captions, "evaluation")])
        result = _evaluate(config, world)
        metrics = result.metrics_json()
        metrics["info"]["mlflow_run_id"] = run_id  # the register stage links versions to it

        atomic_write_text(metrics_file, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        written = [metrics_file]
        if metrics.get("cfg") or metrics.get("clip"):  # no guidance sweep: no guidance plots
            rows = guidance_rows(metrics)
            written.append(write_csv(plots_dir / "guidance.csv", rows, GUIDANCE_COLUMNS))
            written.append(write_pareto_plot(plots_dir / "guidance_pareto.png", metrics))
        rows = sampler_rows(metrics)
        written.append(write_csv(plots_dir / "samplers.csv", rows, SAMPLER_COLUMNS))
        reports_dir.mkdir(parents=True, exist_ok=True)
        for stale in reports_dir.glob("*.png"):
            stale.unlink()
        extra = [result.inpaint] if result.inpaint is not None else []
        for point in [*result.points, *extra]:
            name = point.method if point.method == "inpaint" else f"{point.method}_{point.key}"
            name = name.replace("+", "p")
            path = reports_dir / f"{name}.png"
            assert point.grid is not None  # the first rank has every grid
            with atomic_path(path) as tmp:
                point.grid.save(tmp, format="PNG")
            mlflow.log_artifact(str(path), artifact_path="grids")

        mlflow.log_metrics(_flat_metrics(metrics))
        for reason_key, reason in result.unavailable.items():
            mlflow.set_tag(f"unavailable.{reason_key}", reason[:5000])
        for path in written:
            mlflow.log_artifact(str(path))

    summary = metrics["summary"]
    print(f"{config.name}: wrote {', '.join(map(str, written))}")
    for key in sorted(summary):
        print(f"  {key} = {summary[key]:.4g}")
    for key, reason in result.unavailable.items():
        print(f"  {key}: unavailable ({reason})")
    return 0


if __name__ == "__main__":
    sys.exit(run_stage("evaluate", main, sys.argv[1:]))
