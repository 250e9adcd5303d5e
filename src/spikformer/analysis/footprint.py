"""Static figures of a model: its memory footprint and the sparsity of its connections.

Both are defined as NeuroBench defines them, so that the two tools agree on the same model:

- ``footprint_bytes``: the bytes of every parameter and buffer (BatchNorm running statistics included), at the
  model's own dtypes;
- ``connection_sparsity``: the share of zero weights among the weights of every ``Linear`` and
  ``Conv1d/2d/3d`` (biases, BatchNorm and neuron constants not counted).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

CONNECTION_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class StaticFigures:
    """What a model costs before it sees an input."""

    parameters: int
    footprint_bytes: int
    connection_sparsity: float  # zero weights / weights of the connection layers

    def to_dict(self) -> dict:
        return {
            "parameters": self.parameters,
            "footprint_bytes": self.footprint_bytes,
            "connection_sparsity": self.connection_sparsity,
        }


def footprint_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer of ``model``."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def connection_sparsity(model: nn.Module) -> float:
    """Zero weights over all weights of the ``Linear`` and convolution layers (0.0 for a dense model)."""
    zeros = total = 0
    for module in model.modules():
        if isinstance(module, CONNECTION_LAYERS):
            zeros += int((module.weight == 0).sum())
            total += module.weight.numel()
    return zeros / total if total else 0.0


def static_figures(model: nn.Module) -> StaticFigures:
    """Parameter count, footprint and connection sparsity of ``model``."""
    parameters = sum(p.numel() for p in model.parameters())
    return StaticFigures(parameters, footprint_bytes(model), connection_sparsity(model))
