"""Compare MLflow runs: the datasets they read, the parameters that differ, key metrics, sample
grids side by side.

Runs are picked by id, by stage (the ``stage`` tag every pipeline run carries) or as the training
runs behind versions of a registered model. :func:`write_report` writes Markdown (``.md``) or
HTML (``.html``) with each run's ``.png`` artifacts (evaluation grids, training samples) in one
column per run.
"""

from __future__ import annotations

import fnmatch
import html
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_METRICS",
    "Comparison",
    "RunSummary",
    "collect_images",
    "compare_runs",
    "fetch_model_versions",
    "fetch_runs",
    "write_report",
]

DEFAULT_METRICS = (
    "summary.*",
    "metric.summary.*",
    "train/loss*",
    "val/loss*",
    "kept",
    "promoted.*",
)
MAX_METRIC_COLUMNS = 12
RUN_ID = re.compile(r"[0-9a-f]{32}")  # an MLflow run id; anything else names a DVC experiment


@dataclass(frozen=True)
class RunSummary:
    """What the comparison needs from one run."""

    run_id: str
    label: str
    params: Mapping[str, str] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    datasets: Mapping[str, str] = field(default_factory=dict)  # context -> "name@digest"


def _summary(run: Any, label: str | None = None, extra: Mapping[str, float] | None = None) -> Any:
    from glide.tracking.datasets import run_datasets

    name = run.info.run_name or run.info.run_id[:8]
    return RunSummary(
        run_id=run.info.run_id,
        label=label or f"{name} {run.info.run_id[:8]}",
        params=dict(run.data.params),
        metrics={**run.data.metrics, **(extra or {})},
        datasets=run_datasets(run),
    )


def fetch_runs(
    client: Any,
    *,
    run_ids: Sequence[str] = (),
    experiment: str = "glide",
    stage: str | None = None,
    last: int = 5,
) -> list[RunSummary]:
    """The runs ``run_ids``, else the ``last`` finished runs of ``experiment`` (of ``stage``).

    An entry of ``run_ids`` that is not an MLflow run id is a DVC experiment name
    (``dvc exp show``): its newest finished run of ``stage`` (default ``evaluate``, where the
    metrics are), labelled with the name."""
    exp = client.get_experiment_by_name(experiment)
    if run_ids:
        return [
            _summary(client.get_run(r))
            if RUN_ID.fullmatch(r)
            else _summary(_experiment_run(client, exp, r, stage or "evaluate"), label=r)
            for r in run_ids
        ]
    if exp is None:
        raise LookupError(f"no MLflow experiment {experiment!r}")
    query = "attributes.status = 'FINISHED'"
    if stage:
        query += f" and tags.stage = '{stage}'"
    runs = client.search_runs(
        [exp.experiment_id], filter_string=query, order_by=["attributes.start_time DESC"]
    )
    return [_summary(r) for r in list(runs)[:last]][::-1]


def _experiment_run(client: Any, exp: Any, name: str, stage: str) -> Any:
    """The newest finished ``stage`` run tagged with DVC experiment ``name``."""
    from glide.tracking.store import EXP_NAME_TAG

    if exp is None:
        raise LookupError(f"{name!r} is neither a run id nor a DVC experiment with MLflow runs")
    query = (
        f"tags.`{EXP_NAME_TAG}` = '{name}' and tags.stage = '{stage}' "
        "and attributes.status = 'FINISHED'"
    )
    runs = client.search_runs(
        [exp.experiment_id], filter_string=query, order_by=["attributes.start_time DESC"]
    )
    if not runs:
        raise LookupError(
            f"no finished {stage} run of DVC experiment {name!r} (tag {EXP_NAME_TAG}); "
            "is it a run id or a name `dvc exp show` lists?"
        )
    return runs[0]


