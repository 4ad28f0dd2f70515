"""Raw-scrape mode: determinism, the defect mix, and that every kind really has its property."""

from __future__ import annotations

import io
import re
from collections import Counter
from functools import cache

import numpy as np
import pytest
from PIL import Image, ImageOps, UnidentifiedImageError

from glide.data.records import CONVERT_KINDS, DROP_KINDS, RawRecord
from glide.data.scrape import (
    DEFAULT_BLOCKLIST_DIR,
    ScrapeConfig,
    draw_kind,
    find_original,
    load_blocklist,
    make_raw_record,
)
from glide.data.shapes import make_example

# Mirrors the data stage's defaults closely enough to check "exactly one defect per record".
MIN_SIDE, MAX_ASPECT, MAX_CAPTION = 64, 2.0, 512
_WIDE = ScrapeConfig(seed=5, num_records=240, defect_fraction=0.55, convert_fraction=0.25)


@cache
def _records() -> list[RawRecord]:
    return [make_raw_record(_WIDE, i) for i in range(_WIDE.num_records)]


@cache
def _blocklist_re() -> re.Pattern[str]:
    terms = sorted(load_blocklist(), key=len, reverse=True)
    return re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, terms)) + r")(?!\w)", re.IGNORECASE)


def _decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def _rgb(rec: RawRecord) -> Image.Image:
    img = _decode(rec.image_bytes)
    img = ImageOps.exif_transpose(img)
    if img.mode == "I;16":
        img = Image.fromarray((np.asarray(img, np.uint32) // 257).astype(np.uint8))
    return img.convert("RGB")


def _phash(img: Image.Image) -> int:
    gray = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.BILINEAR), np.float64)
    n = np.arange(32)
    d = np.cos(np.pi * (2 * n[None, :] + 1) * n[:, None] / 64)
    low = (d @ gray @ d.T)[:8, :8].ravel()
    return int("".join("1" if v > np.median(low[1:]) else "0" for v in low), 2)


def _caption_ok(caption: str | None) -> bool:
    text = " ".join((caption or "").split())
    return 0 < len(text) <= MAX_CAPTION and not _blocklist_re().search(text)


def test_determinism() -> None:
    cfg = ScrapeConfig(seed=3, num_records=50, defect_fraction=0.5, convert_fraction=0.3)
    for i in range(50):
        a, b = make_raw_record(cfg, i), make_raw_record(cfg, i)
        assert a == b
        assert a.key == f"shapes-{i:08d}" and a.source == "shapes"
    other = ScrapeConfig(seed=4, num_records=50)
    assert (
        make_raw_record(other, 0).image_bytes
        != make_raw_record(ScrapeConfig(seed=3), 0).image_bytes
    )


def test_defect_mix_follows_fractions() -> None:
    cfg = ScrapeConfig(seed=0, num_records=5000)
    kinds = Counter(draw_kind(cfg, i) for i in range(cfg.num_records))
    drop = sum(kinds[k] for k in DROP_KINDS) / cfg.num_records
    convert = sum(kinds[k] for k in CONVERT_KINDS) / cfg.num_records
    assert abs(drop - 0.2) < 0.02 and abs(convert - 0.1) < 0.015
    # Roughly uniform within each group.
    for k in DROP_KINDS:
        assert 0.5 < kinds[k] / (0.2 * 5000 / len(DROP_KINDS)) < 1.5, k


def test_defect_weights_and_validation() -> None:
    cfg = ScrapeConfig(num_records=300, defect_fraction=0.5, defect_weights={"not_image": 1.0})
    kinds = {draw_kind(cfg, i) for i in range(300)}
    assert kinds & set(DROP_KINDS) == {"not_image"}
    assert kinds & set(CONVERT_KINDS)  # convert group not named: still uniform
    with pytest.raises(ValueError):
        ScrapeConfig(defect_fraction=0.8, convert_fraction=0.3)
    with pytest.raises(ValueError):
        ScrapeConfig(defect_weights={"bogus": 1.0})
    with pytest.raises(ValueError):
        ScrapeConfig(image_format="gif")


def test_every_kind_is_produced() -> None:
    seen = Counter(r.defect for r in _records())
    for kind in (None, *DROP_KINDS, *CONVERT_KINDS):
        assert seen[kind] > 0, kind


