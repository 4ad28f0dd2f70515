"""CLIP score, oracle caption accuracy and the COCO-format reader, on files the tests write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from glide.data.shapes import make_example
from glide.evaluation import (
    NoisedCLIPScorer,
    caption_accuracy,
    clip_score,
    is_builtin_caption,
    is_single_object,
    load_coco_captions,
)
from tests.test_sampling_support import micro_model, write_shapes_coco


def test_clip_score_is_100_cosine() -> None:
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    b = torch.tensor([[5.0, 0.0], [1.0, 0.0], [-1.0, -1.0]])
    assert clip_score(a, b).tolist() == pytest.approx([100.0, 0.0, -100.0], abs=1e-4)


def test_noised_clip_scorer_scores_each_image_against_its_caption() -> None:
    clip = micro_model("clip")
    scorer = NoisedCLIPScorer(clip.model, clip.tokenizer, text_ctx=clip.text_ctx)  # type: ignore[arg-type]
    images = torch.randint(0, 256, (3, 3, 96, 96), dtype=torch.uint8)  # resized to 64 inside
    captions = ["a red circle", "a blue star", ""]
    scores = scorer.scores(images, captions, batch_size=2)
    assert scores.shape == (3,) and bool((scores.abs() <= 100.0 + 1e-3).all())
    img_f, txt_f = scorer.image_features(images), scorer.text_features(captions)
    assert torch.allclose(scores, clip_score(img_f, txt_f), atol=1e-4)
    assert not torch.allclose(txt_f[0], txt_f[1])
    # the same image scored against a different caption changes the score
    swapped = scorer.scores(images[:1], ["a blue star"])
    assert float(swapped[0]) != pytest.approx(float(scores[0]), abs=1e-5)


def test_caption_accuracy_with_the_oracle() -> None:
    examples = [make_example(7, i, size=128) for i in range(12)]
    images = [img for img, _, _ in examples]
    captions = [cap for _, cap, _ in examples]
    right = caption_accuracy(images, captions)
    assert right.accuracy == 1.0 and right.mean_score == 1.0
    assert right.n == 12 and right.n_single_object == sum(map(is_single_object, captions)) > 0
    assert right.single_object_accuracy == 1.0
    wrong = caption_accuracy(images, captions[1:] + captions[:1])
    assert wrong.accuracy < 0.5 and wrong.mean_score < right.mean_score
    assert set(right.as_dict()) == {
        "caption_accuracy",
        "caption_accuracy_ci95",
        "caption_accuracy_single",
        "caption_accuracy_single_ci95",
        "attributes_single",
        "attributes_single_ci95",
        "oracle_score",
    }


def test_single_object_and_builtin_caption_detection() -> None:
    assert is_single_object("a big red circle in the top left on a gray background")
    assert not is_single_object("two red stars")
    assert not is_single_object("a red circle above a blue star")
    assert is_builtin_caption("a red circle above a blue star")
    assert not is_builtin_caption("A man riding a wave on top of a surfboard.")
    assert not is_single_object("A man riding a wave on top of a surfboard.")


def test_coco_reader_samples_reproducibly(tmp_path: Path) -> None:
    path = write_shapes_coco(tmp_path / "set", 12)
    doc = json.loads(path.read_text())
    doc["annotations"].append({"id": 99, "image_id": 2, "caption": "  a second caption "})
    doc["images"].append({"id": 50, "file_name": "uncaptioned.png", "width": 1, "height": 1})
    path.write_text(json.dumps(doc))
    coco = load_coco_captions(path)
    assert len(coco) == 12 and coco.captions[2][-1] == "a second caption"
    first, again = coco.sample(4, seed=1), coco.sample(4, seed=1)
    assert first == again and len({item.image_id for item in first}) == 4
    assert any(coco.sample(4, seed=s) != first for s in (2, 3, 4))
    assert len(coco.sample(0)) == len(coco.sample(100)) == 12
    item = first[0]
    assert item.caption in coco.captions[item.image_id]
    assert item.load().mode == "RGB" and item.load().size == (64, 64)


def test_coco_reader_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"captions\.json"):
        load_coco_captions(tmp_path / "captions.json")
    (tmp_path / "images").mkdir()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [{"id": 1}], "annotations": []}))
    with pytest.raises(ValueError, match="file_name"):
        load_coco_captions(bad)
    orphan = tmp_path / "orphan.json"
    orphan.write_text(
        json.dumps({"images": [], "annotations": [{"id": 1, "image_id": 3, "caption": "x"}]})
    )
    with pytest.raises(ValueError, match="unknown image 3"):
        load_coco_captions(orphan)
    with pytest.raises(FileNotFoundError, match="image folder"):
        load_coco_captions(orphan, tmp_path / "missing")


def test_wilson_interval() -> None:
    from glide.evaluation.captions import wilson_interval

    lo, hi = wilson_interval(32, 64)
    assert lo == pytest.approx(0.3809, abs=1e-3) and hi == pytest.approx(0.6191, abs=1e-3)
    assert wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert wilson_interval(64, 64)[0] > 0.94  # 64 of 64 right: at least ~94% with 95% confidence
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_attribute_verdicts_name_what_failed() -> None:
    from glide.data.shapes import Scene, ShapeObject, render_scene
    from glide.evaluation.captions import judge

    img = render_scene(Scene((ShapeObject("star", "red", "large", 0, 2),), "black"), 128)
    ok = judge(img, "a large red star in the top right on a black background")
    assert ok.matched and ok.failed is None and ok.label == "ok"
    assert ok.attributes == dict.fromkeys(
        ("color", "shape", "size", "position", "background"), True
    )
    wrong_colour = judge(img, "a blue star in the top right")
    assert wrong_colour.attributes == {"color": False, "shape": True, "position": True}
    assert wrong_colour.failed == "color" and not wrong_colour.matched
    wrong_place = judge(img, "a small red star in the bottom left")
    assert wrong_place.attributes == {
        "color": True,
        "shape": True,
        "size": False,
        "position": False,
    }
    assert wrong_place.failed == "size"
    # a caption naming no background is scored against the world's when it has only one
    unnamed = judge(img, "a red star", world_background="white")
    assert unnamed.attributes["background"] is False and unnamed.matched  # exact: named only
    assert "background" not in judge(img, "a red star").attributes
    multi = judge(img, "a red star and a blue circle")
    assert not multi.single and multi.failed == "object 2" and multi.attributes == {}


def test_caption_accuracy_reports_attributes_and_intervals() -> None:
    from glide.data.shapes import World

    world = World(max_objects=1)
    examples = [make_example(9, i, size=128, world=world) for i in range(8)]
    images = [img for img, _, _ in examples]
    captions = [cap for _, cap, _ in examples]
    right = caption_accuracy(images, captions).as_dict()
    assert right["caption_accuracy_single"] == 1.0
    assert set(right["attributes_single"]) >= {"color", "shape"}
    assert all(v == 1.0 for v in right["attributes_single"].values())
    lo, hi = right["caption_accuracy_single_ci95"]
    assert 0.6 < lo < 1.0 and hi == pytest.approx(1.0)
    shuffled = caption_accuracy(images, captions[1:] + captions[:1]).as_dict()
    assert shuffled["attributes_single"]["color"] < 1.0
    assert shuffled["caption_accuracy_single_ci95"][0] < lo


def test_inpaint_tasks_replace_one_object_and_score_edits() -> None:
    import random

    from glide.data.shapes import Scene, ShapeObject, render_scene
    from glide.evaluation.inpaint import inpaint_scores, make_inpaint_task

    scene = Scene((ShapeObject("circle", "red", "large", 1, 1),), "black")
    task = make_inpaint_task(render_scene(scene, 256), 64, random.Random(0))
    assert task is not None
    new = task.target
    assert (new.row, new.col, new.size) == (1, 1, "large")
    assert new.shape != "circle" and new.color not in ("red", "black")
    assert task.caption == f"a large {new.color} {new.shape} in the center on a black background"
    assert float(task.mask.mean()) == pytest.approx(1 - (43 - 21) ** 2 / 64**2)  # one cell erased
    edited = render_scene(Scene((new,), "black"), 256).resize((64, 64))
    found, preserved = inpaint_scores([task, task], [edited, task.image])
    assert found == [True, False]  # the asked object is there / the old one is not it
    assert preserved > 0.99


def test_inpaint_mask_covers_an_object_drawn_bigger_than_its_cell() -> None:
    """In the default world (object_scale 2.5) an object overflows the centre cell: erasing the
    cell alone would leave most of it in the known pixels and make every edit fail."""
    import random

    import numpy as np

    from glide.data.oracle import foreground_mask
    from glide.data.shapes import Scene, ShapeObject, render_scene, to_base_resolution
    from glide.evaluation.inpaint import make_inpaint_task

    image = render_scene(
        Scene((ShapeObject("square", "red", "large", 1, 1),), "black"), 256, object_scale=2.5
    )
    fg = foreground_mask(to_base_resolution(image, 64))
    assert fg[:, :21].any() or fg[:21].any()  # it does overflow the cell
    task = make_inpaint_task(image, 64, random.Random(0))
    assert task is not None
    erased = task.mask[0].numpy() < 0.5
    assert not (fg & ~erased).any()  # every pixel of the old object is erased
    assert 0.05 < float(task.mask.mean()) < 1 - (43 - 21) ** 2 / 64**2  # more than the cell
    edited = render_scene(Scene((task.target,), "black"), 256, object_scale=2.5).resize((64, 64))
    new_fg = foreground_mask(to_base_resolution(edited, 64))
    assert not (new_fg & ~erased).any()  # the new object fits in the erased box too
    assert np.asarray(task.image).shape == (64, 64, 3)
