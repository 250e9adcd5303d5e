"""The building blocks of Spikformer: spiking conv/linear units, the SPS stem, SSA, MLP and Block.

Tensors between layers are time-first and channels-last: images ``[T, B, C, H, W]`` inside the stem, tokens
``[T, B, N, D]`` everywhere after it. Keeping channels last lets every Linear and BatchNorm run on a flat
``[T*B*N, D]`` view with no transpose or copy (the original code transposes around every BatchNorm).

Every ``BatchNorm -> LIF`` pair runs through :func:`batch_norm_lif`: in training it stores only the BatchNorm
input (which BatchNorm's backward needs anyway) and recomputes the normalised values in the backward pass,
so a spiking unit keeps one activation for backward instead of three. For inference, ``fuse_bn()`` folds the
BatchNorm into the preceding conv or linear layer (``Spikformer.fuse()`` does it for the whole model).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .neuron import (
    HALF_DTYPES,
    LIF,
    LIFParams,
    lif_backward_from_input,
    lif_forward_no_grad,
    lif_multistep,
    resolve_backend,
)

# --- BatchNorm -> LIF ------------------------------------------------------------------------------
#
# The model's BatchNorm is computed in its affine form, z = y * scale + shift per channel, with
# scale = weight / sqrt(var + eps) and shift = bias - mean * scale from the batch statistics in training
# (float32, or float64 for a float64 model) and from the running statistics in eval. The oracle path
# (backend "torch") differentiates exactly these operations; the fast path computes the same z inside the
# LIF kernel (never storing it) and differentiates analytically, so both give the same spikes bit for bit.
# Mathematically this is nn.BatchNorm1d/2d; it differs from PyTorch's own kernel only in rounding.


def _bn_view(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """The view of a time-first ``x`` that ``norm`` normalises: ``[T*B*N, D]`` (tokens) or ``[T*B, C, H, W]``."""
    return x.reshape(-1, x.shape[-1]) if isinstance(norm, nn.BatchNorm1d) else x.flatten(0, 1)


def _stat_dims(y: torch.Tensor) -> tuple[int, ...]:
    return (0,) if y.ndim == 2 else (0, *range(2, y.ndim))


def _per_channel(v: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return v if y.ndim == 2 else v.view(1, -1, *([1] * (y.ndim - 2)))


def _compute_dtype(y: torch.Tensor) -> torch.dtype:
    return torch.float64 if y.dtype == torch.float64 else torch.float32


def _momentum(norm: _BatchNorm) -> float:
    # nn.BatchNorm's bookkeeping: count the batch; momentum=None means a cumulative average.
    if norm.num_batches_tracked is not None:
        norm.num_batches_tracked.add_(1)
    if norm.momentum is None:
        return 1.0 / float(norm.num_batches_tracked)
    return norm.momentum


class _KernelBatchStatistics(torch.autograd.Function):
    """Per-channel batch mean and biased variance from the CPU kernel (in float64, several times faster than
    ``torch.var_mean`` over the non-channel dimensions), with their analytic gradient for the oracle path."""

    @staticmethod
    def forward(ctx, y):  # type: ignore[override]
        from .kernels import cpu

        mean, var = cpu.bn_stats(y)
        cdt = _compute_dtype(y)
        ctx.save_for_backward(y, mean)
        return mean.to(cdt), var.to(cdt)

    @staticmethod
    def backward(ctx, grad_mean, grad_var):  # type: ignore[override]
        y, mean = ctx.saved_tensors
        count = y.numel() // y.shape[1]
        cdt = _compute_dtype(y)
        # d mean / dy = 1 / count; d var / dy = 2 (y - mean) / count, per channel
        centred = y.to(cdt) - _per_channel(mean.to(cdt), y)
        grad = centred * _per_channel((2.0 / count) * grad_var, y) + _per_channel(grad_mean / count, y)
        return grad.to(y.dtype)


def _kernel_statistics_apply(y: torch.Tensor) -> bool:
    if y.device.type != "cpu" or y.ndim not in (2, 4) or torch.compiler.is_compiling():
        return False
    from .kernels import cpu

    return cpu.available(y.dtype)


def _batch_statistics(y: torch.Tensor, norm: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch mean and (biased) variance in the compute dtype; updates the running statistics like nn.BatchNorm.

    On CPU both the oracle and the fast path take them from the kernel, so the two still agree bit for bit."""
    if _kernel_statistics_apply(y):
        mean, var = _KernelBatchStatistics.apply(y)
    else:
        var, mean = torch.var_mean(y.to(_compute_dtype(y)), _stat_dims(y), correction=0)
    if norm.track_running_stats and norm.running_mean is not None:
        count = y.numel() // y.shape[1]
        momentum = _momentum(norm)
        with torch.no_grad():
            unbiased = var.detach() * (count / max(count - 1, 1))
            norm.running_mean.mul_(1 - momentum).add_(mean.detach().to(norm.running_mean.dtype), alpha=momentum)
            norm.running_var.mul_(1 - momentum).add_(unbiased.to(norm.running_var.dtype), alpha=momentum)
    return mean, var


