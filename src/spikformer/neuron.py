"""The LIF neuron's former home, kept so that ``spikformer.neuron`` imports keep working.

The neurons live in :mod:`spikformer.neurons`: the interface and registry (``base``), LIF (``lif``, its kernels
in ``lif_backends``), parametric LIF (``plif``) and the BatchNorm numerics (``batchnorm``).
"""

from .neurons.lif import LIF, UnrolledLIF
from .neurons.lif_backends import (
    HALF_DTYPES,
    LIFBackend,
    LIFParams,
    backend_available,
    default_backend,
    lif_backends,
    lif_multistep,
    lif_reference,
    register_lif_backend,
    resolve_backend,
)
from .neurons.surrogate import sigmoid_surrogate_grad, spike

__all__ = [
    "HALF_DTYPES", "LIF", "LIFBackend", "LIFParams", "UnrolledLIF", "backend_available", "default_backend",
    "lif_backends",
    "lif_multistep", "lif_reference", "register_lif_backend", "resolve_backend", "sigmoid_surrogate_grad", "spike",
]
