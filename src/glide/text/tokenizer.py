"""Caption tokenizers for the diffusion model's text transformer.

Two byte-level BPEs share one interface (:class:`Tokenizer`):

- :class:`CLIPTokenizer` (default): the CLIP BPE bundled with ``open_clip`` (49,408 tokens,
  lower-cased, works offline);
- :class:`GPT2Tokenizer`: the GPT-2 BPE (50,257 tokens) that the released GLIDE checkpoints were
  trained with, read from a user-supplied directory holding ``encoder.json`` and ``vocab.bpe``.

Captions are truncated / padded to the model's ``text_ctx``; the mask is True on real tokens. The
empty caption (all padding, mask all False) is the unconditional input of classifier-free guidance.
"""

from __future__ import annotations

import gzip
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import regex
import torch

EMPTY_CAPTION = ""

# GPT-2's pre-tokenisation: contractions, letters, digits, other symbols, whitespace runs.
_GPT2_SPLIT = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)


class Tokenizer(ABC):
    """Text <-> token ids, plus padding to a fixed context for the text transformer."""

    @property
    @abstractmethod
    def n_vocab(self) -> int:
        """Rows needed in the token embedding table."""

    @property
    @abstractmethod
    def pad_token(self) -> int:
        """Id written into padded positions (masked out by the model)."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens."""

    @abstractmethod
    def decode(self, tokens: Sequence[int]) -> str:
        """Inverse of :meth:`encode` (up to the tokenizer's normalisation)."""

    def padded_tokens_and_mask(
        self, tokens: Sequence[int], text_ctx: int
    ) -> tuple[list[int], list[bool]]:
        """Truncate ``tokens`` to ``text_ctx`` and pad them; mask is True on real tokens."""
        tokens = list(tokens)[:text_ctx]
        n_pad = text_ctx - len(tokens)
        return tokens + [self.pad_token] * n_pad, [True] * len(tokens) + [False] * n_pad

    def empty_tokens_and_mask(self, text_ctx: int) -> tuple[list[int], list[bool]]:
        """The empty caption: the unconditional input for classifier-free guidance."""
        return self.padded_tokens_and_mask(self.encode(EMPTY_CAPTION), text_ctx)

    def batch(self, texts: Sequence[str], text_ctx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode and pad captions: ``(tokens [B, text_ctx] int64, mask [B, text_ctx] bool)``."""
        rows = [self.padded_tokens_and_mask(self.encode(t), text_ctx) for t in texts]
        tokens = torch.tensor([r[0] for r in rows], dtype=torch.long).view(len(texts), text_ctx)
        mask = torch.tensor([r[1] for r in rows], dtype=torch.bool).view(len(texts), text_ctx)
        return tokens, mask


class CLIPTokenizer(Tokenizer):
    """The CLIP BPE shipped inside ``open_clip`` (no network access needed)."""

    def __init__(self) -> None:
        from open_clip.tokenizer import SimpleTokenizer  # heavy import: only when used

        self._bpe: Any = SimpleTokenizer()

    @property
    def n_vocab(self) -> int:
        return len(self._bpe.encoder)

    @property
    def pad_token(self) -> int:
        return int(self._bpe.eot_token_id)

    def encode(self, text: str) -> list[int]:
        return list(self._bpe.encode(text))

    def decode(self, tokens: Sequence[int]) -> str:
        return str(self._bpe.decode(list(tokens))).strip()


@lru_cache(maxsize=1)
def _byte_alphabet() -> dict[int, str]:
    """Reversible byte -> printable character map of byte-level BPEs.

    Printable Latin-1 bytes stand for themselves; the others (controls, space, ...) are shifted
    to code points from 256 upwards so that no byte maps to whitespace.
    """
    keep = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in keep}
    shifted = (b for b in range(256) if b not in table)
    for i, b in enumerate(shifted):
        table[b] = chr(256 + i)
    return table


def _find(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_text(directory: Path, name: str) -> str:
    path = _find(directory, name)
    assert path is not None
    data = path.read_bytes()
    return (gzip.decompress(data) if path.suffix == ".gz" else data).decode("utf-8")


class GPT2Tokenizer(Tokenizer):
    """GPT-2 byte-level BPE from ``encoder.json`` (token -> id) and ``vocab.bpe`` (merges)."""

    FILES = ("encoder.json", "vocab.bpe")
    END_OF_TEXT = "<|endoftext|>"

    def __init__(self, directory: str | Path) -> None:
        directory = Path(directory)
        missing = [name for name in self.FILES if _find(directory, name) is None]
        if missing:
            raise FileNotFoundError(
                f"GPT-2 BPE files missing in {directory}: {', '.join(missing)}. Put both "
                "'encoder.json' and 'vocab.bpe' (plain or .gz: the GPT-2 tokenizer files that the "
                "GLIDE release ships in glide_text2im/tokenizer/, also in openai/gpt-2's "
                "models/124M) in that directory."
            )
        self.encoder: dict[str, int] = json.loads(_read_text(directory, "encoder.json"))
        self.decoder = {i: s for s, i in self.encoder.items()}
        lines = _read_text(directory, "vocab.bpe").splitlines()
        merges = [
            tuple(line.split())
            for line in lines
            if line.strip() and not line.startswith("#version")
        ]
        self.ranks: dict[tuple[str, str], int] = {(a, b): i for i, (a, b) in enumerate(merges)}
        self.byte_to_char = _byte_alphabet()
        self.char_to_byte = {c: b for b, c in self.byte_to_char.items()}
        self._cache: dict[str, list[str]] = {}

    @property
    def n_vocab(self) -> int:
        return len(self.encoder)

    @property
    def pad_token(self) -> int:
        return self.encoder.get(self.END_OF_TEXT, self.n_vocab - 1)

    def _merge(self, word: str) -> list[str]:
        """Apply merges to one pre-token (already mapped to the byte alphabet), best rank first."""
        if word in self._cache:
            return self._cache[word]
        parts = list(word)
        while len(parts) > 1:
            pairs = {(parts[i], parts[i + 1]) for i in range(len(parts) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self._cache[word] = parts
        return parts

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in _GPT2_SPLIT.findall(text):
            mapped = "".join(self.byte_to_char[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[sym] for sym in self._merge(mapped))
        return ids

    def decode(self, tokens: Sequence[int]) -> str:
        chars = "".join(self.decoder[int(t)] for t in tokens)
        return bytes(self.char_to_byte[c] for c in chars).decode("utf-8", errors="replace")


def get_tokenizer(name: str = "clip", path: str | Path | None = None) -> Tokenizer:
    """``"clip"`` (default, bundled with open_clip) or ``"gpt2"`` (needs ``path`` to its files)."""
    if name == "clip":
        return CLIPTokenizer()
    if name == "gpt2":
        if path is None:
            raise ValueError(
                "the GPT-2 tokenizer needs path=<directory with encoder.json and vocab.bpe>"
            )
        return GPT2Tokenizer(path)
    raise ValueError(f"unknown tokenizer {name!r}; expected 'clip' or 'gpt2'")
