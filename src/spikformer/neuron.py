"""Multi-step Leaky Integrate-and-Fire neuron with a sigmoid surrogate gradient.

Time is the first dimension of every input: ``x`` is ``[T, ...]`` with any trailing shape. The neuron
follows the template charge -> fire -> reset (SPEC §1, SpikingJelly's ``MultiStepLIFNode(tau=2.0,
detach_reset=True)``):

    H[t] = V[t-1] + (X[t] - (V[t-1] - V_reset)) / tau
    S[t] = Heaviside(H[t] - V_th)
    V[t] = H[t] * (1 - S[t]) + V_reset * S[t]

Every forward call starts from rest (``V[-1] = V_reset``), so no manual state reset is ever needed.

Several backends compute the same function; ``"torch"`` is the plain autograd loop and the oracle every
other backend is tested against. ``"fused"`` runs the whole time loop without autograd and computes the
backward pass analytically from the stored membrane potentials, which is much cheaper in memory and time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class LIFParams:
    """The constants of one LIF layer."""

    tau: float = 2.0
    v_threshold: float = 1.0
    v_reset: float = 0.0
    detach_reset: bool = True
    surrogate_alpha: float = 4.0

    def __post_init__(self) -> None:
        if not self.tau > 1.0:
            # tau <= 1 makes the leak factor (1 - 1/tau) non-positive: the neuron no longer integrates.
            raise ValueError(f"LIF tau must be > 1 (got {self.tau}); the papers use tau=2.0")
        if not self.surrogate_alpha > 0:
            raise ValueError(f"surrogate_alpha must be > 0 (got {self.surrogate_alpha})")


# --- surrogate gradient ---------------------------------------------------------------------------


def sigmoid_surrogate_grad(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """d Heaviside(x) / dx replaced by the derivative of sigmoid(alpha * x)."""
    sg = torch.sigmoid(alpha * x)
    return alpha * sg * (1.0 - sg)


class _HeavisideSigmoid(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad_out * sigmoid_surrogate_grad(x, ctx.alpha), None


def spike(x: torch.Tensor, alpha: float = 4.0) -> torch.Tensor:
    """Heaviside step (a spike where ``x >= 0``) with the sigmoid surrogate gradient."""
    return _HeavisideSigmoid.apply(x, alpha)


# --- backends -------------------------------------------------------------------------------------

LIFBackend = Callable[[torch.Tensor, LIFParams], torch.Tensor]
_BACKENDS: dict[str, LIFBackend] = {}


def register_lif_backend(name: str) -> Callable[[LIFBackend], LIFBackend]:
    """Register a multi-step LIF implementation ``fn(x [T, ...], params) -> spikes [T, ...]``."""

    def decorator(fn: LIFBackend) -> LIFBackend:
        _BACKENDS[name] = fn
        return fn

    return decorator


def lif_backends() -> list[str]:
    return sorted(_BACKENDS)


def lif_reference(
    x: torch.Tensor, params: LIFParams = LIFParams(), return_membrane: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The oracle: a per-step autograd loop. Optionally also returns ``V`` after reset, ``[T, ...]``."""
    v = torch.full_like(x[0], params.v_reset)
    spikes, membranes = [], []
    for t in range(x.shape[0]):
        h = v + (x[t] - (v - params.v_reset)) / params.tau
        s = spike(h - params.v_threshold, params.surrogate_alpha)
        s_reset = s.detach() if params.detach_reset else s
        v = h * (1.0 - s_reset) + params.v_reset * s_reset
        spikes.append(s)
        membranes.append(v)
    out = torch.stack(spikes)
    return (out, torch.stack(membranes)) if return_membrane else out


register_lif_backend("torch")(lambda x, params: lif_reference(x, params))


class _FusedLIF(torch.autograd.Function):
    """Forward loop without autograd; backward from the saved pre-reset potentials ``H``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, params: LIFParams) -> torch.Tensor:  # type: ignore[override]
        # Same arithmetic order as the reference so that spikes agree bit for bit.
        h_all = torch.empty_like(x)
        v = torch.full_like(x[0], params.v_reset)
        for t in range(x.shape[0]):
            h = v + (x[t] - (v - params.v_reset)) / params.tau
            h_all[t] = h
            fired = h >= params.v_threshold
            v = torch.where(fired, torch.full_like(h, params.v_reset), h)
        spikes = (h_all >= params.v_threshold).to(x.dtype)
        ctx.save_for_backward(h_all)
        ctx.params = params
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes: torch.Tensor):  # type: ignore[override]
        (h_all,) = ctx.saved_tensors
        p: LIFParams = ctx.params
        decay = 1.0 - 1.0 / p.tau
        grad_x = torch.empty_like(h_all)
        grad_v = torch.zeros_like(h_all[0])
        for t in range(h_all.shape[0] - 1, -1, -1):
            h = h_all[t]
            sg = sigmoid_surrogate_grad(h - p.v_threshold, p.surrogate_alpha)
            not_fired = (h < p.v_threshold).to(h.dtype)
            dv_dh = not_fired if p.detach_reset else not_fired + (p.v_reset - h) * sg
            grad_h = grad_spikes[t] * sg + grad_v * dv_dh
            grad_x[t] = grad_h / p.tau
            grad_v = grad_h * decay
        return grad_x, None


@register_lif_backend("fused")
def lif_fused(x: torch.Tensor, params: LIFParams) -> torch.Tensor:
    return _FusedLIF.apply(x, params)


def default_backend() -> str:
    return "fused"


def lif_multistep(x: torch.Tensor, params: LIFParams = LIFParams(), backend: str = "auto") -> torch.Tensor:
    """Run a multi-step LIF over ``x [T, ...]`` and return spikes of the same shape and dtype."""
    name = default_backend() if backend == "auto" else backend
    try:
        fn = _BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown LIF backend {name!r}; available: {', '.join(lif_backends())}") from None
    return fn(x, params)


class LIF(nn.Module):
    """Multi-step LIF layer: ``[T, ...] -> [T, ...]`` spikes (0/1 in the input's dtype)."""

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lif_multistep(x, self.params, self.backend)

    def extra_repr(self) -> str:
        p = self.params
        return f"tau={p.tau}, v_threshold={p.v_threshold}, v_reset={p.v_reset}, backend={self.backend}"
