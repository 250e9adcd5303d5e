"""Parametric LIF (PLIF, Fang et al. 2021): a LIF neuron whose time constant is learnt, one per layer.

    H[t] = V[t-1] + (X[t] - (V[t-1] - V_reset)) * k,   k = 1 / tau = sigmoid(w)
    S[t] = Heaviside(H[t] - V_th)
    V[t] = H[t] * (1 - S[t]) + V_reset * S[t]

``w`` is one learnable scalar per layer, initialised to ``-log(init_tau - 1)`` so that ``tau = init_tau``:
SpikingJelly's ``ParametricLIFNode`` with ``decay_input=True`` and a hard reset, which the tests compare against
(spikes, membrane, and the gradients of the input and of ``w``). At ``tau = 2`` it computes LIF's spikes
exactly (multiplying by 0.5 and dividing by 2 round alike). It runs as the per-step autograd loop: a fused
pure-PyTorch loop with an analytic backward (as LIF's ``"fused"`` backend) measured slower here, and a compiled
kernel is future work.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .base import SpikingNeuron, register_neuron
from .lif_backends import LIFParams
from .surrogate import spike


def plif_reference(x: torch.Tensor, w: torch.Tensor, v_threshold: float = 1.0, v_reset: float = 0.0,
                   detach_reset: bool = True, surrogate_alpha: float = 4.0, return_membrane: bool = False
                   ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The oracle: a per-step autograd loop over ``x [T, ...]``; optionally also ``V`` after reset."""
    k = torch.sigmoid(w).to(x.dtype)
    v = torch.full_like(x[0], v_reset)
    spikes, membranes = [], []
    for t in range(x.shape[0]):
        h = v + (x[t] - (v - v_reset)) * k
        s = spike(h - v_threshold, surrogate_alpha)
        s_reset = s.detach() if detach_reset else s
        v = h * (1.0 - s_reset) + v_reset * s_reset
        spikes.append(s)
        membranes.append(v)
    out = torch.stack(spikes)
    return (out, torch.stack(membranes)) if return_membrane else out


@register_neuron("plif")
class ParametricLIF(SpikingNeuron):
    """PLIF layer: ``[T, ...] -> [T, ...]`` spikes, with one learnable ``w`` (``1/tau = sigmoid(w)``).

    Charged from ``norm(x)`` when given a BatchNorm (autograd differentiates the normalisation).
    """

    def __init__(
        self,
        init_tau: float = 2.0,
        v_threshold: float = 1.0,
        v_reset: float = 0.0,
        detach_reset: bool = True,
        surrogate_alpha: float = 4.0,
    ) -> None:
        super().__init__()
        if not (isinstance(init_tau, int | float) and init_tau > 1.0):
            # 1/tau = sigmoid(w) < 1 for every finite w: tau <= 1 cannot be represented
            raise ValueError(f"PLIF init_tau must be > 1 (got {init_tau!r}); Fang et al. start from 2.0")
        if not surrogate_alpha > 0:
            raise ValueError(f"surrogate_alpha must be > 0 (got {surrogate_alpha})")
        self.w = nn.Parameter(torch.tensor(-math.log(init_tau - 1.0)))
        self.v_threshold = float(v_threshold)
        self.v_reset = float(v_reset)
        self.detach_reset = bool(detach_reset)
        self.surrogate_alpha = float(surrogate_alpha)

    @property
    def tau(self) -> float:
        """The layer's current time constant, ``1 / sigmoid(w)``."""
        return float(1.0 / torch.sigmoid(self.w.detach().double()))

    def multistep(self, x: torch.Tensor) -> torch.Tensor:
        return plif_reference(x, self.w, self.v_threshold, self.v_reset, self.detach_reset, self.surrogate_alpha)

    def lif_constants(self) -> LIFParams:
        return LIFParams(self.tau, self.v_threshold, self.v_reset, self.detach_reset, self.surrogate_alpha)

    def inference_module(self) -> nn.Module:
        return UnrolledPLIF(torch.sigmoid(self.w.detach()), self.v_threshold, self.v_reset)

    def extra_repr(self) -> str:
        return f"tau={self.tau:.4g} (learnt), v_threshold={self.v_threshold}, v_reset={self.v_reset}"


class UnrolledPLIF(nn.Module):
    """Inference-only PLIF with its ``k = 1/tau`` fixed, in plain tensor operations over ``T`` unrolled steps."""

    def __init__(self, k: torch.Tensor, v_threshold: float, v_reset: float) -> None:
        super().__init__()
        self.register_buffer("k", k.clone())
        self.v_threshold, self.v_reset = v_threshold, v_reset

    def forward(self, x: torch.Tensor, norm: nn.Module | None = None) -> torch.Tensor:
        if norm is not None:
            x = norm(x)
        k = self.k.to(x.dtype)
        v = torch.full_like(x[0], self.v_reset)
        spikes = []
        for t in range(x.shape[0]):
            h = v + (x[t] - (v - self.v_reset)) * k
            fired = h >= self.v_threshold
            spikes.append(fired.to(x.dtype))
            v = torch.where(fired, self.v_reset, h)
        return torch.stack(spikes)
