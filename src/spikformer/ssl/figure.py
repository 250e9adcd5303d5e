"""The reconstruction figure of masked pre-training: one row per image, columns input | mask | reconstruction.

Drawn on a matplotlib ``Figure`` with its own Agg canvas (matplotlib's global backend is left alone). Without
matplotlib (a base install) the same grid is saved untitled through Pillow, which torchvision brings, and a
warning names the extra: pre-training never fails at its end over a picture.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..errors import MissingExtraError
from ..extras import require
from .model import MaskedSpikformer

log = logging.getLogger(__name__)


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
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    images = images.to(device)
    mask = model.random_mask(images.shape[0], device, generator)
    reconstruction = model.reconstruct(images, mask)
    model.train(was_training)

    hidden = mask.repeat_interleave(model.patch_size, 1).repeat_interleave(model.patch_size, 2).cpu()  # [B, H, W]

    rows = []
    for row in range(images.shape[0]):
        reference = images[row].float().cpu()
        rows.append({"input": _displayable(images[row], reference),
                     "mask": _with_hidden_patches_coloured(_displayable(images[row], reference), hidden[row]),
                     "reconstruction": _displayable(reconstruction[row], reference)})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    title = f"masked pre-training: {model.mask_ratio:.0%} of the patches hidden"
    try:
        _draw_with_matplotlib(rows, title, path)
    except MissingExtraError as missing:
        log.warning(f"{missing}; {path} is saved without titles")
        _save_plain_grid(rows, path)
    return path


def _draw_with_matplotlib(rows: list[dict[str, torch.Tensor]], title: str, path: Path) -> None:
    figure_module = require("matplotlib.figure", "the titled reconstruction figure")
    canvas_module = require("matplotlib.backends.backend_agg", "the titled reconstruction figure")
    figure = figure_module.Figure(figsize=(6, 2 * len(rows)))
    canvas_module.FigureCanvasAgg(figure)
    axes = figure.subplots(len(rows), 3, squeeze=False)
    for row, pictures in enumerate(rows):
        for column, (name, picture) in enumerate(pictures.items()):
            ax = axes[row][column]
            ax.imshow(picture.numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_axis_off()
            if row == 0:
                ax.set_title(name)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def _save_plain_grid(rows: list[dict[str, torch.Tensor]], path: Path) -> None:
    """The same grid without matplotlib: ``[H, W(, 3)]`` pictures in [0, 1], 2-pixel white gaps, one PNG."""
    from PIL import Image

    pictures = [[p.unsqueeze(-1).expand(*p.shape, 3) if p.ndim == 2 else p for p in r.values()] for r in rows]
    height, width = pictures[0][0].shape[:2]
    gap = 2
    grid = torch.ones(len(rows) * (height + gap) - gap, 3 * (width + gap) - gap, 3)
    for i, row in enumerate(pictures):
        for j, picture in enumerate(row):
            grid[i * (height + gap):i * (height + gap) + height, j * (width + gap):j * (width + gap) + width] = picture
    Image.fromarray((grid * 255).round().to(torch.uint8).numpy()).save(path)
