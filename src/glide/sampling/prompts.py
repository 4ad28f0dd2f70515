"""Captions read from a file, for ``glide sample --prompts-file``.

Two formats, told apart by the suffix:

- any text file: one caption per line, surrounding whitespace stripped; blank lines are skipped
  but keep their number, so outputs are named after the line a caption is on (``line-0003``);
- ``.json``: a COCO captions file (``{"annotations": [{"caption": ..., "image_id": ...}]}``);
  outputs are named after the annotation's 1-based position (``ann-0001``), and annotations
  without a caption are counted and skipped.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["PromptEntry", "PromptsFileError", "read_prompts"]


class PromptsFileError(ValueError):
    """The prompts file is missing, unreadable, malformed or holds no caption."""


@dataclass(frozen=True)
class PromptEntry:
    """One caption to draw, the name its outputs get and where it came from."""

    stem: str  # e.g. "line-0003" -> line-0003.png (grid), line-0003_000.png, ...
    caption: str
    provenance: Mapping[str, str] = field(default_factory=dict)  # extra PNG text chunks
    number: int = 0  # line number or annotation position: the caption index of its seeds


def _width(count: int) -> int:
    return max(4, len(str(count)))  # zero-padded so names sort in file order


def _from_lines(path: Path, text: str) -> list[PromptEntry]:
    lines = text.splitlines()
    width = _width(len(lines))
    return [
        PromptEntry(
            f"line-{number:0{width}d}",
            line.strip(),
            {"prompts_file": str(path), "line": str(number)},
            number,
        )
        for number, line in enumerate(lines, start=1)
        if line.strip()
    ]


def _from_coco(path: Path, text: str) -> tuple[list[PromptEntry], int]:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise PromptsFileError(f"prompts file {path} is not valid JSON ({exc})") from None
    annotations = doc.get("annotations") if isinstance(doc, dict) else None
    if not isinstance(annotations, list):
        raise PromptsFileError(
            f"prompts file {path} is not a COCO captions file (no 'annotations' list)"
        )
    width = _width(len(annotations))
    entries, skipped = [], 0
    for position, ann in enumerate(annotations, start=1):
        caption = ann.get("caption") if isinstance(ann, dict) else None
        if not isinstance(caption, str) or not caption.strip():
            skipped += 1
            continue
        provenance = {"prompts_file": str(path), "annotation": str(position)}
        for key in ("id", "image_id"):
            if ann.get(key) is not None:
                provenance["annotation_id" if key == "id" else key] = str(ann[key])
        stem = f"ann-{position:0{width}d}"
        entries.append(PromptEntry(stem, caption.strip(), provenance, position))
    return entries, skipped


def read_prompts(path: str | Path) -> tuple[list[PromptEntry], int]:
    """The captions of ``path`` in file order and how many COCO annotations were skipped
    (no caption); :class:`PromptsFileError` (one line) when there is nothing to draw."""
    path = Path(path)
    if not path.is_file():
        raise PromptsFileError(f"prompts file {path} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptsFileError(f"prompts file {path} is not readable UTF-8 text ({exc})") from None
    if path.suffix.lower() == ".json":
        entries, skipped = _from_coco(path, text)
    else:
        entries, skipped = _from_lines(path, text), 0
    if not entries:
        raise PromptsFileError(f"prompts file {path} has no captions")
    return entries, skipped
