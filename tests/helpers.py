"""Small helpers shared by tests: image/record factories for the data tests (files the tests
write themselves), and importing a script as a module."""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image


def pattern_image(seed: int, size: tuple[int, int] = (96, 96), mode: str = "RGB") -> Image.Image:
    """A distinctive random blocky image (distinct seeds are never near-duplicates)."""
    rng = np.random.default_rng(seed)
    w, h = size
    blocks = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    img = Image.fromarray(blocks, "RGB").resize((w, h), Image.Resampling.NEAREST)
    return img if mode == "RGB" else img.convert(mode)


def encode(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def load_script(path: Path, name: str) -> ModuleType:
    """The script at ``path`` (a benchmark or pipeline stage, not a package module) imported as
    module ``name``, registered in ``sys.modules`` (dataclasses look their module up there)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
