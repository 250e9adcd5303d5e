"""Emulated sparse convolution (SparK, Tian et al. 2023): a patch mask at a feature map's resolution, and a
BatchNorm over the visible positions only.

A convolution would carry masked content into its neighbours and let BatchNorm shift the masked region away
from zero, so a masked stem multiplies every conv output by the visible map at its own resolution and
normalises the visible positions alone (``SpikingConvStage.forward(x, mask)``); masked positions then hold
exactly zero (no spike) after every unit. ``spikformer.ssl`` draws the masks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def visible_map(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The mask ``[B, h, w]`` at a feature map's resolution ``(H, W)`` as ``[B, 1, H, W]`` bool, ``True`` where
    visible. ``H`` and ``W`` must be whole multiples of the grid (they are at every stage of a stem)."""
    B, h, w = mask.shape
    H, W = size
    if H % h or W % w:
        raise ValueError(f"a {H}x{W} feature map is not a whole multiple of the {h}x{w} mask grid")
    visible = ~mask
    if H != h or W != w:
        visible = visible.repeat_interleave(H // h, dim=1).repeat_interleave(W // w, dim=2)
    return visible.unsqueeze(1)


def sparse_batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """``bn`` applied to the visible positions of ``x [N, C, H, W]`` only (``visible [N, 1, H, W]``); masked
    positions come out as exactly 0. Batch statistics and running averages use visible positions alone."""
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:  # cumulative moving average, as nn.BatchNorm does
            momentum = 1.0 / float(bn.num_batches_tracked)
    use_batch_stats = bn.training or bn.running_mean is None
    channels_last = x.permute(0, 2, 3, 1)  # [N, H, W, C]
    where = visible[:, 0]  # [N, H, W]
    active = channels_last[where]  # [M, C]
    normed = F.batch_norm(active, bn.running_mean, bn.running_var, bn.weight, bn.bias, use_batch_stats, momentum,
                          bn.eps)
    out = channels_last.new_zeros(channels_last.shape, dtype=normed.dtype)
    out[where] = normed
    return out.permute(0, 3, 1, 2)
