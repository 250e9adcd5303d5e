"""The building blocks of Spikformer: spiking conv/linear units, the stem (V1's SPS, V2's SCS), SSA, MLP, Block.

Tensors between layers are time-first and channels-last: images ``[T, B, C, H, W]`` inside the stem, tokens
``[T, B, N, D]`` everywhere after it. Keeping channels last lets every Linear and BatchNorm run on a flat
``[T*B*N, D]`` view with no transpose or copy (the original code transposes around every BatchNorm).

Every spiking unit is ``conv or linear -> BatchNorm -> neuron``; the neuron is injected (``neuron="lif"`` by
name, or a class, see ``spikformer.neurons``) and charges from the BatchNorm through ``neuron(y, norm=bn)``,
which lets LIF normalise inside its kernel. For inference, ``fuse_bn()`` folds the BatchNorm into the
preceding conv or linear layer (``Spikformer.fuse()`` does it for the whole model).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .neurons import NeuronLayer, neuron_layer
from .registry import Registry, did_you_mean
from .sparse import sparse_batch_norm, visible_map

Neuron = str | NeuronLayer  # a registered neuron name, or a neuron class / factory

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
    """``Conv2d(k, stride, no bias) -> BatchNorm2d -> neuron [-> MaxPool2d(3, 2, 1)]`` on ``[T, B, C, H, W]``.

    ``forward(x, mask)`` runs the unit as an emulated sparse convolution (``spikformer.sparse``): given
    ``x`` zero under the patch mask, its output is zero there too, and BatchNorm sees visible positions only.
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 3,
        stride: int = 1,
        pool: bool = False,
        neuron: Neuron = "lif",
        neuron_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, out_chans, kernel_size, stride, kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_chans)
        self.lif = neuron_layer(neuron, neuron_options)()  # named lif for the state-dict and layer names
        self.pool = nn.MaxPool2d(3, 2, 1) if pool else nn.Identity()

    def convolve(self, x: torch.Tensor) -> torch.Tensor:
        """``[T, B, C, H, W] -> [T*B, C', H', W']``, the conv alone."""
        return self.conv(x.flatten(0, 1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``[T, B, C, H, W] -> [T, B, C', H', W']``; with a patch ``mask [B, h, w]``, the sparse unit."""
        if mask is not None:
            return self.forward_masked(x, mask)
        T, B = x.shape[:2]
        y = self.convolve(x).unflatten(0, (T, B))  # [T, B, C', H', W']
        y = self.lif(y, norm=self.bn)
        return self.pool(y.flatten(0, 1)).unflatten(0, (T, B))

    def forward_masked(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The unit as a sparse convolution: ``x [T, B, C, H, W]`` zero where ``mask [B, h, w]`` hides a patch
        ``-> [T, B, C', H', W']``, zero there too."""
        T, B = x.shape[:2]
        y = self.convolve(x)  # [T*B, C', H', W']
        visible = visible_map(mask, y.shape[-2:]).repeat(T, 1, 1, 1)  # [T*B, 1, H', W'], T-major like flatten
        y = sparse_batch_norm(self.bn, y, visible)
        y = self.lif(y.unflatten(0, (T, B))).flatten(0, 1) * visible
        if not isinstance(self.pool, nn.Identity):
            y = self.pool(y)
            y = y * visible_map(mask, y.shape[-2:]).repeat(T, 1, 1, 1)
        return y.unflatten(0, (T, B))

    def fuse_bn(self) -> None:
        """Fold the BatchNorm into the conv (inference only)."""
        if isinstance(self.bn, _BatchNorm):
            self.conv, self.bn = fold_batch_norm(self.conv, self.bn), nn.Identity()


class LinearBNLIF(nn.Module):
    """``Linear -> BatchNorm over channels -> neuron`` on tokens ``[T, B, N, D_in] -> [T, B, N, D_out]``.

    Equal to the original's ``nn.Linear + BatchNorm1d`` (CIFAR) and 1x1 ``Conv1d``/``Conv2d`` + BN
    (ImageNet, DVS): all normalise each channel over the ``T*B*N`` positions.
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, neuron: Neuron = "lif",
        neuron_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.bn = nn.BatchNorm1d(out_features)
        self.lif = neuron_layer(neuron, neuron_options)()

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
    ``qk_pool`` > 0: a 1-D max-pool of that (odd) width over the tokens of the Q and K spikes, stride 1 (the V1
    paper's DVS128 Gesture variant; see ``token_max_pool``).
    """

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool, scale: float, attn_threshold: float = 0.5,
        neuron: Neuron = "lif", neuron_options: dict[str, Any] | None = None, qk_pool: int = 0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        if qk_pool < 0 or (qk_pool and qk_pool % 2 == 0):
            raise ValueError(f"qk_pool must be 0 (off) or an odd pooling width, got {qk_pool}")
        self.num_heads = num_heads
        self.scale = scale
        self.qk_pool = qk_pool
        make = neuron_layer(neuron, neuron_options)
        self.q = LinearBNLIF(dim, dim, bias=qkv_bias, neuron=make)
        self.k = LinearBNLIF(dim, dim, bias=qkv_bias, neuron=make)
        self.v = LinearBNLIF(dim, dim, bias=qkv_bias, neuron=make)
        self.attn_lif = make(v_threshold=attn_threshold)  # the attention neuron fires at half the threshold
        self.proj = LinearBNLIF(dim, dim, bias=True, neuron=make)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return split_heads(x, self.num_heads)

    def pool_qk(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The Q and K operands the spike product receives, from the Q and K neurons' spikes ``[T, B, N, D]``:
        max-pooled over tokens when ``qk_pool`` is set, else unchanged. One place, so that the analysis tools
        (SOP counts, attention maps) see exactly what the forward multiplies."""
        if self.qk_pool:
            return token_max_pool(q, self.qk_pool), token_max_pool(k, self.qk_pool)
        return q, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q(x), self.k(x), self.v(x)
        q, k = self.pool_qk(q, k)
        out = self.spike_products(q, k, v)  # [T, B, N, D], integers times the scale
        return self.proj(self.attn_lif(out))

    def spike_products(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``(Q K^T) V * scale`` per head of the spikes ``[T, B, N, D]``: the attention neuron's input."""
        return scaled_spike_attention(q, k, v, self.num_heads, self.scale)


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``[T, B, N, D] -> [T, B, h, N, d]`` (a view)."""
    T, B, N, D = x.shape
    return x.view(T, B, N, num_heads, D // num_heads).transpose(2, 3)


def scaled_spike_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int,
                           scale: float) -> torch.Tensor:
    """``(Q K^T) V * scale`` per head of the spike tensors ``[T, B, N, D]``, as ``[T, B, N, D]``: the input of the
    attention neuron (:func:`spike_attention` on the split heads)."""
    T, B, N, D = q.shape
    out = spike_attention(*(split_heads(t, num_heads) for t in (q, k, v)))  # [T, B, h, N, d], integers
    return (out * scale).transpose(2, 3).reshape(T, B, N, D)


def token_max_pool(x: torch.Tensor, width: int) -> torch.Tensor:
    """Max over each window of ``width`` neighbouring tokens, stride 1, zero-padded: ``[T, B, N, D]`` in and out.
    The paper's "1-D max-pool after Q and K" read as ``MaxPool1d`` on the ``[T*B, D, N]`` layout of the DVS code's
    Conv1d projections (our reading: the paper states no width; we use 3). Spikes stay 0/1."""
    T, B, N, D = x.shape
    pooled = nn.functional.max_pool1d(x.reshape(T * B, N, D).transpose(1, 2), width, stride=1, padding=width // 2)
    return pooled.transpose(1, 2).reshape(T, B, N, D)


# Every integer up to these is exact in the half-precision types (2 ** (mantissa bits + 1)).
_EXACT_INTEGERS = {torch.float16: 2**11, torch.bfloat16: 2**8}


def spike_product_dtype(device_type: str, num_tokens: int, head_dim: int, out_dtype: torch.dtype,
                        autocast_dtype: torch.dtype | None, needs_grad: bool) -> torch.dtype:
    """The dtype of ``Q K^T V`` for 0/1 spikes ``[..., N, d]``: exact, fastest, and safe for the backward.

    Every partial sum is an integer of at most ``N * d``. On CUDA the products run in half precision (tensor
    cores) when that type holds ``N * d`` exactly: float16 when no gradient is needed; under autocast with a
    gradient, the autocast dtype itself, so the backward keeps the exponent range of the surrounding autocast
    (bfloat16 autocast has no GradScaler, and its gradients lie far below float16's normal range). Otherwise,
    and on CPUs, float32 (exact up to 2^24) or float64.
    """
    exact = out_dtype if out_dtype in (torch.float32, torch.float64) else torch.float32
    if device_type != "cuda":
        return exact
    half = torch.float16 if not needs_grad else autocast_dtype
    if half in _EXACT_INTEGERS and num_tokens * head_dim <= _EXACT_INTEGERS[half]:
        return half
    return exact


def exact_spike_product_dtype(q: torch.Tensor, num_tokens: int, head_dim: int, out_dtype: torch.dtype
                              ) -> torch.dtype:
    """:func:`spike_product_dtype` for ``q``'s device, the current autocast and whether ``q`` needs a gradient."""
    autocasting = q.device.type == "cuda" and torch.is_autocast_enabled("cuda")
    autocast_dtype = torch.get_autocast_dtype("cuda") if autocasting else None
    needs_grad = torch.is_grad_enabled() and q.requires_grad
    return spike_product_dtype(q.device.type, num_tokens, head_dim, out_dtype, autocast_dtype, needs_grad)


def exact_spike_products(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``(Q K^T) V`` in ``dtype``, in the cheaper order for the token count (``Q (K^T V)`` when ``N > d``)."""
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    if q.shape[-2] > q.shape[-1]:
        return q @ (k.transpose(-2, -1) @ v)
    return (q @ k.transpose(-2, -1)) @ v


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
        out = exact_spike_products(q, k, v, dtype)
    return out.to(out_dtype)


class SpikingMLP(nn.Module):
    """``S(BN(W1 x))`` to ``hidden`` channels, then ``S(BN(W2 h))`` back, ``S`` the neuron: ``[T, B, N, D]``."""

    def __init__(self, dim: int, hidden: int, neuron: Neuron = "lif",
                 neuron_options: dict[str, Any] | None = None) -> None:
        super().__init__()
        make = neuron_layer(neuron, neuron_options)
        self.fc1 = LinearBNLIF(dim, hidden, bias=True, neuron=make)
        self.fc2 = LinearBNLIF(hidden, dim, bias=True, neuron=make)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x))


class SpikformerBlock(nn.Module):
    """``x = x + SSA(x); x = x + MLP(x)`` on ``[T, B, N, D]``; the residual stream is integer-valued."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, attn_scale: float,
        drop_path: float = 0.0, neuron: Neuron = "lif", neuron_options: dict[str, Any] | None = None,
        qk_pool: int = 0,
    ) -> None:
        super().__init__()
        make = neuron_layer(neuron, neuron_options)
        self.attn = SpikingSelfAttention(dim, num_heads, qkv_bias, attn_scale, neuron=make, qk_pool=qk_pool)
        self.mlp = SpikingMLP(dim, int(dim * mlp_ratio), neuron=make)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(x))
        return x + self.drop_path(self.mlp(x))


# --- the stem ---------------------------------------------------------------------------------------
#
# V1's Spiking Patch Splitting (SPS) and V2's Spiking Convolutional Stem (SCS) are one module: a sequence of
# Conv -> BN -> neuron units and a relative position embedding. The SPS is the SCS with one unit per stage at
# widths D/8, D/4, D/2, D (the V2 paper's "supplementary convolutional layers" are the extra units).

DOWNSAMPLE_MODES = ("maxpool", "stride")


@dataclass(frozen=True)
class SCSOptions:
    """The layout of a Spiking Convolutional Stem (``stem_options`` of a model with ``stem="scs"``).

    ``widths[i]``: channels of stage ``i`` as a fraction of ``embed_dim`` (the last must be 1.0).
    ``depths[i]``: ``Conv -> BN -> LIF`` units in stage ``i`` (V1's SPS: all 1). The first unit maps the
    previous width to this stage's width; the others keep it.
    ``kernel_size``: of every conv. ``downsample``: ``"maxpool"`` (``MaxPool2d(3, 2, 1)`` after the first
    unit's LIF, as V1) or ``"stride"`` (the first unit's conv has stride 2). The last ``log2(patch_size)``
    stages down-sample. ``rpe``: add V1's relative position embedding ``x + LIF(BN(Conv(x)))``.

    Default: V1's widths ``D/8, D/4, D/2, D`` with a second unit in each of the first three stages, after the
    down-sampling (``docs/v2.md`` explains the choice).
    """

    widths: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0)
    depths: tuple[int, ...] = (2, 2, 2, 1)
    kernel_size: int = 3
    downsample: str = "maxpool"
    rpe: bool = True

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> SCSOptions:
        """Validate a ``stem_options`` mapping (YAML lists become tuples); unknown keys name the valid ones."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [key for key in options if key not in names]
        if unknown:
            hints = ", ".join(f"{key!r}{did_you_mean(key, names)}" for key in unknown)
            raise ValueError(f"unknown SCS stem option {hints}; options: {', '.join(names)}")
        values = dict(options)
        for key in ("widths", "depths"):
            if key in values:
                if not isinstance(values[key], list | tuple):
                    raise ValueError(f"SCS {key} must be a list with one entry per stage, got {values[key]!r}")
                values[key] = tuple(values[key])
        return cls(**values)

    def stage_widths(self, embed_dim: int) -> list[int]:
        return [round(w * embed_dim) for w in self.widths]

    def check(self, embed_dim: int, patch_size: int) -> None:
        """Raise ``ValueError`` naming the problem if this layout cannot build a stem for these sizes."""
        problems = []
        if len(self.widths) != len(self.depths) or not self.widths:
            problems.append(f"widths {list(self.widths)} and depths {list(self.depths)} must have one entry per "
                            f"stage (same non-zero length)")
        if any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in self.depths):
            problems.append(f"depths must be integers >= 1, got {list(self.depths)}")
        if any(isinstance(w, bool) or not isinstance(w, int | float) or w <= 0 for w in self.widths):
            problems.append(f"widths must be positive fractions of embed_dim, got {list(self.widths)}")
        elif self.widths and self.widths[-1] != 1:
            problems.append(f"the last width must be 1.0 (the stem ends at embed_dim), got {self.widths[-1]}")
        else:
            uneven = [w for w in self.widths if abs(w * embed_dim - round(w * embed_dim)) > 1e-6]
            if uneven:
                problems.append(f"widths {uneven} x embed_dim {embed_dim} are not whole channel counts")
        if isinstance(self.kernel_size, bool) or not isinstance(self.kernel_size, int) or self.kernel_size < 1 \
                or self.kernel_size % 2 == 0:
            problems.append(f"kernel_size must be an odd integer >= 1 (same padding), got {self.kernel_size!r}")
        if self.downsample not in DOWNSAMPLE_MODES:
            problems.append(f"downsample must be one of {', '.join(DOWNSAMPLE_MODES)}, got {self.downsample!r}")
        if not isinstance(self.rpe, bool):
            problems.append(f"rpe must be true or false, got {self.rpe!r}")
        num_down = math.log2(patch_size) if patch_size > 0 else -1
        if num_down != int(num_down) or num_down < 0:
            problems.append(f"patch_size must be a power of two, got {patch_size}")
        elif int(num_down) > len(self.depths):
            problems.append(f"patch_size {patch_size} needs {int(num_down)} down-sampling stages but the layout "
                            f"has {len(self.depths)}; add stages (widths/depths entries)")
        if problems:
            raise ValueError("invalid SCS layout: " + "; ".join(problems))

    @classmethod
    def sps(cls) -> SCSOptions:
        """V1's SPS: one unit per stage, max-pool down-sampling, the RPE."""
        return cls(depths=(1, 1, 1, 1))


class SpikingConvolutionalStem(nn.Module):
    """The stem: ``[T, B, C, H, W] -> [T, B, N, D]`` tokens with ``N = (H/patch) * (W/patch)``.

    ``stages`` holds every ``Conv -> BN -> neuron`` unit in order (flattened over the layout's stages, so the
    state-dict keys of V1's SPS are ``stages.0`` to ``stages.3``); ``rpe`` is the relative position embedding
    whose output is added to the last unit's (``None`` when ``options.rpe`` is false). ``forward(x, mask)``
    hides the patches under a mask ``[B, h, w]`` (masked pre-training): every unit runs as a sparse
    convolution, and hidden tokens come out zero.
    """

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, neuron: Neuron = "lif",
                 neuron_options: dict[str, Any] | None = None, options: SCSOptions | None = None) -> None:
        super().__init__()
        options = options or SCSOptions()
        options.check(embed_dim, patch_size)
        make = neuron_layer(neuron, neuron_options)
        self.options = options
        self.patch_size = patch_size
        num_down = int(math.log2(patch_size))
        first_down = len(options.depths) - num_down
        units: list[SpikingConvStage] = []
        chans = in_chans
        for index, (width, depth) in enumerate(zip(options.stage_widths(embed_dim), options.depths)):
            down = index >= first_down
            for unit in range(depth):
                first = unit == 0
                units.append(SpikingConvStage(
                    chans, width, options.kernel_size,
                    stride=2 if first and down and options.downsample == "stride" else 1,
                    pool=first and down and options.downsample == "maxpool",
                    neuron=make,
                ))
                chans = width
        self.stages = nn.ModuleList(units)
        self.rpe = SpikingConvStage(embed_dim, embed_dim, neuron=make) if options.rpe else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is not None:
            x = x * visible_map(mask, x.shape[-2:]).unsqueeze(0).to(x.dtype)  # [T, B, C, H, W]
        for stage in self.stages:
            x = stage(x, mask)
        if self.rpe is not None:
            x = x + self.rpe(x, mask)  # integer-valued, 0..2
        # [T, B, N, D], contiguous: the three Q/K/V linears of the first block would each copy a strided view.
        return x.flatten(3).transpose(-1, -2).contiguous()

    def extra_repr(self) -> str:
        o = self.options
        return (f"widths={o.widths}, depths={o.depths}, kernel_size={o.kernel_size}, downsample={o.downsample!r}, "
                f"rpe={o.rpe}")


def SpikingPatchSplitting(in_chans: int, embed_dim: int, patch_size: int, neuron: Neuron = "lif",  # noqa: N802
                          neuron_options: dict[str, Any] | None = None) -> SpikingConvolutionalStem:
    """Spikformer V1's stem (SPS): four 3x3 conv units (D/8, D/4, D/2, D channels) and a relative position
    embedding; a max-pool follows each of the last ``log2(patch_size)`` units, two for CIFAR (patch 4), all
    four for ImageNet and DVS (patch 16), as in the original code."""
    num_pools = int(math.log2(patch_size)) if patch_size > 0 else -1
    if 2**num_pools != patch_size or num_pools > 4:
        raise ValueError(f"SPS patch_size must be one of 1, 2, 4, 8, 16 (got {patch_size})")
    if embed_dim % 8:
        raise ValueError(f"SPS embed_dim must be a multiple of 8 (got {embed_dim})")
    return SpikingConvolutionalStem(in_chans, embed_dim, patch_size, neuron, neuron_options, SCSOptions.sps())


StemBuilder = Callable[..., nn.Module]
_STEMS: Registry[StemBuilder] = Registry("stem", importable=True)
STEM_ARGUMENTS = ("in_chans", "embed_dim", "patch_size", "neuron")  # what the model passes; the rest: stem_options


def register_stem(name: str) -> Callable[[StemBuilder], StemBuilder]:
    """Register a stem ``builder(in_chans, embed_dim, patch_size, neuron, **options)`` whose module maps
    ``[T, B, C, H, W]`` to tokens ``[T, B, (H/patch)*(W/patch), D]`` (and takes ``mask=`` to be pre-trained
    with masks)."""
    return _STEMS.register(name)


def build_stem(name: str, **kwargs) -> nn.Module:
    builder = _STEMS.get(name)
    try:
        inspect.signature(builder).bind(**kwargs)
    except TypeError as error:  # an unknown stem_options key: name the options the stem does take
        options = [p for p in inspect.signature(builder).parameters if p not in STEM_ARGUMENTS]
        raise ValueError(f"stem {name!r}: {error}; its stem_options are: {', '.join(options) or 'none'}") from None
    return builder(**kwargs)


@register_stem("sps")
def build_sps(in_chans: int, embed_dim: int, patch_size: int, neuron: Neuron = "lif") -> SpikingConvolutionalStem:
    """The ``"sps"`` stem (it has no ``stem_options``)."""
    return SpikingPatchSplitting(in_chans, embed_dim, patch_size, neuron)


@register_stem("scs")
def build_scs(in_chans: int, embed_dim: int, patch_size: int, neuron: Neuron = "lif", **options: Any
              ) -> SpikingConvolutionalStem:
    """The ``"scs"`` stem from ``stem_options`` (keys of ``SCSOptions``)."""
    return SpikingConvolutionalStem(in_chans, embed_dim, patch_size, neuron, options=SCSOptions.from_dict(options))
