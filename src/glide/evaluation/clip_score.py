"""CLIP score ``100 * cos(image embedding, caption embedding)`` and CLIP image features.

Two scorers share one interface: :class:`NoisedCLIPScorer` uses our noised CLIP at ``t = 0``
(always available: it is trained by the pipeline); :class:`OpenCLIPScorer` uses an open_clip
model read from a local weights file (never downloaded).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from glide.guidance import normalize_embedding
from glide.models import NoisedCLIP
from glide.sampling.cascade import clip_tokens
from glide.text import Tokenizer

__all__ = ["CLIPScorer", "NoisedCLIPScorer", "OpenCLIPScorer", "clip_score"]


def clip_score(image_emb: Tensor, text_emb: Tensor) -> Tensor:
    """Per-pair ``100 * cos`` of image and text embeddings [N, D] -> [N]."""
    return 100.0 * (normalize_embedding(image_emb) * normalize_embedding(text_emb)).sum(-1)


class CLIPScorer(ABC):
    """Image features and caption similarity for uint8 images [N, 3, H, W]."""

    name: str = "clip"

    @abstractmethod
    def image_features(self, images: Tensor) -> Tensor:
        """Unnormalised image embeddings [N, D]."""

    @abstractmethod
    def text_features(self, captions: Sequence[str]) -> Tensor:
        """Unnormalised caption embeddings [N, D]."""

    def scores(self, images: Tensor, captions: Sequence[str], batch_size: int = 64) -> Tensor:
        """Per-image CLIP score [N] against its caption."""
        out = []
        for i in range(0, len(captions), batch_size):
            img = self.image_features(images[i : i + batch_size])
            txt = self.text_features(captions[i : i + batch_size])
            out.append(clip_score(img, txt))
        return torch.cat(out)


def _to_unit_range(images: Tensor, size: int) -> Tensor:
    x = images.float() / 127.5 - 1
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, (size, size), mode="bicubic", align_corners=False, antialias=True)
    return x.clamp(-1, 1)


class NoisedCLIPScorer(CLIPScorer):
    """Our noised CLIP at ``t = 0``; captions tokenised as for CLIP guidance."""

    name = "noised_clip"

    def __init__(self, clip: NoisedCLIP, tokenizer: Tokenizer, *, text_ctx: int) -> None:
        self.clip = clip.eval()
        self.tokenizer = tokenizer
        self.text_ctx = text_ctx
        self.device = next(clip.parameters()).device

    @torch.no_grad()
    def image_features(self, images: Tensor) -> Tensor:
        size = self.clip.image_encoder.config.image_size
        x = _to_unit_range(images, size).to(self.device)
        t = torch.zeros(x.shape[0], dtype=torch.long, device=self.device)
        return self.clip.image_encoder(x, t).float().cpu()

    @torch.no_grad()
    def text_features(self, captions: Sequence[str]) -> Tensor:
        tokens, lens = clip_tokens(self.tokenizer, captions, self.text_ctx)
        return self.clip.text_encoder(tokens.to(self.device), lens.to(self.device)).float().cpu()


class OpenCLIPScorer(CLIPScorer):
    """An open_clip model (e.g. ``ViT-B-32``) loaded from a local ``weights`` file."""

    name = "open_clip"

    def __init__(self, model_name: str, weights: str | Path, *, device: str = "cpu") -> None:
        weights = Path(weights)
        if not weights.is_file():
            raise FileNotFoundError(
                f"open_clip weights {weights} not found (evaluate.clip_score.open_clip_weights); "
                "nothing is downloaded: put the model's .pt / .safetensors file there"
            )
        import open_clip

        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=str(weights), device=device
        )
        self.model = model.eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.device = device
        size = model.visual.image_size
        self.size = int(size[0] if isinstance(size, tuple | list) else size)
        mean = getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
        std = getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        del preprocess

    @torch.no_grad()
    def image_features(self, images: Tensor) -> Tensor:
        x = (_to_unit_range(images, self.size) + 1) / 2
        x = ((x - self.mean) / self.std).to(self.device)
        return self.model.encode_image(x).float().cpu()

    @torch.no_grad()
    def text_features(self, captions: Sequence[str]) -> Tensor:
        tokens = self.tokenizer(list(captions)).to(self.device)
        return self.model.encode_text(tokens).float().cpu()
