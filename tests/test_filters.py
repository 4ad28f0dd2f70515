"""Each per-record filter on records written here: reasons, conversions, caption rules."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from glide.data.blocklist import load_blocklist
from glide.data.filters import FilterConfig, RecordFilter, compile_blocklist, normalize_caption
from glide.data.records import RawRecord
from tests.helpers import encode, pattern_image


def rec(data: bytes, caption: str | None = "a red circle", key: str = "k") -> RawRecord:
    return RawRecord(key=key, image_bytes=data, caption=caption, source="test")


@pytest.fixture(scope="module")
def flt() -> RecordFilter:
    return RecordFilter(
        FilterConfig(min_side=32, max_aspect=2.0, max_caption_chars=50, image_format="png")
    )


def test_clean_record_is_kept_and_reencoded(flt: RecordFilter) -> None:
    img = pattern_image(1)
    out = flt(rec(encode(img, "JPEG", quality=90)))
    assert out.reason is None
    assert (out.width, out.height) == (96, 96)
    decoded = Image.open(io.BytesIO(out.image_bytes))
    assert decoded.format == "PNG" and decoded.mode == "RGB"
    assert out.checks == ["caption", "decode", "rgb", "size", "aspect"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"<html><body>404 not found</body></html>", "not_image"),
        (b"", "not_image"),
        (encode(pattern_image(2), "JPEG")[:300], "corrupt_image"),
        (encode(pattern_image(3), "PNG")[:-40], "corrupt_image"),
        (encode(pattern_image(4, (20, 64))), "too_small"),
        (encode(pattern_image(5, (200, 64))), "bad_aspect"),
    ],
    ids=["html", "empty-bytes", "truncated-jpeg", "truncated-png", "tiny", "aspect"],
)
def test_image_defects_get_their_reason(flt: RecordFilter, data: bytes, reason: str) -> None:
    assert flt(rec(data)).reason == reason


def test_corrupt_middle_of_jpeg_detected(flt: RecordFilter) -> None:
    data = bytearray(encode(pattern_image(6, (128, 128)), "JPEG", quality=90))
    data = bytes(data[:200]) + b"\xff\xd9"  # header intact, scan data cut off
    assert flt(rec(data)).reason == "corrupt_image"


@pytest.mark.parametrize(
    ("caption", "reason"),
    [
        ("", "empty_caption"),
        ("   \t\n ", "empty_caption"),
        (None, "empty_caption"),
        ("x" * 51, "caption_too_long"),
        ("a photo of a Person holding a bag", "blocklist"),
        ("a GUN on a table", "blocklist"),
    ],
)
def test_caption_defects(flt: RecordFilter, caption: str | None, reason: str) -> None:
    assert flt(rec(encode(pattern_image(7)), caption)).reason == reason


def test_blocklist_is_word_boundary_and_case_insensitive() -> None:
    pattern = compile_blocklist(["gun", "hate symbol"])
    assert pattern is not None
    assert pattern.search("A Gun.")
    assert pattern.search("the hate   symbol here")
    assert not pattern.search("a gunmetal grey square")
    assert not pattern.search("begun")


def test_default_blocklists_cover_three_categories() -> None:
    terms = load_blocklist()
    assert {"person", "gun"} <= set(terms) or {"people", "weapon"} & set(terms)
    assert len(terms) >= 30


def test_caption_normalisation() -> None:
    decomposed = "cafe\u0301  au\tlait\n"
    assert normalize_caption(decomposed) == "caf\u00e9 au lait"


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "1"])
def test_other_modes_are_converted_not_dropped(flt: RecordFilter, mode: str) -> None:
    base = pattern_image(8)
    if mode == "I;16":
        arr = (np.asarray(base.convert("L"), np.uint16) * 257).astype(np.uint16)
        img = Image.fromarray(arr)  # uint16 -> mode I;16
    else:
        img = base.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    out = flt(rec(encode(img, fmt)))
    assert out.reason is None, out.meta
    assert out.original_mode == mode
    decoded = np.asarray(Image.open(io.BytesIO(out.image_bytes)))
    assert decoded.shape == (96, 96, 3)
    if mode == "I;16":  # 16-bit values are scaled, not clipped to white
        gray = np.asarray(base.convert("L"), np.int16)
        assert np.abs(decoded[..., 0].astype(np.int16) - gray).max() <= 1


def test_rgba_transparency_composited_on_white(flt: RecordFilter) -> None:
    img = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    out = flt(rec(encode(img)))
    assert out.reason is None
    assert np.asarray(Image.open(io.BytesIO(out.image_bytes))).min() == 255


def test_exif_orientation_applied(flt: RecordFilter) -> None:
    img = Image.new("RGB", (64, 48), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 32, 48))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs a 90 degree clockwise turn
    out = flt(rec(encode(img, "JPEG", quality=95, exif=exif)))
    assert out.reason is None
    assert (out.width, out.height) == (48, 64)
    arr = np.asarray(Image.open(io.BytesIO(out.image_bytes)))
    assert arr[5, 24, 0] > 200 and arr[60, 24, 2] > 200  # red on top after rotation


def test_large_images_downscaled_and_default_jpg_output() -> None:
    flt = RecordFilter(FilterConfig(max_side=128))
    out = flt(rec(encode(pattern_image(9, (400, 300)))))
    assert out.reason is None and (out.width, out.height) == (128, 96)
    assert Image.open(io.BytesIO(out.image_bytes)).format == "JPEG"
    assert out.original_size == (400, 300)


def test_missing_file_counted() -> None:
    out = RecordFilter(FilterConfig())(
        RawRecord("k", b"", "cap", "folder", meta={"load_error": "FileNotFoundError"})
    )
    assert out.reason == "missing_file"


def test_bad_config_rejected() -> None:
    with pytest.raises(ValueError, match="image_format"):
        FilterConfig(image_format="gif")


def test_files_already_in_target_format_keep_their_bytes() -> None:
    jpeg = encode(pattern_image(10), "JPEG", quality=90)
    flt = RecordFilter(FilterConfig(image_format="jpg"))
    assert flt(rec(jpeg)).image_bytes == jpeg  # no second generation of JPEG loss
    gray_jpeg = encode(pattern_image(11).convert("L"), "JPEG", quality=90)
    assert Image.open(io.BytesIO(flt(rec(gray_jpeg)).image_bytes)).mode == "RGB"
    png = encode(pattern_image(12))
    assert Image.open(io.BytesIO(flt(rec(png)).image_bytes)).format == "JPEG"
