"""The ``shapes`` oracle: parse renders back into scenes and score captions against them."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from glide.data.oracle import (
    ObjectSpec,
    RelationSpec,
    check,
    matches,
    parse_background,
    parse_caption,
    parse_image,
    score,
)
from glide.data.shapes import (
    COLORS,
    SHAPES,
    Scene,
    ShapeObject,
    make_example,
    render_scene,
    to_base_resolution,
)


def _accuracy(images_scenes_captions: list) -> tuple[Counter, Counter]:
    ok, total = Counter(), Counter()
    for img, caption, scene in images_scenes_captions:
        dets = parse_image(img)
        background = parse_background(img)
        by_cell = {(d.row, d.col): d for d in dets}
        total["count"] += 1
        ok["count"] += len(dets) == len(scene.objects)
        total["background"] += 1
        ok["background"] += background == scene.background
        for obj in scene.objects:
            det = by_cell.get((obj.row, obj.col))
            total["position"] += 1
            ok["position"] += det is not None
            for attr in ("color", "shape", "size"):
                total[attr] += 1
                ok[attr] += det is not None and getattr(det, attr) == getattr(obj, attr)
        total["caption"] += 1
        ok["caption"] += all(check(parse_caption(caption), dets, background))
    return ok, total


def test_oracle_accuracy_at_base_resolution() -> None:
    data = []
    for seed in (0, 1, 2, 3):
        for index in range(130):
            img, caption, scene = make_example(seed, index)
            data.append((to_base_resolution(img), caption, scene))
    ok, total = _accuracy(data)
    assert total["position"] >= 500
    for key in total:
        assert ok[key] / total[key] >= 0.99, (key, ok[key], total[key])


def test_oracle_accuracy_at_full_resolution() -> None:
    data = [make_example(7, i) for i in range(40)]
    ok, total = _accuracy([(img, cap, scene) for img, cap, scene in data])
    for key in total:
        assert ok[key] / total[key] >= 0.97, (key, ok[key], total[key])


def test_oracle_robust_to_mild_noise() -> None:
    rng = np.random.default_rng(0)
    data = []
    for index in range(60):
        img, caption, scene = make_example(11, index)
        arr = np.asarray(to_base_resolution(img), np.float32)
        noisy = np.clip(arr + rng.normal(0, 8, arr.shape), 0, 255).astype(np.uint8)
        data.append((noisy, caption, scene))
    ok, total = _accuracy(data)
    assert ok["caption"] / total["caption"] >= 0.95


def test_matches_and_score_api() -> None:
    img, caption, _ = make_example(0, 5)
    small = to_base_resolution(img)
    assert matches(small, caption) and score(small, caption) == 1.0
    assert matches(np.asarray(small), caption)  # uint8 arrays work too


def test_wrong_captions_score_below_one() -> None:
    scene = Scene(
        (ShapeObject("star", "green", "large", 0, 0), ShapeObject("circle", "red", "small", 2, 2)),
        "white",
    )
    img = to_base_resolution(render_scene(scene, jitter_seed=1))
    assert score(img, "a large green star in the top left and a small red circle") == 1.0
    assert score(img, "a green star above a red circle on a white background") == 1.0
    wrong = [
        "a large blue star in the top left and a small red circle",  # colour
        "a large green square in the top left and a small red circle",  # shape
        "a small green star in the top left and a small red circle",  # size
        "a large green star in the bottom left and a small red circle",  # position
        "a green star below a red circle",  # relation
        "a green star and a red circle on a black background",  # background
        "two green stars and a red circle",  # count
    ]
    for caption in wrong:
        s = score(img, caption)
        assert 0.0 <= s < 1.0, caption
        assert not matches(img, caption)


def test_wrong_color_or_shape_of_generated_captions() -> None:
    for index in range(40):
        img, _, scene = make_example(5, index)
        img = to_base_resolution(img)
        obj = scene.objects[0]
        present = {(o.shape, o.color) for o in scene.objects}
        color = next(c for c in COLORS if (obj.shape, c) not in present and c != scene.background)
        shape = next(s for s in SHAPES if (s, obj.color) not in present)
        assert score(img, f"a {obj.color} {obj.shape}") == 1.0
        assert score(img, f"a {color} {obj.shape}") < 1.0
        assert score(img, f"a {obj.color} {shape}") < 1.0


def test_parse_caption() -> None:
    spec = parse_caption(
        "A small red circle in the top-left corner, two blue squares and a big "
        "yellow star at the center on a light blue background"
    )
    assert spec.background == "light blue"
    assert spec.objects == [
        ObjectSpec("circle", "red", "small", 0, 0),
        ObjectSpec("square", "blue", count=2, exact=True),
        ObjectSpec("star", "yellow", "large", 1, 1),
    ]
    spec = parse_caption("an image of a green star to the left of an orange hexagon")
    assert spec.relations == [RelationSpec(0, 1, "left of")]
    assert spec.num_constraints == 3
    spec = parse_caption("a gray background with a white triangle under a black square")
    assert spec.background == "gray" and spec.relations[0].relation == "below"


@pytest.mark.parametrize(
    "caption",
    [
        "a dog on a sofa",
        "a red blob",
        "a red circle in the far corner",
        "a red circle on a pink background",
    ],
)
def test_parse_caption_rejects_out_of_grammar(caption: str) -> None:
    with pytest.raises(ValueError):
        parse_caption(caption)


def test_generated_captions_all_parse() -> None:
    for seed in (0, 1):
        for index in range(300):
            _, caption, scene = make_example(seed, index, size=16)
            spec = parse_caption(caption)
            assert spec.objects and spec.num_constraints >= 1
            mentioned = {(o.shape, o.color) for o in spec.objects}
            assert mentioned <= {(o.shape, o.color) for o in scene.objects}
