"""``glide sample`` and ``glide inpaint`` end to end on micro models saved in the export format,
and their one-line errors for bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glide.cli import main
from glide.models.export import save_model
from tests.test_sampling_support import micro_model

FAST = ["--sampler", "dpm++", "--steps", "2", "--upsample-sampler", "dpm++-2", "--no-progress"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    paths = {}
    for part in ("base", "upsample", "base_inpaint", "upsample_inpaint", "clip"):
        loaded = micro_model(part)
        path = root / part / "model.pt"
        save_model(
            path,
            loaded.model,
            kind=loaded.kind,
            options=loaded.options,
            tokenizer="clip",
            diffusion={
                "steps": loaded.diffusion.steps,
                "noise_schedule": loaded.diffusion.noise_schedule,
            },
            extra={"run_id": f"run-{part}"},
        )
        paths[part] = path.parent
    return paths


def test_sample_full_cascade_writes_grid_and_images_with_metadata(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "red.png"
    args = ["sample", "--prompt", "a red circle", "--out", str(out), "-n", "2", "--seed", "3"]
    models_args = [
        "--base",
        str(models["base"]),
        "--upsampler",
        str(models["upsample"] / "model.pt"),
    ]
    assert main([*args, *FAST, *models_args]) == 0
    assert "wrote" in capsys.readouterr().out
    singles = [tmp_path / "red_000.png", tmp_path / "red_001.png"]
    with Image.open(out) as grid:
        assert grid.size == (128, 64)  # two 64x64 upsampled images side by side
        assert grid.text["prompt"] == "a red circle"
    with Image.open(singles[1]) as img:
        assert img.size == (64, 64) and img.mode == "RGB"
        meta = img.text
    assert meta["seed"] == "3" and meta["index"] == "1" and meta["sampler"] == "dpm++-2"
    assert meta["upsample_sampler"] == "dpm++-2" and meta["guidance_scale"] == "3"
    assert str(models["base"]) in meta["model_version"] and "run-base" in meta["model_version"]
    assert "run-upsample" in meta["upsampler_version"]


def test_sample_base_only_with_clip_guidance_and_empty_prompt(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "folder"
    args = ["sample", "--prompt", "", "--out", str(out), "--base-only", "-n", "1"]
    extra = ["--model", str(models["base"]), "--clip", str(models["clip"])]  # --base alias
    clip = ["--clip-guidance-scale", "2", "--sampler", "ddim", "--steps", "2", "--no-progress"]
    assert main([*args, *extra, *clip]) == 0
    assert "unconditionally" in capsys.readouterr().err
    with Image.open(out / "000.png") as img:
        assert img.size == (32, 32) and img.text["clip_guidance_scale"] == "2"
        assert img.text["prompt"] == "" and "upsample_sampler" not in img.text
    assert (out / "grid.png").is_file()


def test_inpaint_keeps_the_known_region(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(source).convert("RGBA").save(tmp_path / "in.png")  # other mode: converted
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[:32] = 255  # keep the top half
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "painted.png"
    args = ["inpaint", "--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png")]
    args += ["--prompt", "a blue star", "--out", str(out), "-n", "1", *FAST]
    args += ["--base", str(models["base_inpaint"]), "--upsampler", str(models["upsample_inpaint"])]
    assert main(args) == 0
    assert "RGBA" in capsys.readouterr().err
    result = np.asarray(Image.open(tmp_path / "painted_000.png"))
    assert result.shape == (64, 64, 3)
    assert np.array_equal(result[:32], source[:32])
    assert not np.array_equal(result[32:], source[32:])
    # inverted mask: the bottom half is kept; base-only at 32x32 against the resized source
    inv = tmp_path / "inv.png"
    args_inv = [a if a != str(out) else str(inv) for a in args] + ["--invert-mask", "--base-only"]
    assert main(args_inv) == 0
    small = np.asarray(Image.open(tmp_path / "inv_000.png"))
    resized = np.asarray(Image.fromarray(source).resize((32, 32), Image.Resampling.BICUBIC))
    assert small.shape == (32, 32, 3) and np.array_equal(small[16:], resized[16:])


def test_bad_input_gives_one_line_errors(
    models: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = ["sample", "--prompt", "x", "--out", str(tmp_path / "o.png"), "--no-progress"]

    def error(args: list[str]) -> str:
        assert main(args) == 2
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ": error: " in ln]
        assert len(lines) == 1 and lines[0].startswith("glide "), err
        assert "Traceback" not in err
        return lines[0]

    assert "not found" in error([*base, "--base", str(tmp_path / "nope")])
    monkeypatch.setenv("GLIDE_OPENAI_DIR", str(tmp_path / "openai"))
    msg = error([*base, "--base", "openai:base"])
    assert "base.pt" in msg and str(tmp_path / "openai") in msg
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert "unknown model URI" in error([*base, "--base", "models:/glide-base@champion"])
    assert "unknown sampler" in error([*base, "--sampler", "euler"])
    assert "dpm++" in error([*base, "--sampler", "dpm++", "--clip-guidance-scale", "1"])
    inpaint = ["inpaint", "--prompt", "x", "--out", str(tmp_path / "p.png")]
    assert "image" in error([*inpaint, "--image", str(tmp_path / "no.png"), "--mask", "m.png"])
    (tmp_path / "text.png").write_text("not an image")
    msg = error([*inpaint, "--image", str(tmp_path / "text.png"), "--mask", "m.png"])
    assert "not a readable image" in msg
    Image.new("L", (8, 8)).save(tmp_path / "m.png")
    msg = error(
        [*inpaint, "--image", str(tmp_path / "m.png"), "--mask", str(tmp_path / "m.png"),
         "--base", str(models["base"]), "--base-only"]
    )  # fmt: skip
    assert "not an inpainting model" in msg


@pytest.fixture
def load_count(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every model source the command loads, through the real loader."""
    import glide.sampling

    real = glide.sampling.load_model_source
    loads: list[str] = []

    def counting(source: str, **kwargs: object) -> object:
        loads.append(source)
        return real(source, **kwargs)

    monkeypatch.setattr(glide.sampling, "load_model_source", counting)
    return loads


