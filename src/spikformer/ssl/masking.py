"""Random patch masks, and the masked forward pass of a convolutional spiking stem (SparK-style).

A mask is a boolean ``[B, h, w]`` over the token grid, ``True`` where a patch is hidden. A convolution would
carry masked content into its neighbours and let BatchNorm shift the masked region away from zero, so the
stem is run as an *emulated sparse convolution* (SparK, Tian et al. 2023): the input is masked, every conv
output is masked at its own resolution, BatchNorm normalises the visible positions only (its statistics and
running averages never see a masked position), and every stage's output is masked again after the LIF and
the max-pool. Masked positions therefore hold exactly zero (no spike) after every stage, and the pixels under
the mask cannot change anything the encoder computes.

The normal (unmasked) forward of the stem is untouched: this path reuses the stage's modules by name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import SpikingConvStage


def num_masked(num_patches: int, ratio: float) -> int:
    """How many of ``num_patches`` a ``ratio`` hides (the same count for every sample)."""
    return int(round(num_patches * ratio))


def random_patch_mask(batch: int, grid: tuple[int, int], ratio: float, device: torch.device | str | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniformly random mask per sample hiding ``round(h * w * ratio)`` patches: ``[B, h, w]`` bool."""
    h, w = grid
    count = num_masked(h * w, ratio)
    if not 0 < count < h * w:
        raise ValueError(f"mask_ratio {ratio} hides {count} of {h * w} patches; it must hide at least one and "
                         f"leave at least one visible")
    noise = torch.rand(batch, h * w, generator=generator, device=generator.device if generator else device)
    hidden = noise.argsort(dim=1)[:, :count]
    mask = torch.zeros(batch, h * w, dtype=torch.bool, device=noise.device)
    mask.scatter_(1, hidden, True)
    return mask.view(batch, h, w).to(device) if device is not None else mask.view(batch, h, w)


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


def masked_stage_forward(stage: SpikingConvStage, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One ``Conv -> BN -> LIF [-> MaxPool]`` unit as a sparse convolution: ``[T, B, C, H, W]`` (zero where
    masked) ``-> [T, B, C', H', W']`` (zero where masked)."""
    T, B = x.shape[:2]
    y = stage.convolve(x)  # [T*B, C', H', W']
    visible = visible_map(mask, y.shape[-2:]).repeat(T, 1, 1, 1)  # [T*B, 1, H', W'], T-major like flatten(0, 1)
    y = sparse_batch_norm(stage.bn, y, visible)
    y = stage.lif(y.unflatten(0, (T, B))).flatten(0, 1) * visible
    if not isinstance(stage.pool, nn.Identity):
        y = stage.pool(y)
        y = y * visible_map(mask, y.shape[-2:]).repeat(T, 1, 1, 1)
    return y.unflatten(0, (T, B))


def masked_stem_forward(stem: nn.Module, x: torch.Tensor, mask: torch.Tensor,
                        stage_outputs: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Run a stem made of ``stages`` (and an optional ``rpe``), such as V1's SPS or V2's SCS, with the
    patches under ``mask [B, h, w]`` hidden: ``[T, B, C, H, W] -> [T, B, N, D]``, masked tokens all zero.

    ``stage_outputs``, if given, receives every stage's output ``[T, B, C, H, W]`` (to check the masking).
    """
    stages = getattr(stem, "stages", None)
    if stages is None or not all(isinstance(stage, SpikingConvStage) for stage in stages):
        raise ValueError(f"masked pre-training needs a stem built of SpikingConvStage units (sps or scs); "
                         f"{type(stem).__name__} has no masked forward path")
    x = x * visible_map(mask, x.shape[-2:]).unsqueeze(0).to(x.dtype)  # [T, B, C, H, W]
    for stage in stages:
        x = masked_stage_forward(stage, x, mask)
        if stage_outputs is not None:
            stage_outputs.append(x)
    rpe = getattr(stem, "rpe", None)
    if rpe is not None:
        position = masked_stage_forward(rpe, x, mask)
        if stage_outputs is not None:
            stage_outputs.append(position)
        x = x + position  # integer-valued, 0..2
    return x.flatten(3).transpose(-1, -2)  # [T, B, N, D]


def sample_masks(indices: torch.Tensor, grid: tuple[int, int], ratio: float, seed: int, epoch: int
                 ) -> torch.Tensor:
    """One mask per sample ``[B, h, w]``, a function of (``seed``, ``epoch``, the sample's dataset index)
    alone: the same whichever process, batch or resumed run draws it."""
    masks = []
    for index in indices.tolist():
        generator = torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 2_147_483_647 + index) % 2**63)
        masks.append(random_patch_mask(1, grid, ratio, generator=generator))
    return torch.cat(masks)
