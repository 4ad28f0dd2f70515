"""Guidance wrappers around the model callable: classifier-free and CLIP guidance, and the
guidance-distilled student (:mod:`glide.guidance.distilled`, imported from there: it builds
networks)."""

from glide.guidance.classifier_free import ClassifierFreeGuidance, classifier_free_batch
from glide.guidance.clip_guidance import CLIPGuidance, normalize_embedding

__all__ = ["CLIPGuidance", "ClassifierFreeGuidance", "classifier_free_batch", "normalize_embedding"]
