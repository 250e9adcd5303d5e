"""The reconstruction target and loss: MSE on the (per-patch normalised) pixels of the masked patches only."""

from __future__ import annotations

import torch


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``[B, C, H, W] -> [B, N, patch*patch*C]``, patches in row-major grid order (the token order)."""
    B, C, H, W = images.shape
    h, w = H // patch_size, W // patch_size
    x = images.reshape(B, C, h, patch_size, w, patch_size)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(B, h * w, patch_size * patch_size * C)


def unpatchify(patches: torch.Tensor, patch_size: int, channels: int, grid: tuple[int, int]) -> torch.Tensor:
    """The inverse of ``patchify``: ``[B, N, patch*patch*C] -> [B, C, H, W]``."""
    B = patches.shape[0]
    h, w = grid
    x = patches.reshape(B, h, w, patch_size, patch_size, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(B, channels, h * patch_size, w * patch_size)


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each patch ``[..., P]`` to zero mean and unit variance: ``(normalised, mean, std)``."""
    mean = patches.mean(dim=-1, keepdim=True)
    std = (patches.var(dim=-1, keepdim=True, unbiased=False) + eps).sqrt()
    return (patches - mean) / std, mean, std


def masked_patch_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                      norm_pix: bool = True) -> torch.Tensor:
    """Mean squared error over the pixels of the masked patches.

    ``prediction`` and ``target`` are ``[B, N, P]`` (``target`` in pixels, from ``patchify``), ``mask`` is
    ``[B, N]`` bool with ``True`` for hidden patches. Visible patches contribute nothing, to the value or to
    the gradient. With ``norm_pix`` each target patch is first normalised by its own mean and std.
    """
    if norm_pix:
        target = normalize_patches(target)[0]
    per_patch = (prediction.float() - target.float()).pow(2).mean(dim=-1)  # [B, N]
    weight = mask.to(per_patch.dtype)
    return (per_patch * weight).sum() / weight.sum().clamp(min=1.0)
