"""Evaluation outputs: CSV tables for ``dvc plots`` and the guidance Pareto figure."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from glide.evaluation.captions import ATTRIBUTES
from glide.io import atomic_path

__all__ = ["GUIDANCE_COLUMNS", "guidance_rows", "sampler_rows", "write_csv", "write_pareto_plot"]

ATTRIBUTE_COLUMNS = tuple(f"single_{a}" for a in ATTRIBUTES)
GUIDANCE_COLUMNS = (
    "method", "scale", "fd_clip", "fid", "clip_score", "caption_accuracy",
    "caption_accuracy_single", "caption_accuracy_single_lo", "caption_accuracy_single_hi",
    *ATTRIBUTE_COLUMNS, "oracle_score", "seconds_per_image",
)  # fmt: skip
SAMPLER_COLUMNS = (
    "sampler", "caption_accuracy", "caption_accuracy_single", "fd_clip", "clip_score",
    "seconds_per_image",
)  # fmt: skip
_METHOD_NAMES = {"cfg": "classifier-free", "clip": "CLIP guidance"}


def _flat_row(values: Mapping[str, Any]) -> dict[str, Any]:
    """A point's metrics as CSV cells: attributes as ``single_<attr>``, the single-object
    interval as ``caption_accuracy_single_lo``/``_hi``."""
    row = {k: v for k, v in values.items() if not isinstance(v, Mapping | list | tuple)}
    for attr, value in (values.get("attributes_single") or {}).items():
        row[f"single_{attr}"] = value
    lo_hi = values.get("caption_accuracy_single_ci95")
    if lo_hi:
        row["caption_accuracy_single_lo"], row["caption_accuracy_single_hi"] = lo_hi
    return row


def guidance_rows(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per (method, scale) of ``metrics["cfg"]`` and ``metrics["clip"]``."""
    rows = []
    for method in ("cfg", "clip"):
        for scale, values in (metrics.get(method) or {}).items():
            rows.append({"method": method, "scale": float(scale), **_flat_row(values)})
    return rows


def sampler_rows(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per sampler of ``metrics["samplers"]``."""
    return [{"sampler": k, **_flat_row(v)} for k, v in (metrics.get("samplers") or {}).items()]


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """Write ``rows`` with ``columns`` (missing values empty; floats to 6 significant digits)."""
    path = Path(path)
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {
                    k: f"{v:.6g}" if isinstance(v, float) else v
                    for k, v in row.items()
                    if k in columns
                }
            )
    return path


def write_pareto_plot(path: str | Path, metrics: Mapping[str, Any]) -> Path:
    """The guidance trade-off: distance vs CLIP score, vs caption accuracy and vs single-object
    exact match (with its 95% interval), one curve per guidance method, each point labelled with
    its scale; and the single-object attribute accuracies against the classifier-free scale.
    The distance is FID when measured, else ``fd_clip``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = guidance_rows(metrics)
    dist = "fid" if rows and all("fid" in r for r in rows) else "fd_clip"
    ys = ("clip_score", "caption_accuracy", "caption_accuracy_single")
    panels = [y for y in ys if any(y in r for r in rows)] or ["clip_score"]
    cfg_attrs = [c for c in ATTRIBUTE_COLUMNS if any(r["method"] == "cfg" and c in r for r in rows)]
    n = len(panels) + bool(cfg_attrs)
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 4.2), squeeze=False)
    for ax, y in zip(axes[0], panels, strict=False):
        for method, label in _METHOD_NAMES.items():
            pts = sorted(
                (r for r in rows if r["method"] == method and dist in r and y in r),
                key=lambda r: r["scale"],
            )
            if not pts:
                continue
            xs, vals = [r[dist] for r in pts], [r[y] for r in pts]
            if y == "caption_accuracy_single" and all(f"{y}_lo" in r for r in pts):
                err = [
                    [v - r[f"{y}_lo"] for v, r in zip(vals, pts, strict=True)],
                    [r[f"{y}_hi"] - v for v, r in zip(vals, pts, strict=True)],
                ]
                ax.errorbar(xs, vals, yerr=err, marker="o", capsize=3, label=label)
            else:
                ax.plot(xs, vals, marker="o", label=label)
            for r, xv, yv in zip(pts, xs, vals, strict=True):
                ax.annotate(f"{r['scale']:g}", (xv, yv), textcoords="offset points", xytext=(4, 4))
        ax.set_xlabel(
            "FID" if dist == "fid" else "Frechet distance, noised-CLIP features (not FID)"
        )
        ax.set_ylabel(y.replace("_", " ") + (" (95% CI)" if y.endswith("single") else ""))
        ax.grid(alpha=0.3)
        ax.legend()
    if cfg_attrs:
        ax = axes[0][-1]
        pts = sorted((r for r in rows if r["method"] == "cfg"), key=lambda r: r["scale"])
        for col in cfg_attrs:
            have = [r for r in pts if col in r]
            ax.plot([r["scale"] for r in have], [r[col] for r in have], marker="o", label=col[7:])
        ax.set_xlabel("classifier-free guidance scale")
        ax.set_ylabel("single-object attribute accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Guidance trade-off (labels: guidance scale)")
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
    return path