def _scale_shift(norm: _BatchNorm, mean: torch.Tensor, invstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = invstd if norm.weight is None else invstd * norm.weight.to(invstd.dtype)
    shift = -mean * scale if norm.bias is None else norm.bias.to(scale.dtype) - mean * scale
    return scale, shift


def _normalize(y: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    # Two separately rounded operations (no fused multiply-add), as the C kernel computes them.
    cdt = scale.dtype
    # bf16 (issue 17): a half-precision y stays in float32 here, as in the kernels, which never round z.
    out_dtype = cdt if y.dtype in HALF_DTYPES else y.dtype
    return (y.to(cdt) * _per_channel(scale, y) + _per_channel(shift, y)).to(out_dtype)


def _uses_batch_statistics(norm: _BatchNorm) -> bool:
    return norm.training or not norm.track_running_stats or norm.running_mean is None


def batch_norm(y: torch.Tensor, norm: _BatchNorm) -> torch.Tensor:
    """``norm(y)`` in the affine form described above, differentiable (the oracle path and eval)."""
    if _uses_batch_statistics(norm):
        mean, var = _batch_statistics(y, norm)
    else:
        mean, var = norm.running_mean.to(_compute_dtype(y)), norm.running_var.to(_compute_dtype(y))
    scale, shift = _scale_shift(norm, mean, torch.rsqrt(var + norm.eps))
    return _normalize(y, scale, shift)


class _BatchNormLIF(torch.autograd.Function):
    """Training-mode ``LIF(BN(y))`` that stores ``y`` and per-channel vectors only: ``z = BN(y)`` is recomputed
    in the backward pass (inside the C kernel on CPU), then the LIF and BatchNorm backward passes run."""

    @staticmethod
    def forward(ctx, y, weight, bias, norm, params, backend, steps):  # type: ignore[override]
        mean, var = _batch_statistics(y, norm)
        invstd = torch.rsqrt(var + norm.eps)
        scale, shift = _scale_shift(norm, mean, invstd)
        p = params
        if backend == "c":
            from .kernels import cpu

            spikes = cpu.bn_lif_forward(y, scale, shift, steps, float(p.tau), float(p.v_threshold),
                                        float(p.v_reset))
        else:
            z = _normalize(y, scale, shift)
            spikes = lif_forward_no_grad(z.unflatten(0, (steps, -1)), params, backend).flatten(0, 1).to(y.dtype)
        ctx.save_for_backward(y, mean, invstd, scale, shift)
        ctx.config = (params, backend, steps, weight is not None, bias is not None)
        return spikes

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_spikes):  # type: ignore[override]
        y, mean, invstd, scale, shift = ctx.saved_tensors
        params, backend, steps, has_weight, has_bias = ctx.config
        p = params
        if backend == "c":
            from .kernels import cpu

            grad_z, sum_g, sum_gy = cpu.bn_lif_backward(
                y, grad_spikes, scale, shift, mean, steps, float(p.tau), float(p.v_threshold), float(p.v_reset),
                float(p.surrogate_alpha), bool(p.detach_reset))
        else:
            z = _normalize(y, scale, shift)
            grad_z = lif_backward_from_input(z.unflatten(0, (steps, -1)), grad_spikes.unflatten(0, (steps, -1)),
                                             params, backend).flatten(0, 1)
            g = grad_z.to(torch.float64)
            sum_g = g.sum(_stat_dims(y))
            sum_gy = (g * (y.to(torch.float64) - _per_channel(mean.to(torch.float64), y))).sum(_stat_dims(y))
        # BatchNorm backward with the batch statistics: dL/dy = dL/dz * scale + y * k1 + k0 per channel.
        count = y.numel() // y.shape[1]
        inv = invstd.to(torch.float64)
        sum_g_yhat = sum_gy * inv
        k1 = -scale.to(torch.float64) * inv * sum_g_yhat / count
        k0 = -scale.to(torch.float64) * sum_g / count - k1 * mean.to(torch.float64)
        cdt = scale.dtype
        if backend == "c":
            grad_y = cpu.bn_grad_input(grad_z, y, scale, k1.to(cdt), k0.to(cdt), steps)
        else:
            grad_y = (grad_z.to(cdt) * _per_channel(scale, y)
                      + (y.to(cdt) * _per_channel(k1.to(cdt), y) + _per_channel(k0.to(cdt), y))).to(y.dtype)
        grad_weight = sum_g_yhat.to(cdt) if has_weight and ctx.needs_input_grad[1] else None
        grad_bias = sum_g.to(cdt) if has_bias and ctx.needs_input_grad[2] else None
        return grad_y, grad_weight, grad_bias, None, None, None, None


def batch_norm_lif(x: torch.Tensor, norm: nn.Module, params: LIFParams, backend: str = "auto") -> torch.Tensor:
    """``LIF(norm(x))`` for a time-first ``x``: ``[T, B, N, D]`` with a BatchNorm1d over ``D``, or
    ``[T, B, C, H, W]`` with a BatchNorm2d over ``C``; spikes of ``x``'s shape.

    In training with a fast backend the BatchNorm output is never stored: the kernel normalises on the fly and
    the backward pass recomputes it. With ``backend="torch"`` (the oracle), under ``torch.compile`` (which
    makes its own fusion and recompute choices) or in eval mode, the same arithmetic runs as plain
    differentiable operations. Any other norm module (``nn.SyncBatchNorm``, ``nn.Identity`` after folding)
    is simply called.
    """
    name = resolve_backend(backend, x)
    if type(norm) not in (nn.BatchNorm1d, nn.BatchNorm2d):
        y = _bn_view(x, norm) if isinstance(norm, _BatchNorm) else x
        return lif_multistep(norm(y).view(x.shape), params, name)
    y = _bn_view(x, norm)
    if name == "torch" or torch.compiler.is_compiling():
        return lif_multistep(batch_norm(y, norm).view(x.shape), params, name).to(x.dtype)
    if not _uses_batch_statistics(norm) or not torch.is_grad_enabled():
        needs_grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, norm.weight, norm.bias))
        if name != "c" or needs_grad or _uses_batch_statistics(norm):
            return lif_multistep(batch_norm(y, norm).view(x.shape), params, name).to(x.dtype)
        # inference on CPU: normalise inside the LIF kernel, without a BatchNorm output tensor
        from .kernels import cpu

        cdt = _compute_dtype(y)
        scale, shift = _scale_shift(norm, norm.running_mean.to(cdt),
                                    torch.rsqrt(norm.running_var.to(cdt) + norm.eps))
        spikes = cpu.bn_lif_forward(y, scale.detach(), shift.detach(), x.shape[0], float(params.tau),
                                    float(params.v_threshold), float(params.v_reset))
        return spikes.view(x.shape)
    spikes = _BatchNormLIF.apply(y, norm.weight, norm.bias, norm, params, name, x.shape[0])
    return spikes.view(x.shape)


