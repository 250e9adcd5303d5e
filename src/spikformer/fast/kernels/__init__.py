"""Compiled LIF kernels: ``cpu`` (C, through ctypes) and ``triton_lif`` (CUDA). See ``spikformer.neurons.lif_backends``.

Both treat a ``[T, ...]`` tensor as ``T`` rows of ``M`` neurons in memory order, so any layout that keeps
time outermost and the rest dense (contiguous, or channels-last images) runs without a copy.
"""

from __future__ import annotations

import torch


def fills_storage(x: torch.Tensor, first_dim: int = 0) -> bool:
    """True if dims ``first_dim..`` of ``x`` fill consecutive storage slots in some order (contiguous,
    channels-last, a transposed view ...), so that they can be read in memory order."""
    expected = 1
    for stride, size in sorted((x.stride(i), x.shape[i]) for i in range(first_dim, x.ndim)):
        if size == 1:
            continue
        if stride != expected:
            return False
        expected *= size
    return True


def is_time_major_dense(x: torch.Tensor) -> bool:
    """True if ``x [T, ...]`` is ``T`` equal dense blocks in memory, each holding one time step."""
    if x.is_contiguous():
        return True
    if x.ndim == 0 or (x.shape[0] > 1 and x.stride(0) * x.shape[0] != x.numel()):
        return False
    return fills_storage(x, 1)


def as_time_major_dense(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself when the kernels can read it in place, else a contiguous copy."""
    return x if is_time_major_dense(x) else x.contiguous()


def like_layout(t: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``t`` (same shape as ``ref``) with ``ref``'s strides and ``dtype`` (``ref``'s by default), copied only
    if needed."""
    t = t.to(ref.dtype if dtype is None else dtype)
    if t.stride() == ref.stride():
        return t
    return torch.empty_like(ref, dtype=t.dtype).copy_(t)
