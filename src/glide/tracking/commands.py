"""``glide promote`` and ``glide compare``: argparse wiring for the ``glide`` command.

    glide promote --model glide-base --version 3 [--dry-run] [--force]
    glide promote --model glide-base --rollback [--dry-run]
    glide promote --model glide-base                    # show the aliases and versions
    glide compare [RUN_ID ...] [--stage evaluate] [--last 5] [--report compare.md|.html]
    glide compare EXP_NAME EXP_NAME [--stage evaluate]  # DVC experiments (dvc exp show)
    glide compare --model glide-base [--versions 1 3] [--report compare.html]
    glide replay mlflow-pending/train_base-<run>.json  # writes kept while the server was down

Both honour ``MLFLOW_TRACKING_URI`` (or ``--tracking-uri``) and stop with one line when a
tracking server cannot be reached. Exit status: 0 done, 1 promotion refused by the gate, 2 error.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "COMPARE_COMMAND",
    "PROMOTE_COMMAND",
    "REPLAY_COMMAND",
    "add_compare_parser",
    "add_promote_parser",
    "main",
    "run_compare",
    "run_promote",
]


def _root() -> Path:
    """The checkout the command runs in (its ``conf/``), else the current folder."""
    from glide.config import project_root

    try:
        return project_root()
    except FileNotFoundError:
        return Path.cwd()


def _client(args: argparse.Namespace) -> Any:
    """An MLflow client on the resolved store, after checking that it is reachable."""
    import mlflow

    from glide.tracking.runs import ensure_reachable, resolve_tracking_uri
    from glide.tracking.store import RetryLocked

    uri = resolve_tracking_uri(_root(), args.tracking_uri)
    ensure_reachable(uri)
    mlflow.set_tracking_uri(uri)
    return RetryLocked(mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri))


def _promotion_config(overrides: list[str]) -> Any:
    """``conf/promotion`` composed with ``overrides``; built-in defaults outside a checkout."""
    from glide.config import compose
    from glide.tracking.registry import PromotionConfig

    try:
        section = compose("config", overrides)["promotion"]
    except FileNotFoundError:
        return PromotionConfig()
    return PromotionConfig.from_dict(section)


def _fail(command: str, message: str) -> int:
    print(f"glide {command}: error: {message}", file=sys.stderr)
    return 2


def _add_tracking(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlflow.db)",
    )


def _add_promote_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="registered model, e.g. glide-base")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--version", help="version to make champion (after the gate)")
    what.add_argument("--rollback", action="store_true", help="champion back to @previous")
    p.add_argument("--dry-run", action="store_true", help="show the decision, change nothing")
    p.add_argument("--force", action="store_true", help="promote even if the gate fails")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Hydra override of the gate, e.g. --set promotion.tolerance=0.1 (repeatable)",
    )
    _add_tracking(p)


def _status(registry: Any, name: str) -> int:
    client = registry.client
    versions = sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))
    if not versions:
        raise LookupError(f"registered model {name!r} has no versions")
    aliases = client.get_registered_model(name).aliases or {}
    print(f"{name}: " + ", ".join(f"@{a}=v{v}" for a, v in sorted(aliases.items())))
    for mv in versions:
        tags = mv.tags or {}
        decision = tags.get("promotion.decision", "-")
        print(f"  v{mv.version}  {decision:<11} run {mv.run_id or '-'}")
    return 0


def _promote(registry: Any, args: argparse.Namespace) -> Any:
    """The rollback or promotion ``args`` ask for; ``None`` when they only ask for the status."""
    if args.rollback:
        return registry.rollback(args.model, dry_run=args.dry_run)
    if args.version is not None:
        return registry.promote(args.model, args.version, force=args.force, dry_run=args.dry_run)
    return None


def run_promote(args: argparse.Namespace) -> int:
    """Promote a version, roll back, or show the registry state of ``--model``."""
    from mlflow.exceptions import MlflowException

    from glide.tracking.registry import ModelRegistry, RegistryError
    from glide.tracking.runs import TrackingUnavailableError
    from glide.tracking.store import store_lock

    try:
        client = _client(args)
        registry = ModelRegistry(client, _promotion_config(args.overrides))
        # the register stage's lock: a decision is read and applied with no writer in between
        with store_lock(client.tracking_uri, "registry", _root()):
            result = _promote(registry, args)
        if result is None:
            return _status(registry, args.model)
    except (TrackingUnavailableError, RegistryError, LookupError, ValueError) as exc:
        return _fail("promote", str(exc))
    except MlflowException as exc:
        return _fail("promote", str(exc).splitlines()[0])
    print(result.describe())
    if not result.applied and not args.dry_run and result.decision == "challenger":
        print(f"glide promote: v{result.version} failed the gate; --force to promote anyway")
        return 1
    return 0


def _add_compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "run_ids",
        nargs="*",
        metavar="RUN_OR_EXP",
        help="run ids, or DVC experiment names (their --stage run, default evaluate)",
    )
    p.add_argument("--experiment", default="glide", help="MLflow experiment (default: glide)")
    p.add_argument("--stage", default=None, help="only runs of this stage, e.g. evaluate")
    p.add_argument("--last", type=int, default=5, help="how many recent runs (default: 5)")
    p.add_argument("--model", default=None, help="compare the versions of a registered model")
    p.add_argument("--versions", nargs="*", default=[], help="with --model: these versions")
    p.add_argument(
        "--metrics",
        nargs="*",
        default=None,
        metavar="GLOB",
        help="metric names or globs to show (default: summaries and losses)",
    )
    p.add_argument("--report", default=None, help="write a report (.md or .html) with samples")
    p.add_argument("--images", type=int, default=8, help="sample images per run (default: 8)")
    _add_tracking(p)


def run_compare(args: argparse.Namespace) -> int:
    """Print the comparison table; optionally write the report with sample grids."""
    from mlflow.exceptions import MlflowException

    from glide.tracking.compare import (
        DEFAULT_METRICS,
        collect_images,
        compare_runs,
        fetch_model_versions,
        fetch_runs,
        write_report,
    )
    from glide.tracking.runs import TrackingUnavailableError

    try:
        client = _client(args)
        if args.model:
            runs = fetch_model_versions(client, args.model, args.versions)
        else:
            runs = fetch_runs(
                client,
                run_ids=args.run_ids,
                experiment=args.experiment,
                stage=args.stage,
                last=args.last,
            )
        if not runs:
            return _fail("compare", "no runs matched")
        comparison = compare_runs(runs, args.metrics or DEFAULT_METRICS)
        print(comparison.format_table())
        if summary := comparison.data_summary():
            print(summary)
        if args.report:
            with tempfile.TemporaryDirectory() as tmp:
                images = {
                    r.run_id: collect_images(
                        client, r.run_id, Path(tmp) / r.run_id, limit=args.images
                    )
                    for r in runs
                    if r.run_id
                }
                path = write_report(comparison, images, args.report)
            print(f"wrote {path}")
    except (TrackingUnavailableError, LookupError, OSError) as exc:
        return _fail("compare", str(exc))
    except MlflowException as exc:
        return _fail("compare", str(exc).splitlines()[0])
    return 0


def _add_replay_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="mlflow-pending/<stage>-<run>.json")
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="store to write into (default: the one the stage used, else $MLFLOW_TRACKING_URI)",
    )


def run_replay(args: argparse.Namespace) -> int:
    """Write the MLflow calls a stage saved while the tracking server was down."""
    import json

    import mlflow
    from mlflow.exceptions import MlflowException

    from glide.tracking.buffer import replay
    from glide.tracking.runs import TrackingUnavailableError, ensure_reachable

    for name in args.files:
        path = Path(name)
        try:
            uri = args.tracking_uri or json.loads(path.read_text())["tracking_uri"]
            ensure_reachable(uri)
            done = replay(path, mlflow.MlflowClient(tracking_uri=uri))
        except (TrackingUnavailableError, OSError, KeyError, ValueError) as exc:
            return _fail("replay", f"{path}: {exc}")
        except MlflowException as exc:
            return _fail("replay", f"{path}: {str(exc).splitlines()[0]} (the rest is kept)")
        print(f"glide replay: {path}: {done} calls written to {uri}")
    return 0


_PROMOTE_HELP = "promote a registered model version to champion (gated), or roll back"
_COMPARE_HELP = "compare runs: differing parameters, key metrics, sample grids side by side"

Command = tuple[
    str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]
]
PROMOTE_COMMAND: Command = ("promote", _PROMOTE_HELP, _add_promote_arguments, run_promote)
COMPARE_COMMAND: Command = ("compare", _COMPARE_HELP, _add_compare_arguments, run_compare)
REPLAY_COMMAND: Command = (
    "replay",
    "write the MLflow metrics, tags and artifacts a stage kept while the server was down",
    _add_replay_arguments,
    run_replay,
)


def _add(subparsers: Any, command: Command) -> argparse.ArgumentParser:
    name, help_text, add_arguments, run = command
    p = subparsers.add_parser(name, help=help_text, description=help_text)
    add_arguments(p)
    p.set_defaults(_run=run)
    return p


def add_promote_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``promote`` to an ``add_subparsers()`` object (dispatch via ``args._run(args)``)."""
    return _add(subparsers, PROMOTE_COMMAND)


def add_compare_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``compare`` to an ``add_subparsers()`` object (dispatch via ``args._run(args)``)."""
    return _add(subparsers, COMPARE_COMMAND)


def main(argv: list[str] | None = None) -> int:
    """``python -m glide.tracking.commands promote|compare ...`` (the same as ``glide ...``)."""
    parser = argparse.ArgumentParser(prog="glide", description="GLIDE registry and comparison")
    subs = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_promote_parser(subs)
    add_compare_parser(subs)
    _add(subs, REPLAY_COMMAND)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return int(args._run(args))


if __name__ == "__main__":
    sys.exit(main())
