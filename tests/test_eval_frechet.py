"""Frechet distances: the closed form, the CLIP-feature distance on real renders, and the FID
code path with a locally created (random) Inception weights file, all offline."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from glide.data.shapes import make_example
from glide.evaluation import (
    INCEPTION_WEIGHTS_FILE,
    InceptionFID,
    NoisedCLIPScorer,
    compute_fid,
    frechet_distance,
    frechet_distance_from_stats,
    resolve_inception_weights,
)
from tests.test_sampling_support import micro_model


def _renders(n: int, seed: int = 5) -> torch.Tensor:
    arrays = [np.asarray(make_example(seed, i, size=64)[0]) for i in range(n)]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians() -> None:
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    v1, v2 = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 1.0, 1.0])
    expected = ((mu1 - mu2) ** 2).sum() + ((v1.sqrt() - v2.sqrt()) ** 2).sum()
    got = frechet_distance_from_stats(mu1, torch.diag(v1), mu2, torch.diag(v2))
    assert got == pytest.approx(float(expected), rel=1e-9)


def test_noised_clip_distance_is_zero_for_identical_sets_and_grows_with_corruption() -> None:
    clip = micro_model("clip")
    scorer = NoisedCLIPScorer(clip.model, clip.tokenizer, text_ctx=clip.text_ctx)  # type: ignore[arg-type]
    real = _renders(32)
    feats = scorer.image_features(real)
    assert frechet_distance(feats, feats) < 1e-6
    gen = torch.Generator().manual_seed(0)
    distances = []
    for sigma in (10.0, 40.0, 120.0):
        noise = torch.randn(real.shape, generator=gen) * sigma
        corrupted = (real.float() + noise).clamp(0, 255).to(torch.uint8)
        distances.append(frechet_distance(feats, scorer.image_features(corrupted)))
    assert 0 < distances[0] < distances[1] < distances[2]


def random_inception_weights(folder: Path) -> Path:
    """A random-init state dict of torch-fidelity's FID Inception (the real file is not needed
    for the code path); its constructor reads an empty placeholder instead of downloading."""
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    dummy = folder / "dummy.pt"
    torch.save({}, dummy)
    torch.manual_seed(0)
    with mock.patch.object(
        fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None
    ):
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["64"], str(dummy))
    path = folder / "random-inception.pth"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture
def inception_weights(tmp_path: Path) -> Path:
    return random_inception_weights(tmp_path)


def test_fid_code_path_with_local_random_inception_weights(inception_weights: Path) -> None:
    real = _renders(4)
    other = _renders(4, seed=11).flip(-1)
    with mock.patch("torch.hub.load_state_dict_from_url", side_effect=AssertionError("network")):
        fid = InceptionFID(weights_path=inception_weights, feature=64)
        assert fid.available
        fid.add_real([real[:2], real[2:]])  # real features are kept across scores
        same, diff = fid.score([real]), fid.score([other])
    assert same.value is not None and diff.value is not None
    assert abs(same.value) < 1e-2
    assert diff.value > same.value + 1e-3


def test_fid_reports_missing_weights_without_downloading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with mock.patch("torch.hub.load_state_dict_from_url", side_effect=AssertionError("network")):
        path, reason = resolve_inception_weights(None)
        outcome = compute_fid([], [], weights_path=None)
        configured = compute_fid([], [], weights_path=tmp_path / "nope.pth")
    assert path is None and not outcome.available
    assert INCEPTION_WEIGHTS_FILE in reason and "\n" not in reason
    assert outcome.reason == reason
    assert "nope.pth" in configured.reason and configured.value is None


def test_fid_finds_weights_in_the_torch_hub_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = tmp_path / "torch" / "hub" / "checkpoints" / INCEPTION_WEIGHTS_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"placeholder")
    path, reason = resolve_inception_weights(None)
    assert path == cached and reason == ""
