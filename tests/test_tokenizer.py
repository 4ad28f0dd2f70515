"""Tokenizers: CLIP BPE round trip, our GPT-2 BPE on a hand-made vocabulary, padding, errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from glide.text import CLIPTokenizer, GPT2Tokenizer, get_tokenizer
from glide.text.tokenizer import _byte_alphabet


@pytest.fixture(scope="module")
def clip_tok() -> CLIPTokenizer:
    return CLIPTokenizer()


def test_clip_bpe_round_trip(clip_tok: CLIPTokenizer) -> None:
    text = "a photo of a corgi wearing a red hat, eating 3 pizzas!"
    ids = clip_tok.encode(text)
    assert ids and all(0 <= i < clip_tok.n_vocab for i in ids)
    assert clip_tok.decode(ids) == "a photo of a corgi wearing a red hat , eating 3 pizzas !"
    assert clip_tok.encode(clip_tok.decode(ids)) == ids
    assert clip_tok.n_vocab == 49408


def test_padding_mask_and_empty_caption(clip_tok: CLIPTokenizer) -> None:
    ids = clip_tok.encode("a dog")
    tokens, mask = clip_tok.padded_tokens_and_mask(ids, 8)
    assert tokens[: len(ids)] == ids and len(tokens) == 8
    assert mask == [True] * len(ids) + [False] * (8 - len(ids))
    assert set(tokens[len(ids) :]) == {clip_tok.pad_token}
    long_tokens, long_mask = clip_tok.padded_tokens_and_mask(list(range(20)), 8)
    assert long_tokens == list(range(8)) and all(long_mask)
    empty_tokens, empty_mask = clip_tok.empty_tokens_and_mask(8)
    assert empty_tokens == [clip_tok.pad_token] * 8 and not any(empty_mask)
    t, m = clip_tok.batch(["a dog", ""], 8)
    assert t.shape == m.shape == (2, 8) and t.dtype == torch.long and m.dtype == torch.bool
    assert m[0].sum() == len(ids) and not m[1].any()


def _write_tiny_gpt2(directory: Path) -> None:
    """A vocabulary of all 256 byte symbols plus a few merges, as GPT-2 lays its files out."""
    chars = _byte_alphabet()
    vocab = [chars[b] for b in range(256)]
    merges = [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o"), ("Ġ", "w"), ("o", "r")]
    vocab += [a + b for a, b in merges] + ["<|endoftext|>"]
    (directory / "encoder.json").write_text(json.dumps({s: i for i, s in enumerate(vocab)}))
    (directory / "vocab.bpe").write_text(
        "#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n"
    )


def test_gpt2_bpe_on_tiny_vocab(tmp_path: Path) -> None:
    _write_tiny_gpt2(tmp_path)
    tok = get_tokenizer("gpt2", tmp_path)
    assert isinstance(tok, GPT2Tokenizer)
    assert tok.n_vocab == 256 + 6 + 1 and tok.pad_token == 262
    ids = tok.encode("hello world")
    enc = tok.encoder
    assert ids == [enc["hello"], enc["Ġw"], enc["or"], enc["l"], enc["d"]]
    for text in ["hello world", "Héllo, wörld! 123  ok\n", "it's 🤖"]:
        assert tok.decode(tok.encode(text)) == text
    tokens, mask = tok.padded_tokens_and_mask(ids, 8)
    assert tokens[5:] == [262] * 3 and mask == [True] * 5 + [False] * 3


def test_gpt2_bpe_reads_gzipped_files(tmp_path: Path) -> None:
    _write_tiny_gpt2(tmp_path)
    for name in GPT2Tokenizer.FILES:
        path = tmp_path / name
        (tmp_path / f"{name}.gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    tok = GPT2Tokenizer(tmp_path)
    assert tok.encode("hello") == [tok.encoder["hello"]]


def test_gpt2_missing_files_error_names_both(tmp_path: Path) -> None:
    (tmp_path / "encoder.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"vocab\.bpe") as info:
        GPT2Tokenizer(tmp_path)
    assert "encoder.json" in str(info.value) and str(tmp_path) in str(info.value)
    with pytest.raises(ValueError, match="path"):
        get_tokenizer("gpt2")