def test_prompts_file_draws_every_caption_with_one_model_load(
    models: dict[str, Path],
    tmp_path: Path,
    load_count: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = tmp_path / "captions.txt"
    text.write_text("a red circle\n\n  a blue square  \na green star\n")
    out = tmp_path / "set"
    cascade = ["--base", str(models["base"]), "--upsampler", str(models["upsample"]), *FAST]
    args = ["sample", "--prompts-file", str(text), "--out", str(out), "-n", "2", "--seed", "5"]
    assert main([*args, *cascade]) == 0
    assert load_count == [str(models["base"]), str(models["upsample"])]  # once, not per caption
    assert capsys.readouterr().out.count("wrote") == 3
    assert sorted(p.name for p in out.iterdir()) == [
        f"line-000{n}{suffix}.png" for n in (1, 3, 4) for suffix in ("", "_000", "_001")
    ]  # blank line 2 skipped; names keep the line numbers
    with Image.open(out / "line-0003_001.png") as img:
        meta, drawn = img.text, np.asarray(img)
    assert meta["prompt"] == "a blue square" and meta["line"] == "3" and meta["index"] == "1"
    assert meta["prompts_file"] == str(text) and meta["seed"] == "5"
    assert meta["sampler"] == "dpm++-2" and "run-base" in meta["model_version"]
    assert meta["settings"] and len(meta["settings"]) == 16  # what a rerun compares
    assert not np.array_equal(np.asarray(Image.open(out / "line-0003_000.png")), drawn)

    coco = tmp_path / "captions.json"
    annotations = [
        {"id": 7, "image_id": 3, "caption": "a red circle"},
        {"id": 9, "image_id": 3},  # no caption: counted and skipped
        {"id": 8, "image_id": 4, "caption": "a yellow star"},
    ]
    coco.write_text(json.dumps({"images": [], "annotations": annotations}))
    load_count.clear()
    args = ["sample", "--prompts-file", str(coco), "--out", str(tmp_path / "coco"), "-n", "1"]
    assert main([*args, "--base-only", "--base", str(models["base"]), *FAST]) == 0
    assert load_count == [str(models["base"])]
    assert "skipped 1 annotation(s) without a caption" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "coco").iterdir()) == [
        "ann-0001.png", "ann-0001_000.png", "ann-0003.png", "ann-0003_000.png",
    ]  # fmt: skip
    with Image.open(tmp_path / "coco" / "ann-0003_000.png") as img:
        assert img.text["prompt"] == "a yellow star" and img.text["annotation_id"] == "8"
        assert img.text["image_id"] == "4" and img.text["annotation"] == "3"


