"""Guided distillation, stage one: a student with a guidance-weight input starts as its teacher's
conditional model, its loss is the distance to the teacher's guided output (zero at w = 1),
training on it moves the student toward the guided teacher, and the cascade samples a student
with one row per image."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import glide.sampling.cascade as cascade_module
from glide.diffusion import create_gaussian_diffusion
from glide.guidance import ClassifierFreeGuidance, classifier_free_batch
from glide.guidance.distilled import (
    WeightConditioned,
    guided_distillation_loss,
    student_from_teacher,
)
from glide.sampling import Cascade, GenerationConfig, LoadedModel, parse_sampler
from glide.training.config import DistillConfig
from tests.test_sampling_support import micro_model


@pytest.fixture(scope="module")
def teacher() -> LoadedModel:
    return micro_model("base")


def _batch(teacher: LoadedModel, n: int = 4):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(n, 3, 32, 32, generator=g) * 2 - 1
    tokens, mask = teacher.tokenizer.batch(
        ["a red circle", "a blue star"] * (n // 2), teacher.text_ctx
    )
    empty_t, empty_m = teacher.tokenizer.batch([""], teacher.text_ctx)
    return x0, {"tokens": tokens, "mask": mask}, {"tokens": empty_t, "mask": empty_m}


def test_the_student_starts_as_the_teachers_conditional_model(teacher: LoadedModel) -> None:
    student = student_from_teacher(teacher.model, teacher.options).eval()
    x0, cond, _ = _batch(teacher)
    t = torch.tensor([10, 200, 500, 900])
    with torch.no_grad():
        ref = teacher.model(x0, t, **cond)
        for w in (1.0, 3.0, 8.0):
            out = student(x0, t, guidance=torch.full((4,), w), **cond)
            assert torch.equal(out, ref)  # the guidance embedding's last layer is zero
    with pytest.raises(ValueError, match="guidance-distilled"):
        student(x0, t, **cond)
    with pytest.raises(ValueError, match="guidance_embed"):
        teacher.model(x0, t, guidance=torch.ones(4), **cond)


def test_distillation_loss_is_the_distance_to_the_guided_teacher(teacher: LoadedModel) -> None:
    student = student_from_teacher(teacher.model, teacher.options)
    diffusion = create_gaussian_diffusion(steps=1000)
    x0, cond, uncond = _batch(teacher)
    t = torch.tensor([100, 300, 600, 800])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    kw = {"cond": cond, "uncond": uncond, "noise": noise}
    with torch.no_grad():
        ones = guided_distillation_loss(
            student, teacher.model, diffusion, x0, t, torch.ones(4), **kw
        )
    assert ones.shape == (4,) and float(ones.max()) < 1e-10  # w = 1 is the conditional model
    w = torch.tensor([2.0, 3.0, 5.0, 8.0])
    with torch.no_grad():
        loss = guided_distillation_loss(student, teacher.model, diffusion, x0, t, w, **kw)
    # by hand: the teacher guided at each row's w, against the student at that w
    x_t = diffusion.q_sample(x0, t, noise=noise)
    with torch.no_grad():
        both = classifier_free_batch(cond, uncond)
        for i in range(4):
            guided = ClassifierFreeGuidance(teacher.model, float(w[i]))
            row = {k: v[[i, 4 + i]] for k, v in both.items()}
            target = guided(x_t[[i, i]], t[[i, i]], **row)[0]
            out = student(x_t[i : i + 1], t[i : i + 1], guidance=w[i : i + 1], **{k: v[i : i + 1] for k, v in cond.items()})[0]  # fmt: skip
            assert float(((out - target) ** 2).mean()) == pytest.approx(float(loss[i]), rel=1e-4)
    assert float(loss.min()) > 0  # guidance changes the output: there is something to learn


def test_training_on_the_loss_moves_the_student_to_the_guided_teacher(
    teacher: LoadedModel,
) -> None:
    torch.manual_seed(0)
    student = student_from_teacher(teacher.model, teacher.options).train()
    diffusion = create_gaussian_diffusion(steps=1000)
    x0, cond, uncond = _batch(teacher)
    t = torch.tensor([150, 350, 550, 750])
    w = torch.tensor([3.0, 3.0, 6.0, 6.0])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
    kw = {"cond": cond, "uncond": uncond, "noise": noise}
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    losses = []
    for _ in range(25):
        loss = guided_distillation_loss(student, teacher.model, diffusion, x0, t, w, **kw).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    assert any(p.abs().sum() > 0 for p in student.guidance_embed[2].parameters())


def test_the_cascade_samples_a_student_with_one_row_per_image(
    teacher: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    student = student_from_teacher(teacher.model, teacher.options).eval()
    loaded = dataclasses.replace(teacher, model=student, version="micro-student")
    seen: list[tuple[int, ...]] = []
    real = cascade_module.run_sampler

    def spy(model, shape, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(tuple(shape))
        assert isinstance(model, WeightConditioned) and model.w == 3.0
        return real(model, shape, **kwargs)

    monkeypatch.setattr(cascade_module, "run_sampler", spy)
    config = GenerationConfig(guidance_scale=3.0, sampler=parse_sampler("ddim-2"), upsample=False)
    out = Cascade(loaded).generate(["a red circle", "a blue star", "a green square"], config)
    assert out.base.shape == (3, 3, 32, 32) and seen == [(3, 3, 32, 32)]  # not 2 x 3 rows
    # at init the student is the conditional teacher: w = 1 sampling equals the teacher's
    plain = dataclasses.replace(config, guidance_scale=1.0)
    monkeypatch.setattr(cascade_module, "run_sampler", real)
    a = Cascade(loaded).generate(["a red circle"], plain).base
    b = Cascade(teacher).generate(["a red circle"], plain).base
    assert torch.equal(a, b)


def test_distill_kind_trains_from_an_exported_teacher_and_exports_a_sampler_ready_base(
    tmp_path: Path,
) -> None:
    from glide.models import load_preset
    from glide.sampling import load_model_source
    from glide.training import train
    from tests.test_training_data import write_shards
    from tests.test_training_modules import small_config

    shards = write_shards(tmp_path / "shards", n=32, per_shard=16, size=64)
    common = {"root": tmp_path, "experiment": "test",
              "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}  # fmt: skip
    teacher_cfg = small_config(shards, tmp_path, max_steps=2, num_threads=1)
    teacher = train(teacher_cfg, load_preset("tiny"), **common)
    assert teacher.model_path is not None

    cfg = small_config(shards, tmp_path, kind="distill", max_steps=3, num_threads=1)
    cfg = dataclasses.replace(
        cfg, distill=DistillConfig(teacher=str(teacher.model_path), w_min=2.0, w_max=6.0)
    )
    result = train(cfg, load_preset("tiny"), **common)
    assert result.step == 3 and result.model_path is not None
    loaded = load_model_source(str(result.model_path))
    assert loaded.kind == "base" and loaded.options["guidance_embed"] is True
    assert any(p.abs().sum() > 0 for p in loaded.model.guidance_embed[2].parameters())
    out = Cascade(loaded).generate(
        ["a red circle", "a blue star"],
        GenerationConfig(guidance_scale=4.0, sampler=parse_sampler("ddim-2"), upsample=False),
    )
    assert out.base.shape == (2, 3, 32, 32)
    # a teacher that predicts something else than the run's parametrization is refused
    wrong = dataclasses.replace(cfg, parametrization="x0", out_dir=str(tmp_path / "wrong"))
    with pytest.raises(ValueError, match="must keep the teacher's"):
        train(wrong, load_preset("tiny"), **common)


def _save_student(teacher: LoadedModel, path: Path, sampler: str | None = None) -> Path:
    """A guidance-distilled micro student; ``sampler``: the grid a progressive round taught it."""
    from glide.models.export import save_model

    student = student_from_teacher(teacher.model, teacher.options)
    with torch.no_grad():  # a trained-looking student: the guidance embedding is not zero
        for p in student.guidance_embed.parameters():
            p.normal_(std=0.02)
    return save_model(
        path,
        student,
        kind="base",
        options={**teacher.options, "guidance_embed": True},
        tokenizer="clip",
        diffusion={"steps": teacher.diffusion.steps, "noise_schedule": "squaredcos_cap_v2"},
        extra={"sampler": sampler} if sampler else None,
    )


def test_glide_sample_recipe_distilled_reads_the_distilled_base(
    teacher: LoadedModel,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from glide.cli import main
    from glide.models.export import save_model

    _save_student(teacher, tmp_path / "models" / "base-distilled-pd4" / "model.pt", "pd-2")
    plain = save_model(
        tmp_path / "teacher" / "model.pt",
        teacher.model,
        kind="base",
        options=teacher.options,
        tokenizer="clip",
        diffusion={"steps": teacher.diffusion.steps, "noise_schedule": "squaredcos_cap_v2"},
    )
    monkeypatch.chdir(tmp_path)
    fast = ["--sampler", "dpm++", "--steps", "2", "--base-only", "--no-progress"]
    args = ["sample", "--prompt", "a red circle", "--out", "out.png", "--recipe", "distilled"]
    assert main([*args, *fast]) == 0
    from PIL import Image

    with Image.open(tmp_path / "out_000.png") as img:
        assert "base-distilled-pd4" in img.text["model_version"]
        assert img.text["recipe"] == "distilled" and img.text["sampler"] == "dpm++-2"
    # without --sampler the student samples on the grid its export names
    assert main([*args, "--base-only", "--no-progress", "--out", "hint.png"]) == 0
    with Image.open(tmp_path / "hint_000.png") as img:
        assert img.text["sampler"] == "pd-2"
    capsys.readouterr()
    assert main([*args, *fast, "--base", str(plain)]) == 2
    assert "needs a guidance-distilled base" in capsys.readouterr().err


def test_evaluate_sampler_table_row_for_the_distilled_recipe(
    teacher: LoadedModel, tmp_path: Path
) -> None:
    from glide.evaluation import EvaluateConfig, Evaluator
    from glide.sampling import load_model_source
    from tests.test_sampling_support import write_shapes_coco

    captions = write_shapes_coco(tmp_path / "set", 4, size=64)
    student = load_model_source(str(_save_student(teacher, tmp_path / "s" / "model.pt")))
    config = EvaluateConfig.from_dict(
        {
            "captions": str(captions),
            "num_captions": 4,
            "batch_size": 2,
            "upsample_count": 0,
            "cache_dir": None,
            "fid": {"enabled": False},
            "inpaint_eval": {"enabled": False},
            "clip_retrieval": {"enabled": False},
            "sweep": {"cfg_scales": [], "clip_scales": []},
            "sampler_table": {"samplers": [], "num_images": 4, "recipes": ["distilled"]},
        }
    )
    quiet = {"log": lambda _: None}
    up = micro_model("upsample")
    with_student = Evaluator(config, base=teacher, upsampler=up, distilled=student, **quiet)
    result = with_student.run().metrics_json()
    row = result["samplers"]["recipe:distilled"]
    assert 0.0 <= row["caption_accuracy"] <= 1.0 and row["seconds_per_image"] > 0
    without = Evaluator(config, base=teacher, upsampler=up, **quiet).run().metrics_json()
    assert "recipe:distilled" not in without["samplers"]
    assert "train=distill" in without["unavailable"]["recipe:distilled"]


def test_the_distillation_pipeline_stays_out_of_the_default_dvc_repro(tmp_path: Path) -> None:
    import shutil
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for rel in [*tracked, "pipelines/distill/dvc.yaml"]:  # the project as a fresh clone has it
        if (REPO_ROOT / rel).is_file():
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO_ROOT / rel, tmp_path / rel)
    import yaml

    # --dry still wants every dependency on disk: stand-ins for the pipelines' outputs
    for dvc_yaml in ("dvc.yaml", "pipelines/distill/dvc.yaml"):  # both run from the root
        for stage in yaml.safe_load((tmp_path / dvc_yaml).read_text())["stages"].values():
            for entry in stage.get("deps", []):
                dep = tmp_path / entry
                if dep.exists():
                    continue
                if dep.suffix:
                    dep.parent.mkdir(parents=True, exist_ok=True)
                    dep.write_text("{}")
                else:
                    dep.mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    dvc = [sys.executable, "-m", "dvc", "repro", "--dry"]

    def stages(*target: str) -> str:
        out = subprocess.run([*dvc, *target], cwd=tmp_path, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout

    default = stages()
    assert "'train_base'" in default and "distill_base" not in default
    targeted = stages("pipelines/distill/dvc.yaml")
    names = ("distill_base", "distill_pd8", "distill_pd4", "distill_upsampler_pd8",
             "distill_upsampler_pd4", "distill_upsampler_pd2", "evaluate_distilled",
             "register_distilled")  # fmt: skip
    at = [targeted.find(f"'pipelines/distill/dvc.yaml:{name}'") for name in names]
    assert -1 not in at, targeted
    # each round after its teacher; evaluation after both students, registry last
    assert at[0] < at[1] < at[2] < at[6] and at[3] < at[4] < at[5] < at[6] < at[7]
    assert "'train_base'" in targeted  # the teachers come first
    assert "'evaluate'" not in targeted and "'register'" not in targeted


def test_ddim_step_with_the_true_x0_lands_on_the_same_noise_path() -> None:
    from glide.guidance.distilled import ddim_step

    diffusion = create_gaussian_diffusion(steps=1000)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 3, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    t, s = torch.tensor([999, 600, 250]), torch.tensor([749, 300, -1])
    x_t = diffusion.q_sample(x0, t, noise=noise)
    landed = ddim_step(diffusion, x_t, t, s, x0)
    expected = torch.cat([diffusion.q_sample(x0[:2], s[:2], noise=noise[:2]), x0[2:]])
    assert torch.allclose(landed, expected, atol=1e-5)


class _Oracle(torch.nn.Module):
    """An eps model that always points at one image ``x0`` (for any caption and weight)."""

    def __init__(self, diffusion, x0: torch.Tensor) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.diffusion, self.x0 = diffusion, x0

    def forward(self, x, t, guidance=None, **kwargs):  # type: ignore[no-untyped-def]
        abar = self.diffusion.alphas_cumprod.float()[t].view(-1, 1, 1, 1)
        return (x - abar.sqrt() * self.x0) / (1 - abar).sqrt()


def test_progressive_loss_is_zero_for_a_student_that_already_jumps_two_teacher_steps() -> None:
    from glide.guidance.distilled import progressive_distillation_loss

    diffusion = create_gaussian_diffusion(steps=1000)
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(4, 3, 8, 8, generator=g) * 1.6 - 0.8  # inside [-1, 1]: clipping is idle
    teacher = _Oracle(diffusion, x0)
    kw = {"steps": 4, "cond": {}, "noise": torch.randn(x0.shape, generator=g)}
    step, w = torch.tensor([0, 1, 2, 3]), torch.full((4,), 3.0)
    # the oracle's two DDIM steps land where its one step does: nothing left to learn
    same = progressive_distillation_loss(teacher, teacher, diffusion, x0, step, w, **kw)
    assert float(same.max()) < 1e-6
    # a student off by 0.1 everywhere in x0 pays 0.01 times the truncated-SNR weight
    off = _Oracle(diffusion, x0 + 0.1)
    loss = progressive_distillation_loss(off, teacher, diffusion, x0, step, w, **kw)
    t = torch.tensor([999, 749, 500, 250])
    weight = diffusion.snr(t).clamp(min=1.0).float()
    assert torch.allclose(loss, 0.01 * weight, rtol=1e-3)


def test_progressive_training_moves_a_student_toward_its_teacher(teacher: LoadedModel) -> None:
    from glide.guidance.distilled import progressive_distillation_loss

    torch.manual_seed(0)
    base = student_from_teacher(teacher.model, teacher.options)
    with torch.no_grad():  # a stage-one student as the teacher: its weight embedding is live
        for p in base.guidance_embed.parameters():
            p.normal_(std=0.05)
    frozen = base.eval().requires_grad_(False)
    student = student_from_teacher(teacher.model, teacher.options)
    student.load_state_dict(frozen.state_dict())
    student.train()
    diffusion = create_gaussian_diffusion(steps=1000)
    x0, cond, _ = _batch(teacher)
    kw = {"steps": 2, "cond": cond, "noise": torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))}  # fmt: skip
    step, w = torch.tensor([0, 1, 0, 1]), torch.tensor([2.0, 2.0, 4.0, 4.0])
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    losses = []
    for _ in range(20):
        loss = progressive_distillation_loss(student, frozen, diffusion, x0, step, w, **kw).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_a_progressive_round_trains_from_a_guided_student(tmp_path: Path) -> None:
    from glide.models import load_preset
    from glide.sampling import load_model_source
    from glide.training import train
    from tests.test_training_data import write_shards
    from tests.test_training_modules import small_config

    shards = write_shards(tmp_path / "shards", n=32, per_shard=16, size=64)
    common = {"root": tmp_path, "experiment": "test",
              "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}  # fmt: skip
    base = train(small_config(shards, tmp_path, max_steps=1, num_threads=1), load_preset("tiny"), **common)  # fmt: skip
    guided_cfg = small_config(shards, tmp_path, kind="distill", max_steps=1, num_threads=1)
    guided_cfg = dataclasses.replace(
        guided_cfg, distill=DistillConfig(teacher=str(base.model_path))
    )
    guided = train(guided_cfg, load_preset("tiny"), **common)

    rounds = dataclasses.replace(
        guided_cfg,
        name="pd2",
        out_dir=str(tmp_path / "models" / "pd2"),
        max_steps=2,
        distill=DistillConfig(mode="progressive", teacher=str(guided.model_path), steps=2),
    )
    result = train(rounds, load_preset("tiny"), **common)
    loaded = load_model_source(str(result.model_path))
    assert loaded.options["guidance_embed"] and result.step == 2
    out = Cascade(loaded).generate(
        ["a red circle"],
        GenerationConfig(guidance_scale=3.0, sampler=parse_sampler("pd-2"), upsample=False),
    )
    assert out.base.shape == (1, 3, 32, 32)
    # a progressive round needs a guidance-distilled teacher, not the plain base
    wrong = dataclasses.replace(
        rounds,
        out_dir=str(tmp_path / "wrong"),
        distill=DistillConfig(mode="progressive", teacher=str(base.model_path), steps=2),
    )
    with pytest.raises(ValueError, match="needs a guidance-distilled base"):
        train(wrong, load_preset("tiny"), **common)


def test_an_upsampler_round_halves_its_steps_without_a_guidance_input(tmp_path: Path) -> None:
    from glide.models import load_preset
    from glide.models.export import read_metadata
    from glide.sampling import load_model_source
    from glide.training import train
    from tests.test_training_data import write_shards
    from tests.test_training_modules import small_config

    shards = write_shards(tmp_path / "shards", n=32, per_shard=16, size=64)
    common = {"root": tmp_path, "experiment": "test",
              "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}  # fmt: skip
    up_cfg = small_config(shards, tmp_path, kind="upsample", max_steps=1, num_threads=1)
    teacher = train(up_cfg, load_preset("tiny"), **common)
    cfg = dataclasses.replace(
        up_cfg,
        kind="distill",
        name="up-pd2",
        out_dir=str(tmp_path / "models" / "up-pd2"),
        max_steps=2,
        distill=DistillConfig(mode="progressive", teacher=str(teacher.model_path), steps=2),
    )
    result = train(cfg, load_preset("tiny"), **common)
    assert result.step == 2 and result.model_path is not None
    student = load_model_source(str(result.model_path))
    assert student.kind == "upsample" and not student.options.get("guidance_embed")
    assert read_metadata(result.model_path)["extra"]["sampler"] == "pd-2"
    before = load_model_source(str(teacher.model_path)).model.state_dict()
    moved = [k for k, v in student.model.state_dict().items() if not torch.equal(v, before[k])]
    assert moved, "the round did not train the student"
    base = micro_model("base")
    out = Cascade(base, upsampler=student).generate(
        ["a red circle"],
        GenerationConfig(
            guidance_scale=1.0,
            sampler=parse_sampler("ddim-2"),
            upsample_sampler=parse_sampler("pd-2"),
        ),
    )
    assert out.final.shape == (1, 3, 32, 32) and out.final.float().std() > 0  # the micro pair
    # the upsampler is sampled unguided: a guided round of it is refused with the reason
    guided = dataclasses.replace(
        cfg, out_dir=str(tmp_path / "g"), distill=DistillConfig(teacher=str(teacher.model_path))
    )
    with pytest.raises(ValueError, match="no guidance to distil"):
        train(guided, load_preset("tiny"), **common)


def test_the_distilled_recipe_samples_each_student_on_the_grid_it_learned() -> None:
    from glide.sampling import RECIPES, for_models

    recipe = RECIPES["distilled"]
    assert (recipe.sampler.label, recipe.upsample_sampler.label) == ("pd-4", "pd-2")
    pd4 = dataclasses.replace(micro_model("base"), sampler="pd-4")
    up_pd2 = dataclasses.replace(micro_model("upsample"), sampler="pd-2")
    both = for_models(recipe, pd4, up_pd2)
    assert (both.sampler.label, both.upsample_sampler.label) == ("pd-4", "pd-2")
    assert both.upsample_temperature == 1.0  # the students learned from unscaled noise
    stage_one = for_models(recipe, micro_model("base"), micro_model("upsample"))
    assert (stage_one.sampler.label, stage_one.upsample_sampler.label) == ("dpm++-10", "fast27")
    assert stage_one.upsample_temperature == 0.997  # the release's, for a plain upsampler
    assert for_models(RECIPES["balanced"], pd4, up_pd2) is RECIPES["balanced"]
    # the CLI keeps its own copies of the default paths (its --help does not import torch)
    from glide import cli
    from glide.sampling import recipes

    assert (cli.DISTILLED_BASE, cli.DISTILLED_UPSAMPLER) == (
        recipes.DISTILLED_BASE, recipes.DISTILLED_UPSAMPLER)  # fmt: skip
