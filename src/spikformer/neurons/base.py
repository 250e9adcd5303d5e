"""The neuron interface: what a spiking layer offers the rest of the package, and the registry of neuron names.

The neuron is a layer the model receives, the way timm models receive ``act_layer``: a model built with
``neuron="lif"`` (or any registered name, or a class) hands every spiking unit the same factory, and each unit
makes its own layer with it (the attention unit overriding ``v_threshold``). Layers, analysis (firing rates,
SOPs), BN folding and export use only what :class:`SpikingNeuron` declares. ``docs/neurons.md`` shows how to
add a neuron in one file.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..registry import Registry, did_you_mean
from .batchnorm import normalize
from .lif_backends import LIFParams


class SpikingNeuron(nn.Module):
    """A multi-step spiking neuron layer: currents ``[T, ...]`` -> spikes ``[T, ...]`` (0/1 in the input's dtype).

    Every forward starts from rest, so no state survives between samples. A subclass implements
    :meth:`multistep` and exposes ``v_threshold``; it may override :meth:`forward` to fuse the normalisation
    into its kernel (as LIF does), and :meth:`lif_constants` / :meth:`inference_module` to be exportable.
    Its factory must accept ``v_threshold`` as a keyword (the attention unit sets its own).
    """

    v_threshold: float

    def forward(self, x: torch.Tensor, norm: nn.Module | None = None) -> torch.Tensor:
        """Spikes of ``norm(x)``: ``norm`` is the BatchNorm over the channels of ``x`` (or ``None``)."""
        return self.multistep(normalize(x, norm))

    def multistep(self, x: torch.Tensor) -> torch.Tensor:
        """Spikes of ``x [T, ...]``, starting from rest."""
        raise NotImplementedError

    def lif_constants(self) -> LIFParams | None:
        """The plain LIF this neuron equals at inference (NIR writes it as ``nir.LIF``), or ``None``."""
        return None

    def inference_module(self) -> nn.Module:
        """An inference-only module of plain tensor operations over ``T`` unrolled steps, with this neuron's
        spikes (what ONNX export writes)."""
        raise NotImplementedError(f"the {type(self).__name__} neuron has no inference module for export")


NeuronLayer = Callable[..., SpikingNeuron]
_NEURONS: Registry[NeuronLayer] = Registry("neuron", importable=True)


def register_neuron(name: str) -> Callable[[NeuronLayer], NeuronLayer]:
    """Register a neuron class (or factory) under ``name`` (``model.neuron``); its keyword arguments are the
    ``model.neuron_options``."""
    return _NEURONS.register(name)


def neuron_names() -> list[str]:
    return _NEURONS.names()


def neuron_layer(neuron: str | NeuronLayer = "lif", options: dict[str, Any] | None = None) -> NeuronLayer:
    """The factory a spiking unit calls to make its neuron: ``neuron`` by registered name (or a class or
    factory itself) with ``options`` bound. An unknown name or option raises ``ValueError`` naming the valid
    ones; the option values are checked when the layer is made."""
    if isinstance(neuron, str):
        factory, label = _NEURONS.get(neuron), neuron
        if isinstance(factory, type) and not issubclass(factory, SpikingNeuron):
            raise ValueError(f"neuron {neuron!r} is the class {factory.__name__}, which is not a "
                             f"spikformer.neurons.SpikingNeuron; subclass it (docs/neurons.md)")
    elif callable(neuron):
        factory, label = neuron, getattr(neuron, "__name__", type(neuron).__name__)
    else:
        raise ValueError(f"neuron must be a registered name ({', '.join(neuron_names())}) or a neuron class, "
                         f"got {neuron!r}")
    if options is not None and not isinstance(options, dict):
        raise ValueError(f"neuron_options must be a mapping of option names to values, got {options!r}")
    if not options:
        return factory
    signature = inspect.signature(factory)
    try:
        signature.bind_partial(**options)
    except TypeError:
        valid = [p.name for p in signature.parameters.values()
                 if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        hints = ", ".join(f"{key!r}{did_you_mean(key, valid)}" for key in options if key not in valid)
        raise ValueError(f"neuron {label!r} has no option {hints}; its neuron_options are: "
                         f"{', '.join(valid) or 'none'}") from None
    return functools.partial(factory, **options)
