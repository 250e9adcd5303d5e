"""Multi-step LIF for CUDA tensors in Triton: one program per block of neurons runs the whole time loop.

Forward reads ``X`` once and writes the spikes (and ``H``, in float32, when a backward pass will follow);
backward reads ``H`` and the spikes' gradient once, walking time backwards. Arithmetic follows
PyTorch's CUDA kernels for the reference loop operation by operation: scalars are first cast to the
tensor's dtype (as TensorIterator does with a wrapped number), the division by the scalar ``tau`` is a
multiplication by its float32 reciprocal (as ``div_true_kernel_cuda`` does) and fused multiply-adds are
disabled, so spikes are bit-identical to the reference on the same GPU. Half-precision tensors are read and
written in their storage type and computed in float32, as the reference computes them
(``spikformer.neurons.lif_backends``).
``H`` stays float32 for every input dtype: the backward decides from it which neurons fired, and a half-precision
copy rounded to nearest would put a membrane just below the threshold onto it.
``TRITON_INTERPRET=1`` runs these kernels on CPU tensors
(the tests do).
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch

from . import as_time_major_dense, like_layout

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
H_DTYPE = torch.float32  # the membrane kept for the backward, whatever the input dtype
BLOCK = 1024

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs
    triton = None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def available(dtype: torch.dtype | None = None) -> bool:
    """Triton is importable and a GPU (or the interpreter) can run it; ``dtype`` is one it handles."""
    if triton is None or not (torch.cuda.is_available() or _interpreting()):
        return False
    return dtype is None or dtype in _DTYPES


if triton is not None:

    @triton.jit
    def _lif_forward_kernel(x_ptr, s_ptr, h_ptr, T, M, inv_tau, v_threshold, v_reset, v_rest,
                            KEEP_H: tl.constexpr, BLOCK_SIZE: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        mask = offs < M
        dtype = x_ptr.dtype.element_ty
        v = tl.full([BLOCK_SIZE], v_rest, tl.float32)
        idx = offs  # int64, stepped by M: no int32 overflow of t * M
        for _ in range(T):
            x = tl.load(x_ptr + idx, mask=mask, other=0.0).to(tl.float32)
            # the reference's operations in its order, in float32 (half-precision inputs too)
            u = v - v_reset
            w = x - u
            q = w * inv_tau
            h = v + q
            fired = h >= v_threshold
            tl.store(s_ptr + idx, tl.where(fired, 1.0, 0.0).to(dtype), mask=mask)
            if KEEP_H:
                tl.store(h_ptr + idx, h, mask=mask)  # float32: the membrane that decided the spike
            v = tl.where(fired, v_rest, h)
            idx += M

    @triton.jit
    def _lif_backward_kernel(h_ptr, g_ptr, gx_ptr, T, M, last_step_offset, inv_tau, v_threshold, v_reset, alpha,
                             DETACH_RESET: tl.constexpr, BLOCK_SIZE: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        mask = offs < M
        dtype = gx_ptr.dtype.element_ty
        grad_v = tl.full([BLOCK_SIZE], 0.0, tl.float32)
        idx = offs + last_step_offset  # (T - 1) * M, computed on the host in 64 bits
        for _ in range(T):
            h = tl.load(h_ptr + idx, mask=mask, other=0.0).to(tl.float32)
            g = tl.load(g_ptr + idx, mask=mask, other=0.0).to(tl.float32)
            sgm = 1.0 / (1.0 + tl.exp(-(alpha * (h - v_threshold))))
            sg = alpha * sgm * (1.0 - sgm)
            dv_dh = tl.where(h >= v_threshold, 0.0, 1.0)
            if not DETACH_RESET:
                dv_dh = dv_dh + (v_reset - h) * sg
            grad_h = g * sg + grad_v * dv_dh
            grad_x = grad_h * inv_tau
            tl.store(gx_ptr + idx, grad_x.to(dtype), mask=mask)
            grad_v = grad_h - grad_x
            idx -= M


def _as_dtype(value: float, dtype: torch.dtype) -> float:
    # half precision computes in float32 (see the module docstring), so its scalars are float32 too
    dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    return float(torch.tensor(value, dtype=torch.float64).to(dtype))


def _inv_tau(tau: float, dtype: torch.dtype) -> float:
    # 1 / tau in float32 from tau in the tensor's dtype: what PyTorch's CUDA division by a scalar multiplies by.
    return float(torch.tensor(1.0, dtype=torch.float32) / torch.tensor(_as_dtype(tau, dtype), dtype=torch.float32))


def _on_device_of(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Triton launches on the current CUDA device: make it ``t``'s (one process may train on ``cuda:1``)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _launch_options() -> dict:
    return {} if _interpreting() else {"enable_fp_fusion": False}


def lif_forward(x: torch.Tensor, tau: float, v_threshold: float, v_reset: float,
                keep_h: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Spikes of ``x [T, ...]`` in its dtype and ``H`` in float32 (an empty tensor unless ``keep_h``)."""
    x = as_time_major_dense(x)
    spikes = torch.empty_like(x)
    h = torch.empty_like(x, dtype=H_DTYPE) if keep_h else x.new_empty((0,))
    T = x.shape[0]
    M = x.numel() // T if T else 0
    if M:
        v_reset = _as_dtype(v_reset, x.dtype)
        grid = (triton.cdiv(M, BLOCK),)
        with _on_device_of(x):
            _lif_forward_kernel[grid](x, spikes, h if keep_h else spikes, T, M, _inv_tau(tau, x.dtype),
                                      _as_dtype(v_threshold, x.dtype), v_reset, v_reset, KEEP_H=keep_h,
                                      BLOCK_SIZE=BLOCK, **_launch_options())
    return spikes, h


def lif_backward(h: torch.Tensor, grad_spikes: torch.Tensor, tau: float, v_threshold: float, v_reset: float,
                 alpha: float, detach_reset: bool) -> torch.Tensor:
    """Gradient of the input, in the spikes' dtype, from ``H`` (float32) and the spikes' gradient."""
    h = as_time_major_dense(h)
    grad_spikes = like_layout(grad_spikes, h, grad_spikes.dtype)
    grad_x = torch.empty_like(h, dtype=grad_spikes.dtype)
    T = h.shape[0]
    M = h.numel() // T if T else 0
    if M:
        grid = (triton.cdiv(M, BLOCK),)
        with _on_device_of(h):
            _lif_backward_kernel[grid](h, grad_spikes, grad_x, T, M, (T - 1) * M, _inv_tau(tau, h.dtype),
                                       _as_dtype(v_threshold, h.dtype), _as_dtype(v_reset, h.dtype), float(alpha),
                                       DETACH_RESET=detach_reset, BLOCK_SIZE=BLOCK, **_launch_options())
    return grad_x
