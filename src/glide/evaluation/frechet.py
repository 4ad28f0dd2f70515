"""Frechet distances: FID (torchmetrics' Inception features) and a Frechet distance on features
that are always available offline.

``FD(a, b) = |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)`` for the feature means
and covariances of two image sets. FID is this on the 2048-d pool features of the TF-ported
Inception-v3 (torch-fidelity's ``pt_inception-2015-12-05`` weights). Those weights are never
downloaded here: they are read from a configured path or from the torch hub cache, where
torch-fidelity would have stored them; otherwise FID is reported unavailable with the reason.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "INCEPTION_WEIGHTS_FILE",
    "InceptionFID",
    "MetricOutcome",
    "compute_fid",
    "feature_statistics",
    "frechet_distance",
    "frechet_distance_from_stats",
    "resolve_inception_weights",
]

INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"


@dataclass(frozen=True)
class MetricOutcome:
    """A metric's value, or ``None`` with a one-line reason why it is unavailable."""

    value: float | None
    reason: str = ""

    @property
    def available(self) -> bool:
        return self.value is not None


def feature_statistics(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean [D] and unbiased covariance [D, D] of features [N, D], in float64 (N >= 2)."""
    f = features.detach().double().reshape(features.shape[0], -1)
    if f.shape[0] < 2:
        raise ValueError("a Frechet distance needs at least two samples per set")
    mu = f.mean(0)
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)


def _sqrt_psd(m: Tensor) -> Tensor:
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def frechet_distance_from_stats(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    """The Frechet distance of two Gaussians (symmetric eigen-decompositions, float64)."""
    s1 = _sqrt_psd(cov1.double())
    middle = s1 @ cov2.double() @ s1
    tr_covmean = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    diff = mu1.double() - mu2.double()
    value = diff @ diff + torch.trace(cov1.double()) + torch.trace(cov2.double()) - 2 * tr_covmean
    return max(float(value), 0.0)


def frechet_distance(features_a: Tensor, features_b: Tensor) -> float:
    """Frechet distance between two feature sets [N, D] and [M, D]."""
    return frechet_distance_from_stats(
        *feature_statistics(features_a), *feature_statistics(features_b)
    )


def resolve_inception_weights(configured: str | Path | None = None) -> tuple[Path | None, str]:
    """Find Inception weights without touching the network: ``configured`` if set, else
    ``<torch hub dir>/checkpoints/weights-inception-2015-12-05-6726825d.pth``.

    Returns ``(path, "")`` or ``(None, one-line reason)``.
    """
    if importlib.util.find_spec("torch_fidelity") is None:
        return None, "torch-fidelity is not installed (pip install torch-fidelity)"
    if configured:
        path = Path(configured).expanduser()
        if path.is_file():
            return path, ""
        return None, f"Inception weights not found at {path} (evaluate.fid.weights_path)"
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE
    if cached.is_file():
        return cached, ""
    return None, (
        f"Inception weights {INCEPTION_WEIGHTS_FILE} not found in {cached.parent} and no "
        "download is attempted offline; set evaluate.fid.weights_path or place the file there"
    )


class InceptionFID:
    """FID against a fixed real set: real features are extracted once, fakes per call.

    Wraps torchmetrics' :class:`FrechetInceptionDistance` (``reset_real_features=False``). Check
    :attr:`status` first: when weights or torch-fidelity are missing it is unavailable, with the
    reason, and nothing is loaded.
    """

    def __init__(self, *, weights_path: str | Path | None = None, feature: int = 2048) -> None:
        path, reason = resolve_inception_weights(weights_path)
        self.metric = None
        self.status = MetricOutcome(None, reason)
        if path is None:
            return
        from torchmetrics.image.fid import FrechetInceptionDistance

        try:
            self.metric = FrechetInceptionDistance(
                feature=feature,
                reset_real_features=False,
                feature_extractor_weights_path=str(path),
            )
        except (RuntimeError, OSError, ValueError, KeyError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self.status = MetricOutcome(None, f"cannot load Inception weights {path}: {first}")
            return
        self.status = MetricOutcome(0.0)

    @property
    def available(self) -> bool:
        return self.metric is not None

    @torch.no_grad()
    def add_real(self, batches: Iterable[Tensor]) -> None:
        """Accumulate real uint8 batches [B, 3, H, W] (any size; resized to 299 inside)."""
        if self.metric is not None:
            for batch in batches:
                self.metric.update(batch.to(torch.uint8), real=True)

    @torch.no_grad()
    def score(self, fake: Iterable[Tensor]) -> MetricOutcome:
        """FID of the fake uint8 batches against the real ones added so far."""
        if self.metric is None:
            return self.status
        self.metric.reset()  # keeps the real features
        for batch in fake:
            self.metric.update(batch.to(torch.uint8), real=False)
        return MetricOutcome(float(self.metric.compute()))


def compute_fid(
    real: Iterable[Tensor],
    fake: Iterable[Tensor],
    *,
    weights_path: str | Path | None = None,
    feature: int = 2048,
) -> MetricOutcome:
    """FID of two sets of uint8 batches [B, 3, H, W], or unavailable with a one-line reason."""
    fid = InceptionFID(weights_path=weights_path, feature=feature)
    if not fid.available:
        return fid.status
    fid.add_real(real)
    return fid.score(fake)
