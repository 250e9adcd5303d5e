"""The LIF neuron as a layer (docs/neurons.md): the model's default neuron, with the backends of ``lif_backends``."""

from __future__ import annotations

import torch
from torch import nn

from .base import SpikingNeuron, register_neuron
from .batchnorm import batch_norm_lif
from .lif_backends import _BACKENDS, LIFParams, lif_backends, lif_multistep


@register_neuron("lif")
class LIF(SpikingNeuron):
    """Multi-step LIF layer: ``[T, ...] -> [T, ...]`` spikes (0/1 in the input's dtype).

    ``forward(x, norm=bn)`` charges the neuron from ``bn(x)`` instead: in training, the BatchNorm output is
    then recomputed in the backward pass rather than stored (see ``spikformer.neurons.batchnorm``).
    """

    def __init__(
        self,
        tau: float = 2.0,
        v_threshold: float = 1.0,
        v_reset: float = 0.0,
        detach_reset: bool = True,
        surrogate_alpha: float = 4.0,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if backend != "auto" and backend not in _BACKENDS:  # fail when the model is built, not mid-forward
            raise ValueError(f"unknown LIF backend {backend!r}; available: auto, {', '.join(lif_backends())}")
        self.params = LIFParams(tau, v_threshold, v_reset, detach_reset, surrogate_alpha)
        self.backend = backend

    @property
    def v_threshold(self) -> float:
        return self.params.v_threshold

    def forward(self, x: torch.Tensor, norm: nn.Module | None = None) -> torch.Tensor:
        if norm is not None and not isinstance(norm, nn.Identity):
            return batch_norm_lif(x, norm, self.params, self.backend)
        return lif_multistep(x, self.params, self.backend)

    def multistep(self, x: torch.Tensor) -> torch.Tensor:
        return lif_multistep(x, self.params, self.backend)

    def lif_constants(self) -> LIFParams:
        return self.params

    def inference_module(self) -> nn.Module:
        return UnrolledLIF(self.params)

    def extra_repr(self) -> str:
        p = self.params
        return f"tau={p.tau}, v_threshold={p.v_threshold}, v_reset={p.v_reset}, backend={self.backend}"


class UnrolledLIF(nn.Module):
    """Inference-only LIF in plain tensor operations with ``T`` unrolled; spikes identical to the oracle's."""

    def __init__(self, params: LIFParams) -> None:
        super().__init__()
        self.params = params

    def forward(self, x: torch.Tensor, norm: nn.Module | None = None) -> torch.Tensor:
        if norm is not None:
            x = norm(x)
        p = self.params
        v = torch.full_like(x[0], p.v_reset)
        spikes = []
        for t in range(x.shape[0]):
            h = v + (x[t] - (v - p.v_reset)) / p.tau
            fired = h >= p.v_threshold
            spikes.append(fired.to(x.dtype))
            v = torch.where(fired, p.v_reset, h)
        return torch.stack(spikes)