def fetch_model_versions(client: Any, name: str, versions: Sequence[str] = ()) -> list[RunSummary]:
    """The training runs behind versions of registered model ``name`` (all when empty), with
    each version's evaluation metrics (its logged model's; ``metric.*`` tags for versions
    registered before they moved there) added to the run's metrics as ``metric.<key>``."""
    from glide.tracking.registry import (
        LEGACY_METRIC_PREFIX,
        ModelRegistry,
        PromotionConfig,
        version_model_id,
    )

    registry = ModelRegistry(client, PromotionConfig())
    wanted = [client.get_model_version(name, str(v)) for v in versions] or sorted(
        client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version)
    )
    aliases: dict[str, list[str]] = {}
    for alias, number in (client.get_registered_model(name).aliases or {}).items():
        aliases.setdefault(str(number), []).append(alias)
    out = []
    for mv in wanted:
        extra = {}
        for key, value in (mv.tags or {}).items():
            if key.startswith(LEGACY_METRIC_PREFIX):
                try:
                    extra[key] = float(value)
                except ValueError:
                    continue
        for key, value in registry.model_metrics(version_model_id(mv)).items():
            extra[f"{LEGACY_METRIC_PREFIX}{key}"] = value
        marks = "".join(f" @{a}" for a in sorted(aliases.get(str(mv.version), [])))
        label = f"{name} v{mv.version}{marks}"
        if mv.run_id:
            out.append(_summary(client.get_run(mv.run_id), label, extra))
        else:
            out.append(RunSummary(run_id="", label=label, metrics=extra))
    return out


