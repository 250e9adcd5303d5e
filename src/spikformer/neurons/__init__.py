"""Spiking neurons: the interface every neuron offers (``base``), the registry of names, and the neurons.

``lif`` (docs/neurons.md, the default; its kernels in ``lif_backends``, its BatchNorm-fused path in ``batchnorm``) and
``plif`` (parametric LIF, a learnt time constant per layer). ``docs/neurons.md`` shows how to add one.
"""

from .base import NeuronLayer, SpikingNeuron, neuron_layer, neuron_names, register_neuron
from .lif import LIF, UnrolledLIF
from .lif_backends import LIFParams, backend_available, default_backend, lif_backends, lif_multistep, lif_reference
from .plif import ParametricLIF, UnrolledPLIF, plif_reference
from .surrogate import spike

__all__ = [
    "LIF", "LIFParams", "NeuronLayer", "ParametricLIF", "SpikingNeuron", "UnrolledLIF", "backend_available",
    "default_backend", "lif_backends",
    "UnrolledPLIF", "lif_multistep", "lif_reference", "neuron_layer", "neuron_names", "plif_reference",
    "register_neuron", "spike",
]
