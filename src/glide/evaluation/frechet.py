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
    "FeatureStats",
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


class FeatureStats:
    """Running float64 sums of a feature set: ``sum f`` [D], ``sum f f^T`` [D, D] and the count.

    Sums add across batches and processes (:meth:`merge`, or an all-reduce of :meth:`as_tensor`),
    so a set split over ranks has the statistics of the whole set up to float64 round-off.
    """

    def __init__(self, dim: int) -> None:
        self.total = torch.zeros(dim, dtype=torch.float64)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64)
        self.count = 0

    def update(self, features: Tensor) -> None:
        """Add features [N, D] (any float dtype)."""
        f = features.detach().to("cpu", torch.float64).reshape(features.shape[0], -1)
        self.total += f.sum(0)
        self.outer += f.T @ f
        self.count += f.shape[0]

    def as_tensor(self) -> Tensor:
        """``[count, sum..., outer...]`` flattened in float64 (one all-reduce carries it all)."""
        count = torch.tensor([float(self.count)], dtype=torch.float64)
        return torch.cat([count, self.total, self.outer.reshape(-1)])

    @classmethod
    def from_tensor(cls, flat: Tensor, dim: int) -> FeatureStats:
        """Inverse of :meth:`as_tensor`."""
        out = cls(dim)
        out.count = round(float(flat[0]))
        out.total = flat[1 : 1 + dim].clone()
        out.outer = flat[1 + dim :].reshape(dim, dim).clone()
        return out

    def mean_cov(self) -> tuple[Tensor, Tensor]:
        """Mean [D] and unbiased covariance [D, D] (needs two or more features)."""
        if self.count < 2:
            raise ValueError("a Frechet distance needs at least two samples per set")
        mu = self.total / self.count
        return mu, (self.outer - self.count * torch.outer(mu, mu)) / (self.count - 1)

    def distance(self, other: FeatureStats) -> float:
        """The Frechet distance between this set and ``other``."""
        return frechet_distance_from_stats(*self.mean_cov(), *other.mean_cov())


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
    def features(self, images: Tensor) -> Tensor:
        """Inception features [B, D] of uint8 images [B, 3, H, W], as the FID metric extracts
        them (for :class:`FeatureStats` accumulated across processes)."""
        if self.metric is None:
            raise RuntimeError(self.status.reason)
        return self.metric.inception(images.to(torch.uint8)).reshape(images.shape[0], -1)

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