def test_prompts_file_errors_are_one_line_before_any_model_loads(
    models: dict[str, Path],
    tmp_path: Path,
    load_count: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    def error(path: Path, out: str = "folder") -> str:
        args = ["sample", "--prompts-file", str(path), "--out", str(tmp_path / out)]
        assert main([*args, "--base", str(models["base"]), "--base-only", *FAST]) == 2
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("glide sample: error: "), err
        return lines[0]

    (tmp_path / "empty.txt").write_text("")
    assert "has no captions" in error(tmp_path / "empty.txt")
    (tmp_path / "blank.txt").write_text("\n   \n\t\n")
    assert "has no captions" in error(tmp_path / "blank.txt")
    assert "not found" in error(tmp_path / "missing.txt")
    assert "not found" in error(tmp_path)  # a folder is not a prompts file
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00caption")
    assert "not readable UTF-8 text" in error(tmp_path / "binary.txt")
    (tmp_path / "bad.json").write_text("{not json")
    assert "not valid JSON" in error(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text('["a red circle"]')
    assert "no 'annotations' list" in error(tmp_path / "list.json")
    (tmp_path / "none.json").write_text('{"annotations": [{"image_id": 1}]}')
    assert "has no captions" in error(tmp_path / "none.json")
    (tmp_path / "ok.txt").write_text("a red circle\n")
    assert "--out must be a folder" in error(tmp_path / "ok.txt", out="x.png")
    assert load_count == []
    # --prompt and --prompts-file exclude each other, and one of them is required
    for argv in (["--prompt", "x", "--prompts-file", "f"], []):
        with pytest.raises(SystemExit) as exit_info:
            main(["sample", *argv, "--out", str(tmp_path / "o")])
        assert exit_info.value.code == 2
    assert "--prompts-file" in capsys.readouterr().err


def test_console_script_is_installed() -> None:
    exe = shutil.which("glide") or str(Path(sys.executable).with_name("glide"))
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "sample" in proc.stdout and "inpaint" in proc.stdout


def test_distribution_is_glide_pipeline_and_owns_the_glide_package(tmp_path: Path) -> None:
    """``glide`` on the package index is an unrelated project: ours installs as glide-pipeline,
    and it alone provides the ``glide`` import package and the ``glide`` command."""
    from importlib.metadata import distribution, packages_distributions, version

    from glide.sampling import save_samples

    assert set(packages_distributions()["glide"]) == {"glide-pipeline"}
    scripts = {
        ep.name: ep.value
        for ep in distribution("glide-pipeline").entry_points
        if ep.group == "console_scripts"
    }
    assert scripts == {"glide": "glide.cli:main"}
    _, (path,) = save_samples([Image.new("RGB", (8, 8))], tmp_path / "x.png", {"prompt": "p"})
    with Image.open(path) as img:
        assert img.text["software"] == f"glide {version('glide-pipeline')}"


def test_sample_defaults_to_the_balanced_recipe_and_says_what_it_chose(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["sample", "--prompt", "a red circle", "-n", "1", "--no-progress", "--base-only"]
    args += ["--base", str(models["base"])]
    assert main([*args, "--out", str(tmp_path / "fast.png"), "--steps", "2"]) == 0
    err = capsys.readouterr().err
    assert "recipe balanced: base dpm++-2" in err and "precision " in err and "text cache" in err
    with Image.open(tmp_path / "fast_000.png") as img:
        assert img.text["recipe"] == "balanced" and img.text["sampler"] == "dpm++-2"
        assert img.text["precision"] in ("fp32", "bf16")
    release = [*args, "--out", str(tmp_path / "rel.png"), "--recipe", "release", "--steps", "3"]
    assert main([*release, "--precision", "fp32"]) == 0
    err = capsys.readouterr().err
    assert "recipe release: base ancestral-3" in err and "precision fp32" in err and "eager" in err
    with Image.open(tmp_path / "rel_000.png") as img:
        assert img.text["recipe"] == "release" and img.text["precision"] == "fp32"
    # CLIP guidance needs a cond_fn sampler: the fast recipe switches its base to DDIM
    clip = ["--clip", str(models["clip"]), "--clip-guidance-scale", "1", "--steps", "2"]
    assert main([*args, "--out", str(tmp_path / "clip.png"), *clip]) == 0
    assert "base ddim-2" in capsys.readouterr().err


def _pixels(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


def test_prompts_file_batches_across_captions_shards_and_resumes(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "captions.txt"
    text.write_text("a red circle\na blue square\na green star\na yellow star\na red square\n")
    base = ["--base-only", "--base", str(models["base"]), *FAST, "-n", "2", "--seed", "1"]

    def sample(out: str, *extra: str) -> int:
        argv = ["sample", "--prompts-file", str(text), "--out", str(tmp_path / out), *base]
        return main([*argv, *extra])

    # one process, batches of 4 images across captions
    assert sample("one", "--batch-size", "4") == 0
    one = {p.name: p.read_bytes() for p in (tmp_path / "one").glob("*.png")}
    assert len(one) == 5 * 3  # a grid and two images per caption
    # two shards of the same batches: together exactly the same files, byte for byte
    capsys.readouterr()
    assert sample("two", "--batch-size", "4", "--num-shards", "2", "--shard-index", "1") == 0
    assert "shard 1/2: wrote 4 image(s), 0 already on disk" in capsys.readouterr().out
    assert sample("two", "--batch-size", "4", "--num-shards", "2", "--shard-index", "0") == 0
    two = {p.name: p.read_bytes() for p in (tmp_path / "two").glob("*.png")}
    assert two == one
    # a rerun skips what is on disk; an image removed (an interrupted run) is drawn again
    (tmp_path / "two" / "line-0004_001.png").unlink()
    capsys.readouterr()
    assert sample("two", "--batch-size", "4") == 0
    err = capsys.readouterr().err
    assert "skipped 6 image(s) already written" in err  # batches of 4, 4, 2: the second redrawn
    assert {p.name: p.read_bytes() for p in (tmp_path / "two").glob("*.png")} == one
    # other settings into the same folder are drawn again, not kept stale
    assert sample("two", "--batch-size", "4", "--guidance-scale", "2") == 0
    assert "skipped" not in capsys.readouterr().err
    assert (tmp_path / "two" / "line-0001_000.png").read_bytes() != one["line-0001_000.png"]

    # batch 1: the same noise per image, so the same pictures up to batched-kernel round-off
    assert sample("single", "--batch-size", "1") == 0
    batched, single = _pixels(tmp_path / "one"), _pixels(tmp_path / "single")
    assert batched.keys() == single.keys()
    for name in batched:
        diff = np.abs(batched[name].astype(int) - single[name].astype(int))
        assert diff.mean() < 0.05 and np.mean(diff > 1) < 0.01, (name, diff.max())


def test_shard_defaults_come_from_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    from glide.cli import build_parser

    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    args = build_parser().parse_args(["sample", "--prompts-file", "f.txt", "--out", "o"])
    assert (args.num_shards, args.shard_index) == (4, 3)
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    args = build_parser().parse_args(["sample", "--prompts-file", "f.txt", "--out", "o"])
    assert (args.num_shards, args.shard_index) == (1, 0)
