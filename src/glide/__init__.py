"""GLIDE: trainable, evaluable, reproducible text-guided diffusion."""

__version__ = "0.1.0"