def fold_batch_norm(layer: nn.Conv2d | nn.Linear, norm: _BatchNorm) -> nn.Conv2d | nn.Linear:
    """A copy of ``layer`` whose output equals ``norm(layer(x))`` in eval mode (computed in float64)."""
    if norm.running_mean is None or norm.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    weight = layer.weight.detach().double()
    scale = torch.rsqrt(norm.running_var.double() + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight.detach().double()
    shift = -norm.running_mean.double() * scale
    if norm.bias is not None:
        shift = shift + norm.bias.detach().double()
    if layer.bias is not None:
        shift = shift + layer.bias.detach().double() * scale
    if isinstance(layer, nn.Conv2d):
        folded: nn.Conv2d | nn.Linear = nn.Conv2d(
            layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
            layer.dilation, layer.groups, bias=True, padding_mode=layer.padding_mode)
    else:
        folded = nn.Linear(layer.in_features, layer.out_features, bias=True)
    dtype, device = layer.weight.dtype, layer.weight.device
    folded = folded.to(device=device, dtype=dtype)
    with torch.no_grad():
        folded.weight.copy_(weight * scale.view(-1, *([1] * (weight.ndim - 1))))
        folded.bias.copy_(shift)
    return folded


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth over dim 1 (the batch of a ``[T, B, ...]`` tensor): a sample's branch is dropped at
    every time step together."""
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    mask = x.new_empty(shape).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class SpikingConvStage(nn.Module):
    """``Conv2d(k, stride, no bias) -> BatchNorm2d -> LIF [-> MaxPool2d(3, 2, 1)]`` on ``[T, B, C, H, W]``."""

    # See convolve(); benchmarks/bench_cpu_path.py turns it off per stage to measure NCHW side by side.
    channels_last_on_cpu: bool = True

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 3,
        stride: int = 1,
        pool: bool = False,
        lif_backend: str = "auto",
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, out_chans, kernel_size, stride, kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_chans)
        self.lif = LIF(backend=lif_backend)
        self.pool = nn.MaxPool2d(3, 2, 1) if pool else nn.Identity()

    def convolve(self, x: torch.Tensor) -> torch.Tensor:
        """``[T, B, C, H, W] -> [T*B, C', H', W']``, the conv alone.

        On the CPU the images go channels-last: oneDNN's convolutions and PyTorch's max-pool run faster on
        that layout here (about 10% of a CIFAR inference step, docs/performance.md), the LIF kernels read it
        in place, and the stem's tokens come out contiguous with no copy. Values do not depend on the layout
        beyond the convolution's summation order.
        """
        x = x.flatten(0, 1)
        if x.device.type == "cpu" and self.channels_last_on_cpu:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.conv(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B = x.shape[:2]
        y = self.convolve(x).unflatten(0, (T, B))  # [T, B, C', H', W']
        y = self.lif(y, norm=self.bn)
        return self.pool(y.flatten(0, 1)).unflatten(0, (T, B))

    def fuse_bn(self) -> None:
        """Fold the BatchNorm into the conv (inference only)."""
        if isinstance(self.bn, _BatchNorm):
            self.conv, self.bn = fold_batch_norm(self.conv, self.bn), nn.Identity()


class SpikingPatchSplitting(nn.Module):
    """Spikformer V1's stem: four 3x3 conv stages (D/8, D/4, D/2, D channels) and a relative position
    embedding, ``[T, B, C, H, W] -> [T, B, N, D]`` with ``N = (H/patch) * (W/patch)``.

    A max-pool follows each of the last ``log2(patch_size)`` stages: two for CIFAR (patch 4), all four for
    ImageNet and DVS (patch 16), as in the original code.
    """

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, lif_backend: str = "auto") -> None:
        super().__init__()
        num_pools = int(math.log2(patch_size))
        if 2**num_pools != patch_size or num_pools > 4:
            raise ValueError(f"SPS patch_size must be one of 1, 2, 4, 8, 16 (got {patch_size})")
        if embed_dim % 8:
            raise ValueError(f"SPS embed_dim must be a multiple of 8 (got {embed_dim})")
        widths = [embed_dim // 8, embed_dim // 4, embed_dim // 2, embed_dim]
        chans = [in_chans, *widths]
        self.patch_size = patch_size
        self.stages = nn.ModuleList(
            SpikingConvStage(chans[i], chans[i + 1], pool=i >= 4 - num_pools, lif_backend=lif_backend)
            for i in range(4)
        )
        self.rpe = SpikingConvStage(embed_dim, embed_dim, lif_backend=lif_backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        x = x + self.rpe(x)  # integer-valued, 0..2
        # [T, B, N, D], contiguous: the three Q/K/V linears of the first block would each copy a strided view.
        return x.flatten(3).transpose(-1, -2).contiguous()


class LinearBNLIF(nn.Module):
    """``Linear -> BatchNorm over channels -> LIF`` on tokens ``[T, B, N, D_in] -> [T, B, N, D_out]``.

    Equal to the original's ``nn.Linear + BatchNorm1d`` (CIFAR) and 1x1 ``Conv1d``/``Conv2d`` + BN
    (ImageNet, DVS): all normalise each channel over the ``T*B*N`` positions.
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, v_threshold: float = 1.0,
        lif_backend: str = "auto",
    ) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.bn = nn.BatchNorm1d(out_features)
        self.lif = LIF(v_threshold=v_threshold, backend=lif_backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lif(self.linear(x), norm=self.bn)

    def fuse_bn(self) -> None:
        """Fold the BatchNorm into the linear layer (inference only)."""
        if isinstance(self.bn, _BatchNorm):
            self.linear, self.bn = fold_batch_norm(self.linear, self.bn), nn.Identity()


class SpikingSelfAttention(nn.Module):
    """SSA: ``Q, K, V`` are spike tensors; ``LIF_0.5((Q K^T) V * scale)`` with no softmax, then a projection.

    Without softmax the product is associative, so we evaluate it in the cheaper order for the token count:
    ``Q (K^T V)`` when ``N > d``. With 0/1 operands both orders give the same integers exactly.
    """

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool, scale: float, attn_threshold: float = 0.5,
        lif_backend: str = "auto",
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = scale
        self.q = LinearBNLIF(dim, dim, bias=qkv_bias, lif_backend=lif_backend)
        self.k = LinearBNLIF(dim, dim, bias=qkv_bias, lif_backend=lif_backend)
        self.v = LinearBNLIF(dim, dim, bias=qkv_bias, lif_backend=lif_backend)
        self.attn_lif = LIF(v_threshold=attn_threshold, backend=lif_backend)
        self.proj = LinearBNLIF(dim, dim, bias=True, lif_backend=lif_backend)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        T, B, N, D = x.shape
        return x.view(T, B, N, self.num_heads, D // self.num_heads).transpose(2, 3)  # [T, B, h, N, d]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B, N, D = x.shape
        q, k, v = (self.split_heads(f(x)) for f in (self.q, self.k, self.v))
        out = spike_attention(q, k, v)  # [T, B, h, N, d], integers
        out = (out * self.scale).transpose(2, 3).reshape(T, B, N, D)
        return self.proj(self.attn_lif(out))


def exact_spike_product_dtype(q: torch.Tensor, num_tokens: int, head_dim: int, out_dtype: torch.dtype
                              ) -> torch.dtype:
    """The dtype in which ``Q K^T V`` of 0/1 spike tensors is computed exactly and fastest.

    Every partial sum is an integer of at most ``N * d``; float16 holds integers exactly up to 2^11, so on
    CUDA the products run in float16 (tensor cores) whenever ``N * d <= 2048`` and either no gradient is
    needed or autocast is on (the neighbouring matmuls are half precision then anyway). Otherwise, and on
    CPUs, they run in float32 (exact up to 2^24) or float64.
    """
    exact = out_dtype if out_dtype in (torch.float32, torch.float64) else torch.float32
    if q.device.type != "cuda" or num_tokens * head_dim > 2048:
        return exact
    if torch.is_autocast_enabled("cuda") or not (torch.is_grad_enabled() and q.requires_grad):
        return torch.float16
    return exact


def spike_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``(Q K^T) V`` of spike tensors ``[..., N, d]``, exactly, without softmax.

    The product is associative without softmax, so it is evaluated in the cheaper order for the token count:
    ``Q (K^T V)`` when ``N > d``. With 0/1 operands every order and every dtype chosen by
    :func:`exact_spike_product_dtype` gives the same integers. Under autocast the result is float32 (a
    bfloat16 result would round sums above 256 and change spikes downstream), otherwise ``q``'s dtype.
    """
    N, d = q.shape[-2:]
    half = (torch.float16, torch.bfloat16)
    # Autocast exists only on compute devices; shape-only passes on the "meta" device skip it.
    autocast_device = q.device.type in ("cpu", "cuda", "xpu", "mps")
    autocasting = autocast_device and torch.is_autocast_enabled(q.device.type)
    out_dtype = torch.float32 if q.dtype in half and autocasting else q.dtype
    dtype = exact_spike_product_dtype(q, N, d, out_dtype)
    no_autocast = torch.autocast(q.device.type, enabled=False) if autocast_device else contextlib.nullcontext()
    with no_autocast:
        # --- bf16 (issue 17): bfloat16 spikes on the CPU. The inner product's sums stay below its inner length
        # (at most max(N, d)), exact in bfloat16 up to 256, so it reads the spikes as they are; only the outer
        # product, whose sums reach N * d, runs in float32 (one cast, of one operand, instead of three).
        if q.dtype == torch.bfloat16 and dtype == torch.float32 and q.device.type == "cpu" and max(N, d) <= 256:
            as_float = functools.partial(torch.Tensor.to, dtype=torch.float32, memory_format=torch.contiguous_format)
            if N > d:
                out = as_float(q) @ (k.transpose(-2, -1) @ v).float()
            else:
                out = (q @ k.transpose(-2, -1)).float() @ as_float(v)
            return out.to(out_dtype)
        # --- end bf16 ---
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        if N > d:
            out = q @ (k.transpose(-2, -1) @ v)
        else:
            out = (q @ k.transpose(-2, -1)) @ v
    return out.to(out_dtype)


class SpikingMLP(nn.Module):
    """``LIF(BN(W1 x))`` to ``hidden`` channels, then ``LIF(BN(W2 h))`` back: ``[T, B, N, D]``."""

    def __init__(self, dim: int, hidden: int, lif_backend: str = "auto") -> None:
        super().__init__()
        self.fc1 = LinearBNLIF(dim, hidden, bias=True, lif_backend=lif_backend)
        self.fc2 = LinearBNLIF(hidden, dim, bias=True, lif_backend=lif_backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x))


class SpikformerBlock(nn.Module):
    """``x = x + SSA(x); x = x + MLP(x)`` on ``[T, B, N, D]``; the residual stream is integer-valued."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, attn_scale: float,
        drop_path: float = 0.0, lif_backend: str = "auto",
    ) -> None:
        super().__init__()
        self.attn = SpikingSelfAttention(dim, num_heads, qkv_bias, attn_scale, lif_backend=lif_backend)
        self.mlp = SpikingMLP(dim, int(dim * mlp_ratio), lif_backend=lif_backend)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(x))
        return x + self.drop_path(self.mlp(x))


StemBuilder = Callable[..., nn.Module]
_STEMS: dict[str, StemBuilder] = {}


def register_stem(name: str) -> Callable[[StemBuilder], StemBuilder]:
    """Register a stem ``builder(in_chans, embed_dim, patch_size, lif_backend, **options)`` whose module maps
    ``[T, B, C, H, W]`` to tokens ``[T, B, (H/patch)*(W/patch), D]``."""

    def decorator(builder: StemBuilder) -> StemBuilder:
        _STEMS[name] = builder
        return builder

    return decorator


def build_stem(name: str, **kwargs) -> nn.Module:
    if name not in _STEMS:
        raise ValueError(f"unknown stem {name!r}; available: {', '.join(sorted(_STEMS))}")
    builder = _STEMS[name]
    try:
        inspect.signature(builder).bind(**kwargs)
    except TypeError as error:  # an unknown stem_options key: name the options the stem does take
        fixed = ("in_chans", "embed_dim", "patch_size", "lif_backend")
        options = [p for p in inspect.signature(builder).parameters if p not in fixed]
        raise ValueError(f"stem {name!r}: {error}; its stem_options are: {', '.join(options) or 'none'}") from None
    return builder(**kwargs)


register_stem("sps")(SpikingPatchSplitting)
