"""The surrogate gradient every neuron shares: a Heaviside step forward, the derivative of a sigmoid backward.

docs/neurons.md: ``dS/dH = alpha * sg(alpha x) * (1 - sg(alpha x))`` with ``x = H - V_th``, SpikingJelly's
``surrogate.Sigmoid(alpha=4.0)``.
"""

from __future__ import annotations

import torch


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