def test_each_kind_has_its_property() -> None:
    records = _records()
    by_key = {r.key: r for r in records}
    for rec in records:
        kind = rec.defect
        if kind == "corrupt_image":
            with pytest.raises((OSError, SyntaxError, ValueError)):
                _decode(rec.image_bytes)
            assert _caption_ok(rec.caption)
            continue
        if kind == "not_image":
            assert rec.ext == ".jpg"
            with pytest.raises(UnidentifiedImageError):
                Image.open(io.BytesIO(rec.image_bytes))
            assert _caption_ok(rec.caption)
            continue
        img = _decode(rec.image_bytes)
        w, h = img.size
        size_ok = min(w, h) >= MIN_SIDE
        aspect_ok = max(w, h) / min(w, h) <= MAX_ASPECT
        # Exactly one defect: everything but the labelled property is fine.
        assert size_ok == (kind != "too_small"), rec.key
        assert aspect_ok == (kind != "bad_aspect"), rec.key
        caption_defect = kind in ("empty_caption", "caption_too_long", "blocklist")
        assert _caption_ok(rec.caption) == (not caption_defect), rec.key
        if kind == "empty_caption":
            assert rec.caption is not None and not rec.caption.strip()
        elif kind == "caption_too_long":
            assert len(rec.caption) > 1000
            assert not _blocklist_re().search(rec.caption)
        elif kind == "blocklist":
            assert _blocklist_re().search(rec.caption) and rec.meta["term"] in rec.caption
        elif kind in ("exact_duplicate", "near_duplicate"):
            orig = by_key[rec.meta["duplicate_of"]]
            assert orig.defect is None and orig.key < rec.key
            if kind == "exact_duplicate":
                assert rec.image_bytes == orig.image_bytes
                assert _rgb(rec).tobytes() == _rgb(orig).tobytes()
            else:
                assert rec.image_bytes != orig.image_bytes
                a, b = _rgb(orig), _rgb(rec).resize(_rgb(orig).size, Image.Resampling.BILINEAR)
                diff = np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).mean()
                assert diff < 6, (rec.key, diff)
                assert (_phash(a) ^ _phash(b)).bit_count() <= 4
        elif kind in CONVERT_KINDS:
            expected = {
                "mode_L": "L",
                "mode_LA": "LA",
                "mode_RGBA": "RGBA",
                "mode_P": "P",
                "mode_CMYK": "CMYK",
                "mode_I16": "I;16",
                "exif_rotated": "RGB",
            }[kind]
            assert img.mode == expected, (rec.key, img.mode)
            clean = make_example(_WIDE.seed, rec.meta["index"])[0]
            diff = np.abs(
                np.asarray(_rgb(rec).convert("L"), np.int16)
                - np.asarray(clean.convert("L"), np.int16)
            ).mean()
            assert diff < 4, (rec.key, diff)
            if kind == "exif_rotated":
                assert img.getexif().get(0x0112) in range(2, 9)
        else:
            assert kind in (None, "too_small", "bad_aspect"), kind


def test_duplicates_point_to_nearest_clean_record() -> None:
    for rec in _records():
        if rec.defect in ("exact_duplicate", "near_duplicate"):
            index = rec.meta["index"]
            j = find_original(_WIDE, index)
            assert rec.meta["duplicate_of"] == f"shapes-{j:08d}"
            assert all(draw_kind(_WIDE, k) is not None for k in range(j + 1, index))


def test_non_duplicates_do_not_look_alike() -> None:
    # Clean and convert records must not be (near-)duplicates of each other, or the filters'
    # dedup would drop them: no equal pixels, and no pair both pHash-close and thumbnail-close.
    keep = [r for r in _records() if r.defect is None or r.defect in CONVERT_KINDS]
    imgs = [_rgb(r) for r in keep]
    assert len({im.tobytes() for im in imgs}) == len(imgs)
    hashes = [_phash(im) for im in imgs]
    thumbs = [np.asarray(im.resize((16, 16), Image.Resampling.BOX), np.int16) for im in imgs]
    for i in range(len(imgs)):
        for j in range(i):
            if (hashes[i] ^ hashes[j]).bit_count() <= 6:
                assert np.abs(thumbs[i] - thumbs[j]).mean() > 6, (keep[i].key, keep[j].key)


def test_blocklist_files() -> None:
    for name in ("people.txt", "violence.txt", "hate_symbols.txt"):
        path = DEFAULT_BLOCKLIST_DIR / name
        terms = load_blocklist([path])
        assert 20 <= len(terms) <= 40, name
        assert all(t == t.lower().strip() and t for t in terms)
    assert set(ScrapeConfig().blocklist_terms) == set(load_blocklist())
