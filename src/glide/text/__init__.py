"""Caption tokenizers (CLIP BPE by default, GPT-2 BPE for the released checkpoints)."""

from glide.text.tokenizer import (
    EMPTY_CAPTION,
    CLIPTokenizer,
    GPT2Tokenizer,
    Tokenizer,
    get_tokenizer,
)

__all__ = ["EMPTY_CAPTION", "CLIPTokenizer", "GPT2Tokenizer", "Tokenizer", "get_tokenizer"]
