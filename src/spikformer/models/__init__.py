"""Spikformer models: the model class, the named variants and their timm entry points."""

from . import v2, zoo  # noqa: F401  (register the V1 and V2 variants in timm)
from .registry import (
    VARIANTS,
    Variant,
    build_model,
    create_model,
    get_variant,
    list_models,
    register_variant,
    resolve_model_kwargs,
)
from .spikformer import Spikformer

__all__ = [
    "VARIANTS", "Spikformer", "Variant", "build_model", "create_model", "get_variant", "list_models",
    "register_variant", "resolve_model_kwargs",
]
