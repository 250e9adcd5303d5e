"""Spikformer models: the model class, the named variants and their timm entry points."""

from . import zoo  # noqa: F401  (registers the variants in timm)
from .registry import VARIANTS, Variant, create_model, get_variant, list_models, register_variant
from .spikformer import Spikformer

__all__ = ["VARIANTS", "Spikformer", "Variant", "create_model", "get_variant", "list_models", "register_variant"]
