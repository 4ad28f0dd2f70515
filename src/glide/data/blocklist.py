"""The safety blocklist: word-boundary, case-insensitive terms the data stage drops captions for.

The packaged default lists cover the categories GLIDE's released model was filtered on: people,
violence and hate symbols. One term or phrase per line; ``#`` starts a comment.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_BLOCKLIST_DIR = Path(__file__).resolve().parent / "blocklists"


def default_blocklist_files() -> list[Path]:
    return sorted(DEFAULT_BLOCKLIST_DIR.glob("*.txt"))


def load_blocklist(paths: list[Path] | None = None) -> list[str]:
    """Terms from ``paths`` (default: the packaged lists), lower-cased, comments removed."""
    files = default_blocklist_files() if paths is None else [Path(p) for p in paths]
    if paths is None and not files:
        raise FileNotFoundError(
            f"no packaged blocklists in {DEFAULT_BLOCKLIST_DIR} (broken install)"
        )
    terms: list[str] = []
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"blocklist file not found: {path}")
        for line in path.read_text(encoding="utf-8").splitlines():
            term = line.split("#", 1)[0].strip().lower()
            if term:
                terms.append(term)
    return terms
