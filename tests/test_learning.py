"""The learning harness (benchmarks/learning.py): recipes from conf/, and (slow) that the default
recipe learns its captions' colours within minutes on a CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import REPO_ROOT
from tests.helpers import load_script

learning = load_script(REPO_ROOT / "benchmarks" / "learning.py", "learning_benchmark")


def test_default_recipe_is_the_pipelines_and_glide_is_one_switch_away() -> None:
    from glide.config import compose

    cfg = compose("config", ["train=base"])
    default = learning.named_recipe("default")
    assert default.parametrization == cfg["train"]["parametrization"]
    assert default.world == (cfg["data"]["options"].get("world") or {})
    assert default.batch_size == cfg["train"]["data"]["batch_size"]
    glide = learning.named_recipe("glide")
    assert (glide.parametrization, glide.timestep_sampler, glide.loss_weighting) == (
        "eps",
        "uniform",
        "none",
    )
    assert glide.world == default.world and glide.lr == default.lr


def test_set_field_nests_world_and_model_and_rejects_unknown_keys() -> None:
    r = learning.named_recipe("v")
    r = learning.set_field(r, "world.backgrounds=[black, white]")
    r = learning.set_field(r, "model.num_channels=64")
    r = learning.set_field(r, "lr=2e-3")
    assert r.world["backgrounds"] == ["black", "white"] and r.model["num_channels"] == 64
    assert r.lr == 2e-3
    with pytest.raises(ValueError, match="colour"):
        learning.set_field(r, "colour=1")


def test_a_short_run_trains_and_scores(tmp_path: Path) -> None:
    recipe = learning.set_field(learning.named_recipe("v"), "batch_size=4")
    run = learning.Run(recipe, num_train=16, seed=0)
    before = [p.detach().clone() for p in run.model.parameters()]
    losses = [run.train_step(0.0) for _ in range(3)]
    assert run.step == 3 and all(loss > 0 for loss in losses)
    assert any(not torch.equal(a, b) for a, b in zip(before, run.model.parameters(), strict=True))
    captions = learning.eval_captions(run.world, 4, 1000)
    scores = run.evaluate(captions, [1.0], "dpm++-2", tmp_path)
    assert set(scores["1"]["attributes_single"]) >= {"color", "shape"}
    assert (tmp_path / "step-00003_cfg1.png").is_file()


@pytest.mark.slow
def test_default_recipe_learns_colour_in_five_minutes(tmp_path: Path) -> None:
    """The issue's bar: five minutes of the default recipe on a CPU, colour >= 80%."""
    torch.set_num_threads(torch.get_num_threads())
    run = learning.Run(learning.named_recipe("default"), num_train=4000, seed=0)
    learning.train_for(run, seconds=300)
    captions = learning.eval_captions(run.world, 64, 1000)
    scores = run.evaluate(captions, [3.0], "dpm++-15", tmp_path)
    colour = scores["3"]["attributes_single"]["color"]
    print(f"after {run.step} steps: colour {colour:.2f}, {scores['3']['attributes_single']}")
    assert colour >= 0.8
