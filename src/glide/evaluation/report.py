"""Evaluation outputs: CSV tables for ``dvc plots`` and the guidance Pareto figure."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["GUIDANCE_COLUMNS", "guidance_rows", "sampler_rows", "write_csv", "write_pareto_plot"]

GUIDANCE_COLUMNS = (
    "method", "scale", "fd_clip", "fid", "clip_score", "caption_accuracy",
    "caption_accuracy_single", "oracle_score", "seconds_per_image",
)  # fmt: skip
SAMPLER_COLUMNS = (
    "sampler", "caption_accuracy", "caption_accuracy_single", "fd_clip", "clip_score",
    "seconds_per_image",
)  # fmt: skip
_METHOD_NAMES = {"cfg": "classifier-free", "clip": "CLIP guidance"}


def guidance_rows(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per (method, scale) of ``metrics["cfg"]`` and ``metrics["clip"]``."""
    rows = []
    for method in ("cfg", "clip"):
        for scale, values in (metrics.get(method) or {}).items():
            rows.append({"method": method, "scale": float(scale), **values})
    return rows


def sampler_rows(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per sampler of ``metrics["samplers"]``."""
    return [{"sampler": k, **v} for k, v in (metrics.get("samplers") or {}).items()]


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """Write ``rows`` with ``columns`` (missing values empty; floats to 6 significant digits)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
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
    """Distance vs CLIP score and vs caption accuracy, one curve per guidance method, each point
    labelled with its scale. The distance is FID when measured, else ``fd_clip``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = guidance_rows(metrics)
    dist = "fid" if rows and all("fid" in r for r in rows) else "fd_clip"
    panels = [y for y in ("clip_score", "caption_accuracy") if any(y in r for r in rows)]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5.5 * max(1, len(panels)), 4.2))
    axes = list(axes) if len(panels) > 1 else [axes]
    for ax, y in zip(axes, panels or ["clip_score"], strict=False):
        for method, label in _METHOD_NAMES.items():
            pts = sorted(
                (r for r in rows if r["method"] == method and dist in r and y in r),
                key=lambda r: r["scale"],
            )
            if not pts:
                continue
            xs, ys = [r[dist] for r in pts], [r[y] for r in pts]
            ax.plot(xs, ys, marker="o", label=label)
            for r, xv, yv in zip(pts, xs, ys, strict=True):
                ax.annotate(f"{r['scale']:g}", (xv, yv), textcoords="offset points", xytext=(4, 4))
        ax.set_xlabel(
            "FID" if dist == "fid" else "Frechet distance, noised-CLIP features (not FID)"
        )
        ax.set_ylabel(y.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Guidance trade-off (labels: guidance scale)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
