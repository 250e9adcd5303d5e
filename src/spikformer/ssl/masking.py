"""Random patch masks, and the masked forward pass of a convolutional spiking stem (SparK-style).

A mask is a boolean ``[B, h, w]`` over the token grid, ``True`` where a patch is hidden. A stem that can be
pre-trained this way takes it in its forward, ``stem(x, mask=mask)``, and runs as an *emulated sparse
convolution* (SparK, Tian et al. 2023; ``spikformer.sparse``): the input is masked, every conv output is
masked at its own resolution, BatchNorm normalises the visible positions only (its statistics and running
averages never see a masked position), and every unit's output is masked again after the neuron and the
max-pool. Masked positions therefore hold exactly zero (no spike) after every unit, and the pixels under the
mask cannot change anything the encoder computes.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from ..layers import SpikingConvStage
from ..sparse import sparse_batch_norm, visible_map

__all__ = ["accepts_mask", "masked_stem_forward", "num_masked", "random_patch_mask", "sparse_batch_norm", "visible_map"]


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


def accepts_mask(stem: nn.Module) -> bool:
    """Whether ``stem`` follows the masked-stem contract: ``forward(x, mask=None)``."""
    return "mask" in inspect.signature(stem.forward).parameters


def masked_stem_forward(stem: nn.Module, x: torch.Tensor, mask: torch.Tensor,
                        stage_outputs: list[torch.Tensor] | None = None) -> torch.Tensor:
    """``stem(x, mask=mask)`` for a stem that takes a mask (V1's SPS and V2's SCS do): ``[T, B, C, H, W] ->
    [T, B, N, D]`` with the patches under ``mask [B, h, w]`` hidden, masked tokens all zero.

    ``stage_outputs``, if given, receives the output ``[T, B, C, H, W]`` of every conv unit in the order they
    ran (to check the masking).
    """
    if not accepts_mask(stem):
        raise ValueError(f"masked pre-training needs a stem whose forward takes a mask (sps or scs); "
                         f"{type(stem).__name__} has no masked forward path")
    handles = []
    if stage_outputs is not None:
        handles = [unit.register_forward_hook(lambda module, args, out: stage_outputs.append(out))
                   for unit in stem.modules() if isinstance(unit, SpikingConvStage)]
    try:
        return stem(x, mask=mask)
    finally:
        for handle in handles:
            handle.remove()


def sample_masks(indices: torch.Tensor, grid: tuple[int, int], ratio: float, seed: int, epoch: int
                 ) -> torch.Tensor:
    """One mask per sample ``[B, h, w]``, a function of (``seed``, ``epoch``, the sample's dataset index)
    alone: the same whichever process, batch or resumed run draws it."""
    masks = []
    for index in indices.tolist():
        generator = torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 2_147_483_647 + index) % 2**63)
        masks.append(random_patch_mask(1, grid, ratio, generator=generator))
    return torch.cat(masks)
