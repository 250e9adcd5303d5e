"""Spikformer models: the model class, the named variants, their resolution and their timm entry points."""

from . import zoo  # noqa: F401, I001  (registers the V1 variants in timm before v2 adds its own)
from . import v2  # noqa: F401
from .registry import VARIANTS, Variant, get_variant, list_models, register_variant
from .resolve import is_resolved, resolve_config, resolve_model_config, resolve_model_kwargs
from .spikformer import Spikformer
from .zoo import build_model, create_model, register_timm_entry_point

__all__ = [
    "VARIANTS", "Spikformer", "Variant", "build_model", "create_model", "get_variant", "is_resolved", "list_models",
    "register_timm_entry_point", "register_variant", "resolve_config", "resolve_model_config",
    "resolve_model_kwargs",
]
