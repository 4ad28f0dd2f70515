"""MLflow Model Registry: register trained models with lineage, gate them, move aliases.

Every model the pipeline trains (``models/<name>/model.pt``) becomes a version of a registered
model (``glide-base``, ``glide-upsampler``, ``glide-inpaint``, ``glide-clip``). Its source is the
training run's MLflow logged model holding that export (:mod:`glide.tracking.mlflow_model`; logged
here when the run has none), and the evaluation metrics are logged against that logged model
(MLflow 3 model metrics, through the evaluate run): the UI lists them on the model's page, which
the version's page links ("Source Model"), and the version's description shows the gated ones.
The version's tags (at most :data:`MAX_VERSION_TAGS`, whatever the evaluation sweep) are

- ``glide.sha256`` (the export's digest: registering the same file again is a no-op),
- ``lineage.*``: git commit, the ``dvc.lock`` hashes of the training stage's data and config,
  the MLflow runs that trained and evaluated it,
- ``train.*``: how training ended (``train.stopped_by``: ``max_steps``, or ``max_time`` for a
  model the time cap truncated; ``train.steps``: ``<done>/<max_steps>``), from the export,
- ``promotion.*``: the gate's decision and its reasons.

Versions registered before the metrics moved to the logged model carry them as ``metric.*`` tags;
the gate still reads those (:meth:`ModelRegistry.version_metrics`).

Aliases: ``champion`` (in production), ``previous`` (the champion it replaced; rollback target)
and ``challenger`` (the latest version that failed the gate). :func:`evaluate_gate` is a pure
function; :class:`ModelRegistry` applies its decisions to a tracking store.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glide.config import to_dataclass

__all__ = [
    "GateDecision",
    "MetricRule",
    "ModelRegistry",
    "PromotionConfig",
    "PromotionResult",
    "RegistrationResult",
    "RegistryError",
    "TrainingOutcome",
    "evaluate_gate",
    "file_sha256",
    "flatten_metrics",
    "lineage_tags",
    "mlflow_metric_name",
    "training_outcome",
    "version_model_id",
]

EXPORT_FILE = "model.pt"
SUMMARY_FILE = "summary.json"
EXPORT_ARTIFACT_DIR = "export"
RUN_ID_FILE = "mlflow_run_id"
MAX_TAG_CHARS = 5000  # MLflow's limit on a model-version tag value

TAG_SHA = "glide.sha256"
TAG_DECISION = "promotion.decision"
TAG_REASONS = "promotion.reasons"
TAG_COMPARED = "promotion.compared_to"
TAG_REPLACED = "promotion.replaced"
TAG_DECIDED_AT = "promotion.decided_at"
TAG_TRAIN_RUN = "lineage.train_run_id"
TAG_EVALUATE_RUN = "lineage.evaluate_run_id"
TAG_STOPPED_BY = "train.stopped_by"
TAG_STEPS = "train.steps"
COMPLETED = "max_steps"  # glide.training.run.STOPPED_BY_STEPS (not imported: torch-free module)
LEGACY_METRIC_PREFIX = "metric."  # version tags of the metrics, before they moved to the model
MAX_VERSION_TAGS = 20  # sha + 11 lineage + 2 train + 5 promotion tags: 19 at most
NOT_MODEL_METRICS = ("info.",)  # evaluation bookkeeping (images generated, cached), not quality
METRICS_PER_BATCH = 1000  # MLflow's cap on metrics in one log_batch


class RegistryError(RuntimeError):
    """A registry operation that cannot be done (unknown model or version, nothing to roll back)."""


@dataclass(frozen=True)
class MetricRule:
    """One gated metric (a flattened key of ``metrics/evaluate.json``, e.g. ``cfg.3.fd_clip``).

    ``min``/``max`` are absolute bounds; against the champion the candidate may be worse by at
    most ``tolerance + rel_tolerance * |champion|`` (``tolerance`` None: the config's; a negative
    allowance demands an improvement). With ``baseline`` (another key of the same evaluation,
    e.g. the teacher's row for a distilled model) the candidate is held against that value
    instead of the champion's.
    """

    metric: str
    higher_is_better: bool = True
    min: float | None = None
    max: float | None = None
    tolerance: float | None = None
    rel_tolerance: float = 0.0
    required: bool = True  # a missing metric fails the gate (else the rule is skipped)
    baseline: str | None = None  # compare with this metric of the same evaluation, not the champion


@dataclass(frozen=True)
class PromotionConfig:
    """``conf/promotion/*.yaml``: which models to register and the gate they must pass."""

    metrics_file: str = "metrics/evaluate.json"
    models: Mapping[str, str] = field(default_factory=dict)  # registered name -> export folder
    rules: tuple[MetricRule, ...] = ()
    tolerance: float = 0.0  # default allowed regression against the champion (absolute)
    auto_promote: bool = True  # the register stage applies the gate (else: challenger only)
    champion_alias: str = "champion"
    previous_alias: str = "previous"
    challenger_alias: str = "challenger"
    report_file: str = "reports/register.json"
    allow_truncated: bool = False  # promote models whose training max_time cut short

    @classmethod
    def from_dict(cls, section: Mapping[str, Any]) -> PromotionConfig:
        """Build from the composed ``promotion`` section (unknown keys are named)."""
        flat = dict(section)
        flat["rules"] = tuple(to_dataclass(MetricRule, r) for r in flat.get("rules") or ())
        flat["models"] = dict(flat.get("models") or {})
        return to_dataclass(cls, flat)


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict on a candidate and one human-readable reason per rule."""

    passed: bool
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class TrainingOutcome:
    """How a model's training ended: ``stopped_by`` (``max_steps`` when every step ran, else
    what cut it short, e.g. ``max_time``) after ``step`` of ``max_steps`` steps."""

    stopped_by: str
    step: int | None = None
    max_steps: int | None = None

    @property
    def truncated(self) -> bool:
        return self.stopped_by != COMPLETED

    def describe(self) -> str:
        """``stopped by max_time at step 163 of 600``."""
        where = f" at step {self.step} of {self.max_steps}" if self.step is not None else ""
        return f"stopped by {self.stopped_by}{where}"

    def tags(self) -> dict[str, str]:
        """The version tags that record it."""
        tags = {TAG_STOPPED_BY: self.stopped_by}
        if self.step is not None and self.max_steps is not None:
            tags[TAG_STEPS] = f"{self.step}/{self.max_steps}"
        return tags

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> TrainingOutcome | None:
        """Read back :meth:`tags` (None for versions registered without them)."""
        stopped_by = tags.get(TAG_STOPPED_BY)
        if not stopped_by:
            return None
        done, _, total = tags.get(TAG_STEPS, "").partition("/")
        if done.isdigit() and total.isdigit():
            return cls(stopped_by, int(done), int(total))
        return cls(stopped_by)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> TrainingOutcome | None:
        """From an export's ``extra`` or a ``summary.json`` (keys ``stopped_by``, ``step``,
        ``max_steps``); None when it does not say (written before the key existed)."""
        stopped_by = record.get("stopped_by")
        if not isinstance(stopped_by, str):
            return None
        step, max_steps = record.get("step"), record.get("max_steps")
        if isinstance(step, int) and isinstance(max_steps, int):
            return cls(stopped_by, step, max_steps)
        return cls(stopped_by)


def training_outcome(model_dir: str | Path) -> TrainingOutcome | None:
    """How the model in ``model_dir`` was trained: the ``extra`` of its ``model.pt`` export (the
    registered file itself), else the ``summary.json`` training wrote beside it; None when
    neither records it."""
    from glide.models.export import read_metadata

    folder = Path(model_dir)
    try:
        outcome = TrainingOutcome.from_record(
            read_metadata(folder / EXPORT_FILE).get("extra") or {}
        )
    except (OSError, ValueError):  # not a glide export (an imported file, a test stand-in)
        outcome = None
    summary = folder / SUMMARY_FILE
    if outcome is None and summary.is_file():
        try:
            outcome = TrainingOutcome.from_record(json.loads(summary.read_text()))
        except (OSError, ValueError):
            outcome = None
    return outcome


def mlflow_metric_name(key: str) -> str:
    """``key`` as MLflow stores it (``+`` is not allowed in a metric name): ``samplers.dpm++-10.x``
    -> ``samplers.dpmpp-10.x``, as the evaluate run logs it."""
    return key.replace("+", "p")


def _lookup(metrics: Mapping[str, float], key: str) -> float | None:
    """``metrics[key]``, or under its MLflow name (metrics read back from the store)."""
    value = metrics.get(key)
    return metrics.get(mlflow_metric_name(key)) if value is None else value


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """``{"cfg": {"3": {"fd_clip": 1.0}}}`` -> ``{"cfg.3.fd_clip": 1.0}`` (numbers only)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_metrics(value, f"{name}."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def evaluate_gate(
    candidate: Mapping[str, float],
    champion: Mapping[str, float] | None,
    config: PromotionConfig,
    *,
    champion_label: str = "champion",
    training: TrainingOutcome | None = None,
) -> GateDecision:
    """Check ``candidate`` against the absolute bounds and the champion's metrics (if any); a
    ``training`` that was cut short (``max_time``) fails unless ``config.allow_truncated``."""
    passed, reasons = True, []
    if training is not None and training.truncated:
        what = f"truncated: {training.describe()}"
        if config.allow_truncated:
            reasons.append(f"ok {what} (promotion.allow_truncated)")
        else:
            passed = False
            reasons.append(f"FAIL {what} (train every step, or set promotion.allow_truncated)")
    for rule in config.rules:
        value = _lookup(candidate, rule.metric)
        if value is None:
            if rule.required:
                passed = False
                reasons.append(f"FAIL {rule.metric}: missing from the evaluation metrics")
            continue
        if rule.min is not None and value < rule.min:
            passed = False
            reasons.append(f"FAIL {rule.metric}={value:.6g} < min {rule.min:g}")
        if rule.max is not None and value > rule.max:
            passed = False
            reasons.append(f"FAIL {rule.metric}={value:.6g} > max {rule.max:g}")
        if rule.baseline is not None:
            best, label = _lookup(candidate, rule.baseline), rule.baseline
            if best is None:
                passed = passed and not rule.required
                verdict = "FAIL" if rule.required else "ok"
                reasons.append(
                    f"{verdict} {rule.metric}: baseline {label} missing from the metrics"
                )
                continue
        else:
            best, label = (_lookup(champion, rule.metric) if champion is not None else None), None
        if best is None:
            reasons.append(f"ok {rule.metric}={value:.6g} (no {champion_label} value to compare)")
            continue
        tol = config.tolerance if rule.tolerance is None else rule.tolerance
        allowed = tol + rule.rel_tolerance * abs(best)
        regression = (best - value) if rule.higher_is_better else (value - best)
        verdict = "ok" if regression <= allowed + 1e-12 else "FAIL"
        passed = passed and verdict == "ok"
        direction = "higher" if rule.higher_is_better else "lower"
        reasons.append(
            f"{verdict} {rule.metric}={value:.6g} vs {label or champion_label} {best:.6g} "
            f"({direction} is better, tolerance {allowed:.4g})"
        )
    if not config.rules:
        reasons.append("ok no gate rules configured")
    return GateDecision(passed=passed, reasons=tuple(reasons))


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _lock_entry(lock: Mapping[str, Any], model_dir: str) -> tuple[str, Mapping[str, Any]] | None:
    """The ``dvc.lock`` stage whose outputs hold ``model_dir`` (or lie inside it)."""
    target = Path(model_dir).as_posix().rstrip("/")
    for stage, entry in (lock.get("stages") or {}).items():
        for out in entry.get("outs") or ():
            path = str(out.get("path", "")).rstrip("/")
            if path == target or path.startswith(f"{target}/") or target.startswith(f"{path}/"):
                return str(stage), entry
    return None


def _hash_list(items: list[Mapping[str, Any]]) -> str:
    return " ".join(
        f"{d.get('path')}={d.get('md5') or d.get('hash') or d.get('etag') or '?'}"
        for d in sorted(items, key=lambda d: str(d.get("path")))
    )


def lineage_tags(root: str | Path, model_dir: str | Path) -> dict[str, str]:
    """Git commit and the ``dvc.lock`` hashes (data, config, code, params, output) of the stage
    that wrote ``model_dir``, and the MLflow run recorded beside the model."""
    import yaml

    root = Path(root)
    tags: dict[str, str] = {}
    commit = _git(root, "rev-parse", "HEAD")
    if commit:
        tags["lineage.git_commit"] = commit
        dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
        tags["lineage.git_dirty"] = str(bool(dirty)).lower()
    run_file = root / model_dir / RUN_ID_FILE
    if run_file.is_file():
        tags[TAG_TRAIN_RUN] = run_file.read_text().strip()
    lock_path = root / "dvc.lock"
    if not lock_path.is_file():
        return tags
    lock = yaml.safe_load(lock_path.read_text()) or {}
    found = _lock_entry(lock, Path(model_dir).as_posix())
    if found is None:
        return tags
    stage, entry = found
    deps = list(entry.get("deps") or ())
    groups = {
        "lineage.data": [
            d for d in deps if str(d.get("path", "")).startswith(("data/", "models/"))
        ],
        "lineage.config": [d for d in deps if str(d.get("path", "")).startswith("conf")],
    }
    groups["lineage.code"] = [
        d
        for d in deps
        if not any(d in g for g in (groups["lineage.data"], groups["lineage.config"]))
    ]
    tags["lineage.dvc_stage"] = stage
    for key, items in groups.items():
        if items:
            tags[key] = _hash_list(items)
    if entry.get("params"):
        params = json.dumps(entry["params"], sort_keys=True, default=str)
        tags["lineage.params_sha256"] = hashlib.sha256(params.encode()).hexdigest()
    tags["lineage.outs"] = _hash_list(list(entry.get("outs") or ()))
    evaluate = next(
        (
            e
            for e in (lock.get("stages") or {}).values()
            for o in e.get("outs") or ()
            if str(o.get("path")) == "metrics/evaluate.json"
        ),
        None,
    )
    if evaluate is not None:
        tags["lineage.evaluate"] = _hash_list(
            [o for o in evaluate.get("outs") or () if o.get("path") == "metrics/evaluate.json"]
        )
    return {k: v[:MAX_TAG_CHARS] for k, v in tags.items()}


@dataclass(frozen=True)
class PromotionResult:
    """What a promotion (or its dry run) decided and did."""

    name: str
    version: str
    decision: str  # "champion" | "challenger" | "unchanged" | "rolled_back"
    gate: GateDecision
    previous_champion: str | None
    applied: bool  # False for a dry run or a refused manual promotion

    def describe(self) -> str:
        """Multi-line summary for the command line."""
        what = "would become" if not self.applied and self.decision != "unchanged" else "is now"
        head = f"{self.name} v{self.version} {what} {self.decision}"
        if self.previous_champion and self.decision == "champion":
            head += f" (previous champion: v{self.previous_champion})"
        return "\n".join([head, *(f"  {r}" for r in self.gate.reasons)])


@dataclass(frozen=True)
class RegistrationResult:
    """The version a model export maps to and what the gate made of it."""

    name: str
    version: str
    created: bool  # False: this export was already registered (idempotent re-run)
    decision: str
    reasons: tuple[str, ...]
    champion: str | None  # the champion's version after registration

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": int(self.version),
            "created": self.created,
            "decision": self.decision,
            "reasons": list(self.reasons),
            "champion": None if self.champion is None else int(self.champion),
        }


class ModelRegistry:
    """Register, gate, promote and roll back versions in an MLflow Model Registry."""

    def __init__(self, client: Any, config: PromotionConfig) -> None:
        self.client = client
        self.config = config

    # -- look-ups ---------------------------------------------------------------------------

    def alias_version(self, name: str, alias: str) -> str | None:
        """The version ``alias`` points to, or None."""
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(name, alias).version)
        except MlflowException:
            return None

    def version(self, name: str, version: str | int) -> Any:
        """A model version entity; :class:`RegistryError` when absent."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version(name, str(version))
        except MlflowException:
            raise RegistryError(f"registered model {name!r} has no version {version}") from None

    def version_metrics(self, name: str, version: str | int) -> dict[str, float]:
        """A version's metrics: those of its logged model (MLflow names, the latest value of
        each), else the ``metric.*`` tags of a version registered before they moved there, then
        the metrics of the evaluate run it links (``lineage.evaluate_run_id``) for the rest."""
        entity = self.version(name, version)
        tags = entity.tags or {}
        out = self._run_metrics(tags.get(TAG_EVALUATE_RUN))
        for key, value in tags.items():
            if key.startswith(LEGACY_METRIC_PREFIX):
                try:
                    out[key[len(LEGACY_METRIC_PREFIX) :]] = float(value)
                except ValueError:
                    continue
        out.update(self.model_metrics(version_model_id(entity)))
        return out

    def model_metrics(self, model_id: str | None) -> dict[str, float]:
        """The metrics of logged model ``model_id``: the latest value of each (by step, then
        time); empty without a model (or one this store does not have)."""
        model = self._get_logged_model(model_id)
        latest: dict[str, Any] = {}
        for m in (model.metrics or []) if model is not None else []:
            seen = latest.get(m.key)
            if seen is None or (m.step, m.timestamp) >= (seen.step, seen.timestamp):
                latest[m.key] = m
        return {k: float(m.value) for k, m in latest.items()}

    def _get_logged_model(self, model_id: str | None) -> Any | None:
        """Logged model ``model_id``, or None (no id, deleted, another store, an older MLflow)."""
        from mlflow.exceptions import MlflowException

        if not model_id:
            return None
        try:
            return self.client.get_logged_model(model_id)
        except (MlflowException, AttributeError):
            return None

    def _run_metrics(self, run_id: str | None) -> dict[str, float]:
        from mlflow.exceptions import MlflowException

        if not run_id:
            return {}
        try:
            return dict(self.client.get_run(run_id).data.metrics)
        except MlflowException:  # deleted, or from another store: the tags still hold
            return {}

    def _log_model_metrics(
        self,
        model_id: str,
        metrics: Mapping[str, float],
        *,
        run_id: str,
        evaluate_run_id: str | None,
    ) -> None:
        """Log ``metrics`` against logged model ``model_id`` (MLflow 3 model metrics), through the
        evaluate run when this store has it (else ``run_id``, the version's run), each with the
        time and step the evaluate run logged it at, so that run's history gains no duplicate;
        keys the model already has are left as they are (a re-run is a no-op)."""
        from mlflow.entities import Metric
        from mlflow.exceptions import MlflowException

        named = {
            mlflow_metric_name(k): float(v)
            for k, v in metrics.items()
            if not k.startswith(NOT_MODEL_METRICS)
        }
        have = set(self.model_metrics(model_id))
        named = {k: v for k, v in named.items() if k not in have}
        if not named:
            return
        writer, stamps = run_id, {}
        if evaluate_run_id:
            try:
                evaluate = self.client.get_run(evaluate_run_id)
            except MlflowException:  # deleted, or from another store
                evaluate = None
            if evaluate is not None and evaluate.info.lifecycle_stage == "active":
                writer = evaluate_run_id
                for m in getattr(evaluate.data, "_metric_objs", None) or ():
                    if named.get(m.key) == m.value:
                        stamps[m.key] = (m.timestamp, m.step)
        now = int(time.time() * 1000)
        batch = [
            Metric(key, value, *stamps.get(key, (now, 0)), model_id=model_id)
            for key, value in sorted(named.items())
        ]
        for i in range(0, len(batch), METRICS_PER_BATCH):
            self.client.log_batch(writer, metrics=batch[i : i + METRICS_PER_BATCH])

    def _description(
        self,
        model_file: Path,
        sha: str,
        run_id: str,
        evaluate_run_id: str | None,
        model_id: str | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> str:
        """Markdown for the version page: the export, links to its training and evaluate runs
        (the training run's page lists the datasets it read and links their prepare run) and to
        its logged model (every evaluation metric), and the values of the gated metrics."""
        from mlflow.exceptions import MlflowException

        from glide.tracking.datasets import run_link

        lines = [f"`{model_file}` sha256:{sha[:12]}", ""]
        for label, rid in (("Trained by", run_id), ("Evaluated by", evaluate_run_id)):
            if not rid:
                continue
            try:
                run = self.client.get_run(rid)
            except MlflowException:
                lines.append(f"- {label} run `{rid}`")
                continue
            name = run.info.run_name or rid[:8]
            lines.append(f"- {label} {run_link(run.info.experiment_id, rid, name)}")
        model = self._get_logged_model(model_id)
        count = len({m.key for m in model.metrics or []}) if model is not None else 0
        if count:
            where = f"[{model_id}](#/experiments/{model.experiment_id}/models/{model_id})"
            lines.append(f"- All {count} evaluation metrics on its logged model {where}")
        gated = sorted(
            {r.metric for r in self.config.rules}
            | {r.baseline for r in self.config.rules if r.baseline}
        )
        rows = [(k, _lookup(metrics or {}, k)) for k in gated]
        rows = [(k, v) for k, v in rows if v is not None]
        if rows:
            lines += ["", "| gated metric | value |", "|---|---|"]
            lines += [f"| `{k}` | {v:.6g} |" for k, v in rows]
        return "\n".join(lines)

    def _list_version_on_model(self, model_id: str, name: str, version: str) -> None:
        """Name the version on its logged model (tag ``mlflow.modelVersions``, as
        ``mlflow.register_model`` does): the model's page then links its registered versions."""
        from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

        model = self._get_logged_model(model_id)
        if model is None:  # deleted, or in another store: nothing to link
            return
        tags = model.tags or {}
        try:
            listed = json.loads(tags.get(MLFLOW_MODEL_VERSIONS) or "[]")
        except ValueError:
            listed = []
        entry = {"name": name, "version": int(version)}
        if entry not in listed:
            value = json.dumps([*listed, entry])
            self.client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: value})

    def _store_as_default(self) -> AbstractContextManager[Any]:
        """This client's tracking store as MLflow's default while the block runs: an SQLite
        registry resolves a ``models:/<model id>`` source with a default ``MlflowClient()``
        (a TODO in MLflow 3's ``SqlAlchemyStore.create_model_version``), not the caller's."""
        uri = getattr(self.client, "tracking_uri", None)
        if not isinstance(uri, str):
            return nullcontext()
        try:
            from mlflow.tracking._tracking_service.utils import _use_tracking_uri
        except ImportError:  # moved in another MLflow release: the default store it is
            return nullcontext()
        return _use_tracking_uri(uri)

    def find_by_sha(self, name: str, sha: str) -> Any | None:
        """The version registered from the export with digest ``sha``, if any."""
        versions = self.client.search_model_versions(f"name='{name}'")
        hits = [v for v in versions if (v.tags or {}).get(TAG_SHA) == sha]
        return min(hits, key=lambda v: int(v.version)) if hits else None

    # -- registration -----------------------------------------------------------------------

    def _ensure_registered_model(self, name: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException:
            self.client.create_registered_model(
                name, description="GLIDE model trained by the glide pipeline"
            )

    def _source(
        self, *, name: str, model_file: Path, sha: str, run_id: str | None, experiment: str
    ) -> tuple[str, str, str]:
        """(source URI, run id, logged-model id) for a new version of ``name``.

        The source is the logged model of the training run that holds this export (tag
        ``glide.sha256``); a run without one (``train.log_mlflow_model=false``, a model logged
        before the format changed) gets it logged here, from ``model_file``. Without a run, a new
        ``import_<name>`` run. The run's ``export/`` folder (what ``glide sample`` reads) gets
        ``model.pt`` when it lacks it.
        """
        from mlflow.exceptions import MlflowException

        from glide.tracking.mlflow_model import log_export_model

        run = None
        if run_id:
            try:
                run = self.client.get_run(run_id)
            except MlflowException:
                run = None
        if run is None:
            exp = self.client.get_experiment_by_name(experiment)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(experiment)
            run = self.client.create_run(
                exp_id, run_name=f"import_{name}", tags={"stage": "import"}
            )
            self.client.log_artifact(run.info.run_id, str(model_file), EXPORT_ARTIFACT_DIR)
            self.client.set_terminated(run.info.run_id)
        run_id = run.info.run_id
        names = [a.path for a in self.client.list_artifacts(run_id, EXPORT_ARTIFACT_DIR)]
        if f"{EXPORT_ARTIFACT_DIR}/{EXPORT_FILE}" not in names:
            self.client.log_artifact(run_id, str(model_file), EXPORT_ARTIFACT_DIR)
        model_id = self._logged_model(run, sha)
        if model_id is None:
            model_id = log_export_model(
                self.client, run_id=run_id, model_file=model_file, sha256=sha
            )
        return f"models:/{model_id}", run_id, model_id

    def _logged_model(self, run: Any, sha: str) -> str | None:
        """The newest ready logged model of ``run`` that holds the export with digest ``sha``."""
        from mlflow.entities import LoggedModelStatus
        from mlflow.exceptions import MlflowException

        from glide.tracking.mlflow_model import TAG_MODEL_SHA

        try:
            logged = self.client.search_logged_models(
                experiment_ids=[run.info.experiment_id],
                filter_string=f"source_run_id='{run.info.run_id}'",
            )
        except (MlflowException, AttributeError):
            return None
        hits = [
            m
            for m in logged
            if (m.tags or {}).get(TAG_MODEL_SHA) == sha and m.status == LoggedModelStatus.READY
        ]
        return max(hits, key=lambda m: m.creation_timestamp).model_id if hits else None

    def register(
        self,
        *,
        name: str,
        model_dir: str | Path,
        metrics: Mapping[str, float],
        lineage: Mapping[str, str],
        experiment: str = "glide",
        evaluate_run_id: str | None = None,
    ) -> RegistrationResult:
        """Register ``model_dir/model.pt`` as a new version of ``name`` (once per file digest)
        and, with ``auto_promote``, pass it through the gate. ``metrics`` (flattened
        ``metrics/evaluate.json``) are logged against the version's logged model, through
        ``evaluate_run_id`` (the run that wrote them, linked from the version) when given."""
        model_file = Path(model_dir) / EXPORT_FILE
        if not model_file.is_file():
            raise RegistryError(f"{model_file} not found: train it first (dvc repro)")
        sha = file_sha256(model_file)
        self._ensure_registered_model(name)
        existing = self.find_by_sha(name, sha)
        created = existing is None
        if existing is None:
            run_file = Path(model_dir) / RUN_ID_FILE
            run_id = run_file.read_text().strip() if run_file.is_file() else None
            source, run_id, model_id = self._source(
                name=name, model_file=model_file, sha=sha, run_id=run_id, experiment=experiment
            )
            # before the version exists: a version never lacks its metrics
            self._log_model_metrics(
                model_id, metrics, run_id=run_id, evaluate_run_id=evaluate_run_id
            )
            tags = {TAG_SHA: sha, **lineage, TAG_TRAIN_RUN: run_id}
            outcome = training_outcome(model_dir)
            if outcome is not None:
                tags.update(outcome.tags())
            if evaluate_run_id:
                tags[TAG_EVALUATE_RUN] = evaluate_run_id
            description = self._description(
                model_file, sha, run_id, evaluate_run_id, model_id, metrics
            )
            with self._store_as_default():
                existing = self.client.create_model_version(
                    name,
                    source,
                    run_id=run_id,
                    tags={k: str(v)[:MAX_TAG_CHARS] for k, v in tags.items()},
                    description=description,
                    model_id=model_id,
                )
        version = str(existing.version)
        model_id = version_model_id(existing)
        if model_id:  # again on a re-run: registration may have stopped before it
            self._list_version_on_model(model_id, name, version)
        decision = (self.version(name, version).tags or {}).get(TAG_DECISION)
        if decision is None:  # new, or registration was interrupted before the gate
            if self.config.auto_promote:
                result = self.promote(name, version, record_failure=True)
            else:
                result = self._mark_challenger(name, version, ("auto_promote is off",))
            decision, reasons = result.decision, result.gate.reasons
        else:
            reasons = tuple(
                (self.version(name, version).tags or {}).get(TAG_REASONS, "").split("\n")
            )
        return RegistrationResult(
            name=name,
            version=version,
            created=created,
            decision=decision,
            reasons=reasons,
            champion=self.alias_version(name, self.config.champion_alias),
        )

    # -- promotion --------------------------------------------------------------------------

    def _tag(self, name: str, version: str, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(name, version, key, str(value)[:MAX_TAG_CHARS])

    def _mark_challenger(
        self, name: str, version: str, reasons: tuple[str, ...]
    ) -> PromotionResult:
        champion = self.alias_version(name, self.config.champion_alias)
        self.client.set_registered_model_alias(name, self.config.challenger_alias, version)
        self._tag(
            name,
            version,
            {
                TAG_DECISION: "challenger",
                TAG_REASONS: "\n".join(reasons),
                TAG_COMPARED: champion or "none",
                TAG_DECIDED_AT: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )
        return PromotionResult(
            name, version, "challenger", GateDecision(False, reasons), champion, True
        )

    def promote(
        self,
        name: str,
        version: str | int,
        *,
        force: bool = False,
        dry_run: bool = False,
        record_failure: bool = False,
    ) -> PromotionResult:
        """Gate ``version`` against the champion (and refuse it if ``max_time`` truncated its
        training, unless ``allow_truncated``); if it passes (or ``force``), make it champion
        and the old champion ``previous``. A failing version is left alone, or with
        ``record_failure`` (the register stage) becomes ``challenger``."""
        entity = self.version(name, version)
        version = str(entity.version)
        cfg = self.config
        champion = self.alias_version(name, cfg.champion_alias)
        if champion == version:
            gate = GateDecision(True, (f"ok v{version} already holds @{cfg.champion_alias}",))
            return PromotionResult(name, version, "unchanged", gate, None, False)
        champ_metrics = self.version_metrics(name, champion) if champion else None
        gate = evaluate_gate(
            self.version_metrics(name, version),
            champ_metrics,
            cfg,
            champion_label=f"champion v{champion}" if champion else "champion",
            training=TrainingOutcome.from_tags(entity.tags or {}),
        )
        if not gate.passed and force:
            gate = GateDecision(True, (*gate.reasons, "ok forced by hand (--force)"))
        if dry_run:
            decision = "champion" if gate.passed else "challenger"
            return PromotionResult(name, version, decision, gate, champion, False)
        if not gate.passed:
            if record_failure:
                return self._mark_challenger(name, version, gate.reasons)
            return PromotionResult(name, version, "challenger", gate, champion, False)
        if champion is not None:
            self.client.set_registered_model_alias(name, cfg.previous_alias, champion)
        self.client.set_registered_model_alias(name, cfg.champion_alias, version)
        if self.alias_version(name, cfg.challenger_alias) == version:
            self.client.delete_registered_model_alias(name, cfg.challenger_alias)
        self._tag(
            name,
            version,
            {
                TAG_DECISION: "champion",
                TAG_REASONS: "\n".join(gate.reasons),
                TAG_COMPARED: champion or "none",
                TAG_REPLACED: champion or "",
                TAG_DECIDED_AT: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )
        return PromotionResult(name, version, "champion", gate, champion, True)

    def rollback(self, name: str, *, dry_run: bool = False) -> PromotionResult:
        """Give ``champion`` back to the ``previous`` version; ``previous`` then moves to the
        champion that one had replaced (or is removed)."""
        cfg = self.config
        champion = self.alias_version(name, cfg.champion_alias)
        previous = self.alias_version(name, cfg.previous_alias)
        if champion is None or previous is None:
            raise RegistryError(
                f"{name} has no @{cfg.previous_alias} version to roll back to "
                f"(@{cfg.champion_alias} = {champion or 'none'})"
            )
        reason = f"ok rolled back from v{champion} to v{previous}"
        gate = GateDecision(True, (reason,))
        if dry_run:
            return PromotionResult(name, previous, "champion", gate, champion, False)
        self.client.set_registered_model_alias(name, cfg.champion_alias, previous)
        earlier = (self.version(name, previous).tags or {}).get(TAG_REPLACED) or None
        if earlier and earlier not in (previous, champion):
            self.client.set_registered_model_alias(name, cfg.previous_alias, earlier)
        else:
            self.client.delete_registered_model_alias(name, cfg.previous_alias)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._tag(name, champion, {TAG_DECISION: "rolled_back", TAG_REASONS: reason})
        self._tag(name, champion, {TAG_DECIDED_AT: stamp})
        return PromotionResult(name, previous, "champion", gate, champion, True)


def version_model_id(version: Any) -> str | None:
    """The logged model a version was registered from (MLflow 3), if any."""
    model_id = getattr(version, "model_id", None)
    if model_id:
        return str(model_id)
    source = str(getattr(version, "source", "") or "")
    body = source[len("models:/") :] if source.startswith("models:/") else ""
    return body if body.startswith("m-") and "/" not in body else None
