"""The reconstruction figure of masked pre-training: one row per image, columns input | mask | reconstruction."""

from __future__ import annotations

from pathlib import Path

import torch

from .model import MaskedSpikformer


def _displayable(picture: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``picture [C, H, W]`` -> ``[H, W]`` or ``[H, W, 3]`` in [0, 1], on the colour scale of ``reference``
    (the input image), so that a reconstruction is shown exactly as bright as the input would be."""
    low, high = reference.min(), reference.max()
    picture = ((picture.detach().float().cpu() - low) / (high - low).clamp(min=1e-8)).clamp(0, 1)
    return picture[0] if picture.shape[0] == 1 else picture[:3].permute(1, 2, 0)


def _with_hidden_patches_coloured(picture: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """``[H, W]`` or ``[H, W, 3]`` in [0, 1] -> ``[H, W, 3]`` with the hidden pixels painted blue."""
    rgb = picture.unsqueeze(-1).expand(*picture.shape, 3).clone() if picture.ndim == 2 else picture.clone()
    rgb[hidden] = torch.tensor([0.25, 0.35, 0.75])
    return rgb


def render_reconstructions(model: MaskedSpikformer, images: torch.Tensor, path: str | Path,
                           generator: torch.Generator | None = None) -> Path:
    """Mask ``images [B, C, H, W]`` at the model's ratio, reconstruct, and save the grid as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    images = images.to(device)
    mask = model.random_mask(images.shape[0], device, generator)
    reconstruction = model.reconstruct(images, mask)
    model.train(was_training)

    hidden = mask.repeat_interleave(model.patch_size, 1).repeat_interleave(model.patch_size, 2).cpu()  # [B, H, W]

    rows = images.shape[0]
    figure, axes = plt.subplots(rows, 3, figsize=(6, 2 * rows), squeeze=False)
    for row in range(rows):
        reference = images[row].float().cpu()
        pictures = {"input": _displayable(images[row], reference),
                    "mask": _with_hidden_patches_coloured(_displayable(images[row], reference), hidden[row]),
                    "reconstruction": _displayable(reconstruction[row], reference)}
        for column, (title, picture) in enumerate(pictures.items()):
            ax = axes[row][column]
            ax.imshow(picture, cmap="gray", vmin=0, vmax=1)
            ax.set_axis_off()
            if row == 0:
                ax.set_title(title)
    figure.suptitle(f"masked pre-training: {model.mask_ratio:.0%} of the patches hidden", fontsize=10)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
