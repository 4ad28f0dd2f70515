"""Exact and near-duplicate detection."""

from __future__ import annotations

import io

from PIL import Image

from glide.data.dedup import NearDupIndex, hamming, phash, pixel_digest, thumbnail
from tests.helpers import encode, pattern_image


def test_pixel_digest_ignores_encoding() -> None:
    img = pattern_image(1)
    a = Image.open(io.BytesIO(encode(img, "PNG"))).convert("RGB")
    b = Image.open(io.BytesIO(encode(img, "BMP"))).convert("RGB")
    assert pixel_digest(a) == pixel_digest(b)
    assert pixel_digest(a) != pixel_digest(pattern_image(2))


def test_phash_stable_under_reencoding_and_distinct_otherwise() -> None:
    img = pattern_image(3, (128, 128))
    reenc = Image.open(io.BytesIO(encode(img.resize((120, 120)), "JPEG", quality=70)))
    assert hamming(phash(img), phash(reenc.convert("RGB"))) <= 4
    others = [hamming(phash(img), phash(pattern_image(s, (128, 128)))) for s in range(10, 20)]
    assert min(others) > 12


def test_near_dup_index_finds_copies_and_needs_thumbnail_agreement() -> None:
    index = NearDupIndex(radius=6, max_thumb_diff=6.0)
    img = pattern_image(4, (128, 128))
    index.add("a", phash(img), thumbnail(img))
    copy = Image.open(io.BytesIO(encode(img, "JPEG", quality=80))).convert("RGB")
    assert index.query(phash(copy), thumbnail(copy)) == "a"
    # Same geometry, other colours: the hash agrees but the thumbnail does not.
    recolored = Image.fromarray(255 - __import__("numpy").asarray(img))
    assert index.query(phash(img), thumbnail(recolored)) is None
    assert index.query(phash(pattern_image(5, (128, 128))), thumbnail(pattern_image(5))) is None
    assert len(index) == 1


def test_band_lookup_matches_brute_force() -> None:
    import random

    rnd = random.Random(0)
    index = NearDupIndex(radius=5, max_thumb_diff=255.0)
    thumb = thumbnail(pattern_image(0))
    hashes = [rnd.getrandbits(64) for _ in range(300)]
    for i, h in enumerate(hashes):
        index.add(str(i), h, thumb)
    for _ in range(200):
        base = rnd.choice(hashes)
        q = base
        for bit in rnd.sample(range(64), rnd.randint(0, 8)):
            q ^= 1 << bit
        brute = [str(i) for i, h in enumerate(hashes) if hamming(h, q) <= 5]
        found = index.query(q, thumb)
        assert (found is None) == (not brute)
        if found is not None:
            assert hamming(hashes[int(found)], q) <= 5
