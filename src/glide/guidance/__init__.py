"""Guidance wrappers around the model callable: classifier-free and CLIP guidance."""

from glide.guidance.classifier_free import ClassifierFreeGuidance, classifier_free_batch
from glide.guidance.clip_guidance import CLIPGuidance, normalize_embedding

__all__ = ["CLIPGuidance", "ClassifierFreeGuidance", "classifier_free_batch", "normalize_embedding"]
