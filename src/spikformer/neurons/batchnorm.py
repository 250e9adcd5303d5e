"""BatchNorm as the neurons see it, and the LIF that charges straight from a BatchNorm's input.

Every ``BatchNorm -> LIF`` pair runs through :func:`batch_norm_lif`: in training it stores only the BatchNorm
input (which BatchNorm's backward needs anyway) and recomputes the normalised values in the backward pass,
so a spiking unit keeps one activation for backward instead of three. A neuron without such a fused path
charges from :func:`normalize` (the same affine arithmetic, differentiated by autograd).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .lif_backends import (
    HALF_DTYPES,
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
    """The view of a time-first ``x`` that ``norm`` normalises: ``[T*B*N, D]`` for tokens ``[T, B, N, D]``,
    ``[T*B, C, H, W]`` for images ``[T, B, C, H, W]``.

    Decided by ``x``'s layout, not by ``norm``'s class: a BatchNorm1d converted to ``nn.SyncBatchNorm`` keeps
    its channels but no longer says whether it was 1d or 2d.
    """
    return x.flatten(0, 1) if x.ndim == 5 else x.reshape(-1, x.shape[-1])


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
        from ..fast.kernels import cpu

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
    from ..fast.kernels import cpu

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
    # A half-precision y stays in float32 here, as in the kernels, which never round z.
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


def _bn_lif_forward(y, norm, params, backend, steps):
    """Spikes of ``LIF(BN(y))`` with the batch statistics (updating the running ones), and the per-channel
    vectors the backward pass needs: ``(spikes, (mean, invstd, scale, shift))``."""
    mean, var = _batch_statistics(y, norm)
    invstd = torch.rsqrt(var + norm.eps)
    scale, shift = _scale_shift(norm, mean, invstd)
    p = params
    if backend == "c":
        from ..fast.kernels import cpu

        spikes = cpu.bn_lif_forward(y, scale, shift, steps, float(p.tau), float(p.v_threshold), float(p.v_reset))
    else:
        z = _normalize(y, scale, shift)
        spikes = lif_forward_no_grad(z.unflatten(0, (steps, -1)), params, backend).flatten(0, 1).to(y.dtype)
    return spikes, (mean, invstd, scale, shift)


def _bn_lif_backward(y, grad_spikes, stats, params, backend, steps, want_weight, want_bias):
    """``(dL/dy, dL/dweight or None, dL/dbias or None)`` of ``LIF(BN(y))``, given ``_bn_lif_forward``'s vectors."""
    mean, invstd, scale, shift = stats
    p = params
    if backend == "c":
        from ..fast.kernels import cpu

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
    return grad_y, sum_g_yhat.to(cdt) if want_weight else None, sum_g.to(cdt) if want_bias else None


class _BatchNormLIF(torch.autograd.Function):
    """Training-mode ``LIF(BN(y))`` that stores ``y`` and per-channel vectors only: ``z = BN(y)`` is recomputed
    in the backward pass (inside the C kernel on CPU), then the LIF and BatchNorm backward passes run."""

    @staticmethod
    def forward(ctx, y, weight, bias, norm, params, backend, steps):  # type: ignore[override]
        spikes, stats = _bn_lif_forward(y, norm, params, backend, steps)
        ctx.save_for_backward(y, *stats)
        ctx.config = (params, backend, steps, weight is not None, bias is not None)
        return spikes

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_spikes):  # type: ignore[override]
        y, *stats = ctx.saved_tensors
        params, backend, steps, has_weight, has_bias = ctx.config
        grad_y, grad_weight, grad_bias = _bn_lif_backward(
            y, grad_spikes, stats, params, backend, steps,
            has_weight and ctx.needs_input_grad[1], has_bias and ctx.needs_input_grad[2])
        return grad_y, grad_weight, grad_bias, None, None, None, None


