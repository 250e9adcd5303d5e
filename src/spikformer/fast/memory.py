"""Training memory: spike tensors saved for backward kept at 1 bit per spike, and per-block checkpointing.

Intermediate activations are nearly all of a spiking network's training memory, and most of those saved for
backward are spikes: 0/1 values stored in 32 or 16 bits (the inputs of the linear layers after a LIF, the
spike maps the stem's convolutions read, Q/K/V for the attention products). :func:`spike_packing` stores
every saved floating-point tensor that holds only 0 and 1 as a bit array and expands it, bit for bit and in
its original strides, when the backward pass asks for it: gradients do not change at all. Whether a tensor
is binary is checked on the way (the C kernel stops at the first other value, which for a pre-activation is
the first element), so nothing has to be marked as a spike.

:func:`checkpoint_block` is the model's gradient checkpointing with each block's input kept as int8.
:class:`SpikeMaxPool2d` is ``nn.MaxPool2d`` without the int64 indices, on the C kernel where it applies.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
from torch import nn

from ..models.spikformer import recompute_in_backward
from .kernels import cpu, fills_storage

# Below this many elements a tensor is kept as it is: the bookkeeping would cost more than the bytes saved.
MIN_PACKED_NUMEL = 4096
_PACKABLE = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


class PackedSpikes(NamedTuple):
    """A 0/1 tensor as ``ceil(numel / 8)`` bytes of bits in memory order, and how to rebuild it."""

    bits: torch.Tensor
    shape: torch.Size
    stride: tuple[int, ...]
    dtype: torch.dtype


def _is_dense(t: torch.Tensor) -> bool:
    """Whether ``t`` can be packed in memory order (its elements fill ``numel`` consecutive storage slots)."""
    return t.is_contiguous() or fills_storage(t)


def _memory_order(t: torch.Tensor) -> torch.Tensor:
    return t.as_strided((t.numel(),), (1,), t.storage_offset())


def _binary(t: torch.Tensor) -> bool:
    return bool(((t == 1) | ((t == 0) & ~torch.signbit(t))).all())


def _pack_bits_torch(flat: torch.Tensor) -> torch.Tensor | None:
    # Devices without the C kernel: one comparison pass (a GPU does it at memory speed) and one read of its
    # answer, the one host synchronisation that deciding to pack needs; then 8 bits a byte.
    if not _binary(flat):
        return None
    ones = flat == 1
    padded = torch.nn.functional.pad(ones, (0, -flat.numel() % 8)).view(-1, 8).to(torch.uint8)
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=flat.device)
    return (padded * weights).sum(1, dtype=torch.uint8)


def _unpack_bits_torch(bits: torch.Tensor, flat: torch.Tensor) -> None:
    shifts = torch.arange(8, dtype=torch.uint8, device=bits.device)
    values = (bits.unsqueeze(1) >> shifts) & 1
    flat.copy_(values.view(-1)[: flat.numel()])


def pack(t: torch.Tensor) -> torch.Tensor | PackedSpikes:
    """``t`` as :class:`PackedSpikes` if it holds only 0 and 1 (not -0.0), else ``t`` itself."""
    if (t.dtype not in _PACKABLE or t.numel() < MIN_PACKED_NUMEL or (t.is_leaf and t.requires_grad)
            or not _is_dense(t)):
        return t
    flat = _memory_order(t.detach())
    if flat.device.type == "cpu":
        if cpu.available(t.dtype):
            bits = cpu.pack_spikes(flat)
        else:  # a look at the first elements turns pre-activations away without a pass over the rest
            bits = _pack_bits_torch(flat) if _binary(flat[:1024]) else None
    else:
        bits = _pack_bits_torch(flat)
    return t if bits is None else PackedSpikes(bits, t.shape, t.stride(), t.dtype)


def unpack(saved: torch.Tensor | PackedSpikes) -> torch.Tensor:
    """The tensor :func:`pack` was given, with the same values, shape and strides."""
    if isinstance(saved, torch.Tensor):
        return saved
    out = torch.empty_strided(saved.shape, saved.stride, dtype=saved.dtype, device=saved.bits.device)
    flat = _memory_order(out)
    if flat.device.type == "cpu":
        if cpu.available(saved.dtype):
            cpu.unpack_spikes(saved.bits, flat)
            return out
    _unpack_bits_torch(saved.bits, flat)
    return out


def spike_packing(enabled: bool = True) -> contextlib.AbstractContextManager:
    """While active, tensors saved for backward that hold only 0/1 are stored at 1 bit per element.

    Only the forward pass needs to run inside; the backward pass may run anywhere later. Under
    ``torch.compile`` (which plans its own saved tensors) or when disabled this is a no-op.
    """
    if not enabled or torch.compiler.is_compiling():
        return contextlib.nullcontext()
    return torch.autograd.graph.saved_tensors_hooks(pack, unpack)


class SmallIntegers(NamedTuple):
    """A float tensor whose values are all integers in [-127, 127], as int8 in memory order."""

    values: torch.Tensor
    shape: torch.Size
    stride: tuple[int, ...]
    dtype: torch.dtype


def _int8_valued(t: torch.Tensor) -> bool:
    return bool(((t == t.round()) & (t.abs() <= 127) & ~((t == 0) & torch.signbit(t))).all())


def pack_small_integers(t: torch.Tensor) -> torch.Tensor | PackedSpikes | SmallIntegers:
    """:func:`pack`, and otherwise ``t`` as :class:`SmallIntegers` if every value is an integer in [-127, 127]
    (not -0.0; a look at the first elements turns other tensors away cheaply)."""
    packed = pack(t)
    if packed is not t or not _is_dense(t) or t.numel() < MIN_PACKED_NUMEL or (t.is_leaf and t.requires_grad):
        return packed
    flat = _memory_order(t.detach())
    if not _int8_valued(flat[:1024]) or not _int8_valued(flat):
        return t
    return SmallIntegers(flat.to(torch.int8), t.shape, t.stride(), t.dtype)


def unpack_small_integers(saved: torch.Tensor | PackedSpikes | SmallIntegers) -> torch.Tensor:
    """The tensor :func:`pack_small_integers` was given, with the same values, shape and strides."""
    if not isinstance(saved, SmallIntegers):
        return unpack(saved)
    out = torch.empty_strided(saved.shape, saved.stride, dtype=saved.dtype, device=saved.values.device)
    _memory_order(out).copy_(saved.values)
    return out


def checkpoint_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """:func:`~spikformer.models.spikformer.recompute_in_backward`, keeping ``x`` as int8
    when it holds small integers only (the residual stream between V1's blocks is a count of spikes): one
    check per block, and the block's input at a quarter (float32) of its bytes."""
    # Only checkpoint's own save of the input sees these hooks: it installs its own for the block's tensors.
    with torch.autograd.graph.saved_tensors_hooks(pack_small_integers, unpack_small_integers):
        return recompute_in_backward(block, x)


class _MaxPoolRecomputedIndices(torch.autograd.Function):
    """``max_pool2d`` that saves only its input and finds the argmax again in the backward pass.

    PyTorch's own max-pool saves its input and an int64 index per output element; after a LIF the input is a
    spike map that :func:`spike_packing` stores at 1 bit per element, so the indices were 64 times the bytes
    of the map they point into (72 MiB of ``spikformer_cifar_4_384``'s stem at batch 32, T=4). The backward
    pass reruns the same kernel on the same input, which picks the same (first) maximum of every window, and
    hands its indices to PyTorch's own backward kernel: the gradient is the built-in one bit for bit.
    """

    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding):  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.config = (kernel_size, stride, padding)
        return torch.nn.functional.max_pool2d(x, kernel_size, stride, padding)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        kernel_size, stride, padding = ctx.config
        _, indices = torch.ops.aten.max_pool2d_with_indices(x, kernel_size, stride, padding)
        grad = torch.ops.aten.max_pool2d_with_indices_backward(
            grad_out, x, kernel_size, stride, padding, [1, 1], False, indices)
        return grad, None, None, None


