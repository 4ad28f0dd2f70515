"""Model presets (``conf/model/<name>.yaml``): release-style options for each network of a size.

Each preset holds ``base`` / ``upsample`` (and ``*_inpaint``) U-Net options and ``clip`` options,
plus the expected parameter counts under ``n_params``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from torch import nn

from glide.models.options import clip_from_openai_options, from_openai_options

CONF_DIR = Path(__file__).resolve().parents[3] / "conf" / "model"


def load_preset(name: str, conf_dir: str | Path | None = None) -> dict[str, Any]:
    """Read ``<conf_dir>/<name>.yaml`` (default: the repository's ``conf/model``)."""
    path = Path(conf_dir or CONF_DIR) / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"model preset {name!r} not found at {path}")
    return yaml.safe_load(path.read_text())


def build_from_preset(
    name: str, part: str = "base", conf_dir: str | Path | None = None
) -> nn.Module:
    """Build ``part`` ("base", "upsample", "base_inpaint", ..., or "clip") of a preset."""
    preset = load_preset(name, conf_dir)
    if part not in preset:
        raise KeyError(f"preset {name!r} has no {part!r}; it has {sorted(preset)}")
    options = preset[part]
    return clip_from_openai_options(options) if part == "clip" else from_openai_options(options)
