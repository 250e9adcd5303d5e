"""Spiking Self-Attention's products on the fast path: the CPU kernel, and bfloat16 spikes read as they are.

Both compute what :func:`spikformer.layers.scaled_spike_attention` computes (the oracle), bit for bit on 0/1
operands (every sum is an exact integer); :class:`~spikformer.fast.modules.FastSpikingSelfAttention` calls
:func:`fast_spike_products` in place of the oracle.
"""

from __future__ import annotations

import functools

import torch

from ..layers import exact_spike_product_dtype, scaled_spike_attention, split_heads
from ..layers import spike_attention as plain_spike_attention
from .kernels import cpu
from .memory import plain_eager


def fast_spike_products(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, scale: float, use_kernel: bool = True
) -> torch.Tensor:
    """``(Q K^T) V * scale`` per head of the spike tensors ``[T, B, N, D]``, as ``[T, B, N, D]``: the CPU kernel
    where it applies (:func:`_spike_attention_cpu`, unless ``use_kernel`` is false), bfloat16 CPU spikes
    through :func:`spike_attention`, else the oracle."""
    if use_kernel and _attention_kernel_applies(q, k, v, num_heads):
        return _spike_attention_cpu(q, k, v, num_heads, float(scale))
    if q.dtype == torch.bfloat16 and q.device.type == "cpu":
        T, B, N, D = q.shape
        out = spike_attention(*(split_heads(t, num_heads) for t in (q, k, v)))  # [T, B, h, N, d], integers
        return (out * scale).transpose(2, 3).reshape(T, B, N, D)
    return scaled_spike_attention(q, k, v, num_heads, scale)


def spike_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """:func:`spikformer.layers.spike_attention` (``(Q K^T) V`` of spikes ``[..., N, d]``), with bfloat16 CPU
    spikes read as they are where the oracle would run both products in float32 and the inner sums stay
    exact in bfloat16 (:func:`_bfloat16_spike_attention`)."""
    N, d = q.shape[-2:]
    if q.dtype == torch.bfloat16 and q.device.type == "cpu" and max(N, d) <= 256:
        out_dtype = torch.float32 if torch.is_autocast_enabled("cpu") else q.dtype
        if exact_spike_product_dtype(q, N, d, out_dtype) == torch.float32:
            return _bfloat16_spike_attention(q, k, v)
    return plain_spike_attention(q, k, v)


def _bfloat16_spike_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``(Q K^T) V`` of bfloat16 spikes ``[..., N, d]``. The inner product's sums stay below its inner length
    (at most ``max(N, d)``, exact in bfloat16 up to 256), so it reads the spikes as they are; only the outer
    product, whose sums reach ``N * d``, runs in float32 (one cast, of one operand, instead of three)."""
    N, d = q.shape[-2:]
    out_dtype = torch.float32 if torch.is_autocast_enabled("cpu") else q.dtype
    as_float = functools.partial(torch.Tensor.to, dtype=torch.float32, memory_format=torch.contiguous_format)
    with torch.autocast("cpu", enabled=False):
        if N > d:
            out = as_float(q) @ (k.transpose(-2, -1) @ v).float()
        else:
            out = (q @ k.transpose(-2, -1)).float() @ as_float(v)
    return out.to(out_dtype)


# --- the CPU kernel as custom ops (the LIF's convention: torch.compile and fake tensors see one opaque op) ---


@torch.library.custom_op("spikformer::spike_attention_cpu", mutates_args=())
def _spike_attention_cpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int,
                         scale: float) -> torch.Tensor:
    """``(Q K^T V) * scale`` per head, ``[T, B, N, D]`` in and out (float32), on the CPU kernel
    (``kernels.cpu.spike_attention_forward``): the heads are read in place (no split and merge copies, no
    casts), the zeros of the spike operands are skipped, and the float32 result is the unfused path's bit for
    bit (integer sums, then the same float32 product with the scale). The backward pass recomputes ``K^T V``;
    its gradients are the same products in float32, summed in another order and rounded once to the spikes'
    dtype (the unfused bfloat16 path also rounds ``d(K^T V)`` to bfloat16 on the way)."""
    return cpu.spike_attention_forward(q, k, v, num_heads, scale)


@_spike_attention_cpu.register_fake
def _(q, k, v, num_heads, scale):
    return torch.empty(q.shape, dtype=torch.float32, device=q.device)


# An explicit schema: PyTorch's schema inference reads ``list[bool]`` only from 2.7 on (the floor is 2.6).
@torch.library.custom_op(
    "spikformer::spike_attention_cpu_backward", mutates_args=(),
    schema="(Tensor q, Tensor k, Tensor v, Tensor grad, int num_heads, float scale, bool[] needs) -> Tensor[]")
def _spike_attention_cpu_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grad: torch.Tensor,
                                  num_heads: int, scale: float, needs: list[bool]) -> list[torch.Tensor]:
    grads = cpu.spike_attention_backward(q, k, v, grad, num_heads, scale, needs=tuple(needs))
    return [g if g is not None else q.new_empty((0,)) for g in grads]  # an op returns tensors only


@_spike_attention_cpu_backward.register_fake
def _(q, k, v, grad, num_heads, scale, needs):
    return [torch.empty_like(q) if need else q.new_empty((0,)) for need in needs]


def _spike_attention_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs[:3])
    ctx.config = inputs[3:]


def _spike_attention_grad(ctx, grad):
    needs = list(ctx.needs_input_grad[:3])
    grads = _spike_attention_cpu_backward(*ctx.saved_tensors, grad, *ctx.config, needs)
    return *(g if need else None for g, need in zip(grads, needs)), None, None


_spike_attention_cpu.register_autograd(_spike_attention_grad, setup_context=_spike_attention_setup)


def _attention_kernel_applies(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> bool:
    """Whether :func:`_spike_attention_cpu` computes what the unfused path would: on the CPU, where the unfused
    path also returns float32 (float32 spikes, or bfloat16 ones under autocast) and evaluates ``Q (K^T V)``."""
    if q.device.type != "cpu" or not plain_eager():
        return False
    N, d = q.shape[-2], q.shape[-1] // num_heads
    if N <= d or not (q.dtype == torch.float32 or (q.dtype == torch.bfloat16 and torch.is_autocast_enabled("cpu"))):
        return False
    return cpu.spike_attention_applies(q, k, v)
