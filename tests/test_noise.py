"""Per-image noise: each image's generator is seeded by (seed, caption, image), so its noise and
its sample do not depend on the batch it is drawn in; float64 feature sums split over parts."""

from __future__ import annotations

import torch

from glide.diffusion import ImageGenerators, draw_noise, image_seed
from glide.evaluation.frechet import FeatureStats, feature_statistics, frechet_distance
from glide.sampling import Cascade, GenerationConfig, parse_sampler
from tests.test_sampling_support import micro_model


def test_image_seed_is_stable_and_distinct() -> None:
    assert image_seed(0, 0, 0) == image_seed(0, 0, 0) < 2**63
    seeds = {image_seed(s, c, i) for s in range(3) for c in range(3) for i in range(3)}
    assert len(seeds) == 27  # no two (seed, caption, image) share a stream
    assert image_seed(0, 1, 0) != image_seed(1, 0, 0) != image_seed(0, 0, 1)


def test_each_row_draws_from_its_own_generator_whatever_the_batch() -> None:
    seeds = [image_seed(5, c) for c in range(3)]
    together = ImageGenerators.seeded(seeds)
    first = together.randn((3, 2, 4, 4))
    second = together.randn((3, 2, 4, 4))  # the next step's noise continues each stream
    for row, seed in enumerate(seeds):
        alone = ImageGenerators.seeded([seed])
        assert torch.equal(alone.randn((1, 2, 4, 4)), first[row : row + 1])
        assert torch.equal(alone.randn((1, 2, 4, 4)), second[row : row + 1])
    # classifier-free batches repeat the images: both halves get the same noise
    guided = ImageGenerators.seeded(seeds).randn((6, 2, 4, 4))
    assert torch.equal(guided[:3], first) and torch.equal(guided[3:], first)
    # a plain generator is used as before (one draw for the batch)
    g = torch.Generator().manual_seed(3)
    expected = torch.randn(3, 2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(draw_noise((3, 2), g), expected)


def test_an_image_does_not_depend_on_its_batch_neighbours_or_order() -> None:
    cascade = Cascade(micro_model("base"))
    prompts = ["a red circle", "a blue star", "a green square"]
    config = GenerationConfig(sampler=parse_sampler("ancestral-3"), upsample=False, batch_size=1)
    forward = cascade.generate(prompts, config).base
    keys = [(2, 0), (1, 0), (0, 0)]
    backward = cascade.generate(prompts[::-1], config, keys=keys).base
    assert torch.equal(forward, backward.flip(0))  # same noise streams, same batches of one
    batched = cascade.generate(prompts, GenerationConfig(**{**config.__dict__, "batch_size": 3}))
    diff = (batched.base.int() - forward.int()).abs()
    assert diff.float().mean() < 0.05  # batched kernels round differently, nothing more


def test_feature_sums_split_over_parts_give_the_whole_set_statistics() -> None:
    f = torch.randn(50, 6, generator=torch.Generator().manual_seed(0)) * 3 + 1
    parts = [FeatureStats(6) for _ in range(3)]
    for i, part in enumerate(parts):
        part.update(f[i::3])
    flat = sum(p.as_tensor() for p in parts)  # what an all-reduce computes
    merged = FeatureStats.from_tensor(flat, 6)
    mu, cov = merged.mean_cov()
    ref_mu, ref_cov = feature_statistics(f)
    assert merged.count == 50
    assert torch.allclose(mu, ref_mu, atol=1e-12) and torch.allclose(cov, ref_cov, atol=1e-10)
    g = torch.randn(40, 6, generator=torch.Generator().manual_seed(1))
    other = FeatureStats(6)
    other.update(g)
    assert abs(merged.distance(other) - frechet_distance(f, g)) < 1e-9
