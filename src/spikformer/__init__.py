"""Spiking Transformers: Spikformer V1 and V2 models, training, spike analysis and export.

The public names load on first use (PEP 562), so ``import spikformer.config`` (or any other leaf module)
loads that module alone, not the models, torch kernels and timm registrations behind ``spikformer.create_model``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "load_checkpoint": ".checkpoint", "save_model": ".checkpoint",
    "Spikformer": ".models", "create_model": ".models", "list_models": ".models",
    "from_pretrained": ".models.hub",
    "LIF": ".neurons", "LIFParams": ".neurons", "lif_multistep": ".neurons", "ParametricLIF": ".neurons",
    "SpikingNeuron": ".neurons", "register_neuron": ".neurons",
}
__all__ = ["LIF", "LIFParams", "ParametricLIF", "Spikformer", "SpikingNeuron", "create_model", "from_pretrained",
           "lif_multistep", "list_models", "load_checkpoint", "register_neuron", "save_model"]

if TYPE_CHECKING:
    from .checkpoint import load_checkpoint, save_model
    from .models import Spikformer, create_model, list_models
    from .models.hub import from_pretrained
    from .neurons import LIF, LIFParams, ParametricLIF, SpikingNeuron, lif_multistep, register_neuron


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        try:  # a subpackage, e.g. ``spikformer.models`` after a bare ``import spikformer``
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{name}":
                raise  # the subpackage exists but lacks a dependency: say which
            raise AttributeError(f"module 'spikformer' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