def plain_eager() -> bool:
    """Whether operators run as plain eager PyTorch: not under ``torch.compile``, not traced, and under no
    Python dispatch mode (``FlopCounterMode``, fake tensors, ...). Only then may a C kernel called through
    ``ctypes`` stand in for PyTorch operators: the others would not see it (or have no data to give it)."""
    return not (torch.compiler.is_compiling() or torch.jit.is_tracing() or torch._C._len_torch_dispatch_stack())


# --- the CPU max-pool kernel as custom ops (the LIF's convention) -----------------------------------------


# Explicit schemas: PyTorch's schema inference reads ``list[int]`` only from 2.7 on (the floor is 2.6).
@torch.library.custom_op(
    "spikformer::max_pool_cpu", mutates_args=(),
    schema="(Tensor x, int[] kernel_size, int[] stride, int[] padding, bool with_places) -> (Tensor, Tensor)")
def _max_pool_cpu(x: torch.Tensor, kernel_size: list[int], stride: list[int], padding: list[int],
                  with_places: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``max_pool2d`` of a channels-last CPU map on the C kernel (``kernels.cpu.max_pool_forward``), and with
    ``with_places`` one byte per output element for backward (the maximum's place in its window) instead of
    PyTorch's input and int64 index; the backward kernel adds the gradients in PyTorch's order and rounding,
    so outputs and gradients are the built-in ones bit for bit, in about a third of its time."""
    out, places = cpu.max_pool_forward(x, kernel_size, stride, padding, with_places=with_places)
    return out, places if places is not None else x.new_empty((0,), dtype=torch.uint8)


@_max_pool_cpu.register_fake
def _(x, kernel_size, stride, padding, with_places):
    N, C, H, W = x.shape
    OH = (H + 2 * padding[0] - kernel_size[0]) // stride[0] + 1
    OW = (W + 2 * padding[1] - kernel_size[1]) // stride[1] + 1
    out = torch.empty((N, C, OH, OW), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    places = x.new_empty((N, OH, OW, C) if with_places else (0,), dtype=torch.uint8)
    return out, places


@torch.library.custom_op(
    "spikformer::max_pool_cpu_backward", mutates_args=(),
    schema="(Tensor places, Tensor grad_out, int[] shape, int[] kernel_size, int[] stride, int[] padding) -> Tensor")
def _max_pool_cpu_backward(places: torch.Tensor, grad_out: torch.Tensor, shape: list[int], kernel_size: list[int],
                           stride: list[int], padding: list[int]) -> torch.Tensor:
    return cpu.max_pool_backward(places, grad_out, torch.Size(shape), kernel_size, stride, padding)


@_max_pool_cpu_backward.register_fake
def _(places, grad_out, shape, kernel_size, stride, padding):
    return torch.empty(shape, dtype=grad_out.dtype, device=grad_out.device, memory_format=torch.channels_last)


def _max_pool_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(output[1])
    ctx.config = (list(inputs[0].shape), *inputs[1:4])


def _max_pool_grad(ctx, grad_out, grad_places):
    (places,) = ctx.saved_tensors
    return _max_pool_cpu_backward(places, grad_out, *ctx.config), None, None, None, None


_max_pool_cpu.register_autograd(_max_pool_grad, setup_context=_max_pool_setup)


def _kernel_pools(x: torch.Tensor, kernel: list[int], stride: list[int], padding: list[int]) -> bool:
    """Whether the C kernel pools ``x``: a map it takes, with options PyTorch accepts for it (anything else
    goes to PyTorch, whose own error then says what is wrong)."""
    if x.device.type != "cpu" or x.ndim != 4:
        return False
    if any(2 * p > k or s < 1 or size + 2 * p < k for k, s, p, size in zip(kernel, stride, padding, x.shape[2:])):
        return False
    return cpu.max_pool_applies(x, kernel)


class SpikeMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` (same options, same outputs and gradients bit for bit) that stores no int64 indices.

    A channels-last float32/bfloat16 map on the CPU pools on the C kernel (:func:`_max_pool_cpu`: one
    byte per output kept for backward; in inference the values alone); any other input recomputes the
    argmax in the backward pass (:class:`_MaxPoolRecomputedIndices`), keeping only its input, which after a
    LIF is a spike map stored at 1 bit per element. Falls back to the built-in pooling for options neither
    covers (dilation, ceil mode, returned indices) and outside :func:`plain_eager` execution."""

    use_kernel: bool = True  # FastPolicy.pool_kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.return_indices or self.ceil_mode or self.dilation not in (1, (1, 1)) or not plain_eager():
            return super().forward(x)
        kernel, stride, padding = _pair(self.kernel_size), _pair(self.stride or self.kernel_size), _pair(self.padding)
        training = torch.is_grad_enabled() and x.requires_grad
        if self.use_kernel and _kernel_pools(x, kernel, stride, padding):
            return _max_pool_cpu(x, kernel, stride, padding, training)[0]
        if not training:
            return super().forward(x)
        return _MaxPoolRecomputedIndices.apply(x, kernel, stride, padding)


def _pair(v: int | tuple[int, ...]) -> list[int]:
    return [v, v] if isinstance(v, int) else list(v)
