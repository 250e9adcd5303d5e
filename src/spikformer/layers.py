"""The building blocks of Spikformer: spiking conv/linear units, the SPS stem, SSA, MLP and Block.

Tensors between layers are time-first and channels-last: images ``[T, B, C, H, W]`` inside the stem, tokens
``[T, B, N, D]`` everywhere after it. Keeping channels last lets every Linear and BatchNorm run on a flat
``[T*B*N, D]`` view with no transpose or copy (the original code transposes around every BatchNorm).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch
from torch import nn

from .neuron import LIF


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B = x.shape[:2]
        y = self.bn(self.conv(x.flatten(0, 1)))  # [T*B, C', H', W']
        y = self.lif(y.unflatten(0, (T, B)))
        return self.pool(y.flatten(0, 1)).unflatten(0, (T, B))


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
        return x.flatten(3).transpose(-1, -2)  # [T, B, N, D]


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
        y = self.linear(x)
        y = self.bn(y.reshape(-1, y.shape[-1])).view(y.shape)
        return self.lif(y)


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
        if N > D // self.num_heads:
            out = q @ (k.transpose(-2, -1) @ v)
        else:
            out = (q @ k.transpose(-2, -1)) @ v
        out = (out * self.scale).transpose(2, 3).reshape(T, B, N, D)
        return self.proj(self.attn_lif(out))


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