@dataclass(frozen=True)
class Comparison:
    """Runs with the datasets they read (by context), the parameters that differ between them
    and the chosen metrics."""

    runs: tuple[RunSummary, ...]
    params: tuple[str, ...]
    metrics: tuple[str, ...]
    datasets: tuple[str, ...] = ()  # contexts any run logged a dataset in

    def rows(self) -> list[list[str]]:
        """Header row, then one row per run (missing values as ``-``; datasets as
        ``name@<first 8 digest characters>``)."""
        rows = [["run", *(f"data:{c}" for c in self.datasets), *self.params, *self.metrics]]
        for run in self.runs:
            values = [_short_dataset(run.datasets.get(c)) for c in self.datasets]
            values += [run.params.get(p, "-") for p in self.params]
            values += [_fmt(run.metrics.get(m)) for m in self.metrics]
            rows.append([run.label, *values])
        return rows

    def data_summary(self) -> str | None:
        """``same data: yes (...)`` when every run read the same datasets (name and digest) in
        every context, else ``same data: no (...)``; None when no run logged a dataset."""
        if not self.datasets:
            return None
        differ = [c for c in self.datasets if len({r.datasets.get(c) for r in self.runs}) > 1]
        if differ:
            return f"same data: no ({', '.join(differ)} differ)"
        same = "; ".join(f"{c}: {self.runs[0].datasets[c]}" for c in self.datasets)
        return f"same data: yes ({same})"

    def format_table(self) -> str:
        """A plain-text table aligned on columns."""
        rows = self.rows()
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(line.rstrip() for line in lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _short_dataset(label: str | None) -> str:
    if not label:
        return "-"
    return ", ".join(
        f"{name}@{digest[:8]}" for name, _, digest in (p.rpartition("@") for p in label.split(", "))
    )


def compare_runs(
    runs: Sequence[RunSummary], metric_patterns: Iterable[str] = DEFAULT_METRICS
) -> Comparison:
    """Keep the parameters whose values differ between ``runs`` (a missing one differs) and the
    metrics matching ``metric_patterns`` (shell globs), at most 12 of them."""
    keys = sorted({k for r in runs for k in r.params})
    params = [k for k in keys if len({r.params.get(k) for r in runs}) > 1]
    names = sorted({k for r in runs for k in r.metrics})
    metrics: list[str] = []
    for pattern in metric_patterns:
        metrics += [n for n in names if fnmatch.fnmatchcase(n, pattern) and n not in metrics]
    contexts = tuple(sorted({c for r in runs for c in r.datasets}))
    return Comparison(tuple(runs), tuple(params), tuple(metrics[:MAX_METRIC_COLUMNS]), contexts)


def collect_images(
    client: Any, run_id: str, dest: str | Path, *, limit: int = 8, max_depth: int = 3
) -> dict[str, Path]:
    """Download up to ``limit`` ``.png`` artifacts of a run: ``{artifact path: local file}``."""
    found: list[str] = []
    queue: list[tuple[str | None, int]] = [(None, 0)]
    while queue and len(found) < limit:
        path, depth = queue.pop(0)
        for item in sorted(client.list_artifacts(run_id, path), key=lambda a: a.path):
            if item.is_dir and depth < max_depth:
                queue.append((item.path, depth + 1))
            elif item.path.lower().endswith(".png") and len(found) < limit:
                found.append(item.path)
    out = {}
    for artifact in found:
        local = client.download_artifacts(run_id, artifact, str(dest))
        out[artifact] = Path(local)
    return out


def write_report(
    comparison: Comparison,
    images: Mapping[str, Mapping[str, Path]],
    path: str | Path,
    *,
    title: str = "GLIDE run comparison",
) -> Path:
    """Markdown (``.md``) or HTML (``.html``, ``.htm``) report: the table, then each artifact's
    images side by side, one column per run. Images are copied next to the report."""
    path = Path(path)
    as_html = path.suffix.lower() in (".html", ".htm")
    assets = path.with_name(f"{path.stem}_files")
    shutil.rmtree(assets, ignore_errors=True)
    rel: dict[str, dict[str, str]] = {}
    for i, run in enumerate(comparison.runs):
        for artifact, local in images.get(run.run_id, {}).items():
            target = assets / f"run{i}" / artifact
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local, target)
            rel.setdefault(artifact, {})[run.run_id] = target.relative_to(path.parent).as_posix()
    rows = comparison.rows()
    labels = [r.label for r in comparison.runs]
    path.parent.mkdir(parents=True, exist_ok=True)
    if as_html:
        path.write_text(_html(title, rows, labels, comparison, rel))
    else:
        path.write_text(_markdown(title, rows, labels, comparison, rel))
    return path


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _markdown(
    title: str,
    rows: list[list[str]],
    labels: list[str],
    comparison: Comparison,
    rel: Mapping[str, Mapping[str, str]],
) -> str:
    lines = [f"# {title}", "", "## Runs", ""]
    lines.append("| " + " | ".join(_md_cell(c) for c in rows[0]) + " |")
    lines.append("|" + "---|" * len(rows[0]))
    lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows[1:]]
    if summary := comparison.data_summary():
        lines += ["", _md_cell(summary)]
    lines += ["", f"Run ids: {', '.join(r.run_id or '-' for r in comparison.runs)}", ""]
    if rel:
        lines += ["## Samples", "", "| artifact | " + " | ".join(map(_md_cell, labels)) + " |"]
        lines.append("|" + "---|" * (len(labels) + 1))
        for artifact in sorted(rel):
            cells = [
                f"![{_md_cell(r.label)}]({rel[artifact][r.run_id]})"
                if r.run_id in rel[artifact]
                else "-"
                for r in comparison.runs
            ]
            lines.append(f"| `{artifact}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _html(
    title: str,
    rows: list[list[str]],
    labels: list[str],
    comparison: Comparison,
    rel: Mapping[str, Mapping[str, str]],
) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>\n" for r in rows[1:])
    parts = [
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{esc(title)}</title>",
        "<style>table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px}"
        "img{max-width:320px}</style></head><body>",
        f"<h1>{esc(title)}</h1><h2>Runs</h2><table><tr>{head}</tr>\n{body}</table>",
    ]
    if summary := comparison.data_summary():
        parts.append(f"<p>{esc(summary)}</p>")
    if rel:
        cols = "".join(f"<th>{esc(label)}</th>" for label in labels)
        parts.append(f"<h2>Samples</h2><table><tr><th>artifact</th>{cols}</tr>")
        for artifact in sorted(rel):
            cells = "".join(
                f"<td><img src='{esc(rel[artifact][r.run_id])}' alt='{esc(r.label)}'></td>"
                if r.run_id in rel[artifact]
                else "<td>-</td>"
                for r in comparison.runs
            )
            parts.append(f"<tr><td><code>{esc(artifact)}</code></td>{cells}</tr>")
        parts.append("</table>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


# -- DVC experiments ------------------------------------------------------------------------
