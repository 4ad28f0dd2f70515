"""Guidance wrappers: classifier-free halves and scales, and the CLIP guidance gradient."""

from __future__ import annotations

import pytest
import torch

from glide.diffusion import create_gaussian_diffusion
from glide.guidance import ClassifierFreeGuidance, CLIPGuidance, classifier_free_batch
from glide.guidance.clip_guidance import normalize_embedding


def _toy_text_model(x: torch.Tensor, t: torch.Tensor, *, tokens: torch.Tensor) -> torch.Tensor:
    """Output [B, 2C, H, W] whose eps and variance depend on each row's ``tokens`` and on x."""
    scale = tokens.float().sum(1).reshape(-1, 1, 1, 1)
    eps = torch.tanh(x * (1 + 0.1 * scale) + 0.01 * t.float().reshape(-1, 1, 1, 1))
    var = torch.tanh(0.05 * scale).expand_as(x)
    return torch.cat([eps, var], dim=1)


@pytest.fixture
def batch() -> dict[str, torch.Tensor]:
    cond = {"tokens": torch.tensor([[3, 4], [5, 6]])}
    uncond = {"tokens": torch.zeros(1, 2, dtype=torch.long)}
    return classifier_free_batch(cond, uncond)


def test_classifier_free_batch_layout(batch: dict[str, torch.Tensor]) -> None:
    assert batch["tokens"].tolist() == [[3, 4], [5, 6], [0, 0], [0, 0]]


def test_cfg_scale_one_is_conditional_and_zero_unconditional(
    batch: dict[str, torch.Tensor],
) -> None:
    x = torch.randn(2, 3, 4, 4).repeat(2, 1, 1, 1)
    t = torch.full((4,), 7)
    plain = _toy_text_model(x, t, **batch)
    one = ClassifierFreeGuidance(_toy_text_model, 1.0)(x, t, **batch)
    zero = ClassifierFreeGuidance(_toy_text_model, 0.0)(x, t, **batch)
    assert torch.allclose(one[:2, :3], plain[:2, :3]) and torch.allclose(one[2:, :3], plain[:2, :3])
    assert torch.allclose(zero[:2, :3], plain[2:, :3]) and torch.allclose(
        zero[2:, :3], plain[2:, :3]
    )
    # variance channels pass through row by row
    assert torch.equal(one[:, 3:], plain[:, 3:]) and torch.equal(zero[:, 3:], plain[:, 3:])


def test_cfg_extrapolates_and_uses_first_half_of_x(batch: dict[str, torch.Tensor]) -> None:
    x = torch.randn(4, 3, 4, 4)  # second half differs: it must be ignored
    t = torch.full((4,), 2)
    guided = ClassifierFreeGuidance(_toy_text_model, 3.0)(x, t, **batch)
    plain = _toy_text_model(torch.cat([x[:2], x[:2]]), t, **batch)
    expected = plain[2:, :3] + 3.0 * (plain[:2, :3] - plain[2:, :3])
    assert guided.shape == (4, 6, 4, 4)
    assert torch.allclose(guided[:2, :3], expected, atol=1e-6)
    assert torch.equal(guided[:2, :3], guided[2:, :3])
    with pytest.raises(ValueError):
        ClassifierFreeGuidance(_toy_text_model, 3.0)(x[:3], t[:3], tokens=batch["tokens"][:3])


def test_cfg_sampling_keeps_halves_identical(batch: dict[str, torch.Tensor]) -> None:
    diffusion = create_gaussian_diffusion(steps=100, timestep_respacing="4")
    guided = ClassifierFreeGuidance(_toy_text_model, 2.0)
    noise = torch.randn(2, 3, 4, 4).repeat(2, 1, 1, 1)
    out = diffusion.ddim_sample_loop(guided, noise.shape, noise=noise, model_kwargs=batch)
    assert torch.allclose(out[:2], out[2:])


class _ToyImageEncoder(torch.nn.Module):
    """Linear image 'tower' whose embedding also depends on t: [B,3,S,S], [B] -> [B, D]."""

    def __init__(self, dim: int = 5, pixels: int = 3 * 4 * 4) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(pixels, dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.proj(x.flatten(1)) * (1 + t.float()[:, None] / 1000)


def test_clip_guidance_gradient_matches_finite_differences() -> None:
    encoder = _ToyImageEncoder().double()
    text = torch.randn(2, 5, dtype=torch.float64)
    guide = CLIPGuidance(encoder, text, grad_scale=2.0, logit_scale=100.0)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    t = torch.tensor([10, 900])
    grad = guide(x, t, tokens=None)  # model kwargs are accepted and ignored
    assert grad.shape == x.shape and not grad.requires_grad
    direction = torch.randn_like(x)
    h = 1e-6
    numeric = (guide.score(x + h * direction, t) - guide.score(x - h * direction, t)) / (2 * h)
    assert (grad * direction).sum().item() == pytest.approx(numeric.item(), rel=1e-5)
    # the score is 200 * sum of cosine similarities
    z_img = normalize_embedding(encoder(x, t))
    cos = (normalize_embedding(text) * z_img).sum()
    assert guide.score(x, t).item() == pytest.approx(200 * cos.item(), rel=1e-9)


def test_clip_guidance_in_respaced_sampling_sees_original_t() -> None:
    diffusion = create_gaussian_diffusion(timestep_respacing="10")
    seen: list[list[int]] = []
    encoder = _ToyImageEncoder()

    def tracking_encoder(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(t.tolist())
        return encoder(x, t)

    guide = CLIPGuidance(tracking_encoder, torch.randn(1, 5), grad_scale=3.0)
    model = lambda x, t: torch.zeros(x.shape[0], 6, *x.shape[2:])  # noqa: E731
    sample = diffusion.p_sample_loop(model, (1, 3, 4, 4), cond_fn=guide)
    assert sample.shape == (1, 3, 4, 4)
    assert seen[0] == [999] and seen[-1] == [0]