def _conv(x: torch.Tensor, weight: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    # autocast is off here: the caller has cast x and weight to the dtype autocast would have given the conv
    with torch.autocast(x.device.type, enabled=False):
        return torch.nn.functional.conv2d(x, weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)


class _ConvBatchNormLIF(torch.autograd.Function):
    """Training-mode ``LIF(BN(conv(x)))`` that stores ``x`` (a spike map, so 1 bit per element under
    ``spikformer.fast.memory.spike_packing``) instead of the conv output ``y``: the backward pass recomputes ``y``
    with the same convolution (deterministic, so bit for bit), then runs :class:`_BatchNormLIF`'s backward
    and the convolution's own backward kernel, so the gradients are the unfused path's."""

    @staticmethod
    def forward(ctx, x, conv_weight, weight, bias, conv, norm, params, backend, steps):  # type: ignore[override]
        y = _conv(x, conv_weight, conv)
        spikes, stats = _bn_lif_forward(y, norm, params, backend, steps)
        ctx.save_for_backward(x, conv_weight, *stats)
        ctx.config = (conv, params, backend, steps, weight is not None, bias is not None)
        return spikes

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_spikes):  # type: ignore[override]
        x, conv_weight, *stats = ctx.saved_tensors
        conv, params, backend, steps, has_weight, has_bias = ctx.config
        y = _conv(x, conv_weight, conv)
        grad_y, grad_weight, grad_bias = _bn_lif_backward(
            y, grad_spikes, stats, params, backend, steps,
            has_weight and ctx.needs_input_grad[2], has_bias and ctx.needs_input_grad[3])
        del y
        grad_x, grad_conv_weight, _ = torch.ops.aten.convolution_backward(
            grad_y, x, conv_weight, None, list(conv.stride), list(conv.padding), list(conv.dilation), False,
            [0, 0], conv.groups, [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False])
        return grad_x, grad_conv_weight, grad_weight, grad_bias, None, None, None, None, None


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
        from ..fast.kernels import cpu

        cdt = _compute_dtype(y)
        scale, shift = _scale_shift(norm, norm.running_mean.to(cdt),
                                    torch.rsqrt(norm.running_var.to(cdt) + norm.eps))
        spikes = cpu.bn_lif_forward(y, scale.detach(), shift.detach(), x.shape[0], float(params.tau),
                                    float(params.v_threshold), float(params.v_reset))
        return spikes.view(x.shape)
    spikes = _BatchNormLIF.apply(y, norm.weight, norm.bias, norm, params, name, x.shape[0])
    return spikes.view(x.shape)


def conv_batch_norm_lif(x: torch.Tensor, conv: nn.Conv2d, norm: nn.Module, params: LIFParams, steps: int,
                        backend: str = "auto") -> torch.Tensor:
    """``LIF(norm(conv(x)))`` for ``x [T*B, C, H, W]`` (time-major) -> spikes ``[T, B, C', H', W']``.

    In training with the batch statistics and a fast backend, the conv output is not kept for backward but
    recomputed there from ``x`` (:class:`_ConvBatchNormLIF`); use it where ``x`` is a spike map (it then
    packs to 1 bit) and the conv is cheap next to the bytes of its output. Otherwise this is the plain
    ``batch_norm_lif(conv(x))``. Under autocast the conv runs in autocast's dtype as it would unfused.
    """
    name = resolve_backend(backend, x)
    # (a compute device only: shape-only passes on the "meta" device have no autocast to ask)
    fused = (x.device.type in ("cpu", "cuda") and type(norm) is nn.BatchNorm2d and type(conv) is nn.Conv2d
             and conv.bias is None
             and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple) and name != "torch"
             and _uses_batch_statistics(norm) and torch.is_grad_enabled() and not torch.compiler.is_compiling())
    if not fused:
        y = conv(x)
        return batch_norm_lif(y.unflatten(0, (steps, -1)), norm, params, name)
    weight = conv.weight
    if torch.is_autocast_enabled(x.device.type):
        # what autocast does to a conv's floating-point inputs (float64 excepted), done here once so that the
        # Function can run and rerun the conv with autocast off
        dtype = torch.get_autocast_dtype(x.device.type)
        x = x.to(dtype) if x.is_floating_point() and x.dtype != torch.float64 else x
        weight = weight.to(dtype) if weight.dtype != torch.float64 else weight
    spikes = _ConvBatchNormLIF.apply(x, weight, norm.weight, norm.bias, conv, norm, params, name, steps)
    return spikes.unflatten(0, (steps, -1))


def normalize(x: torch.Tensor, norm: nn.Module | None) -> torch.Tensor:
    """``norm(x)`` for a time-first ``x`` (the shapes of :func:`batch_norm_lif`), differentiable by autograd.

    BatchNorm1d/2d run in the affine form above, so a neuron charging from this sees the values LIF's oracle
    path sees; any other norm module is simply called; ``None`` or ``nn.Identity`` (a folded BatchNorm) leave
    ``x`` as it is.
    """
    if norm is None or isinstance(norm, nn.Identity):
        return x
    if type(norm) in (nn.BatchNorm1d, nn.BatchNorm2d):
        return batch_norm(_bn_view(x, norm), norm).view(x.shape)
    y = _bn_view(x, norm) if isinstance(norm, _BatchNorm) else x
    return norm(y).view(x.shape)
