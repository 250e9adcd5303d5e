"""The light, non-spiking decoder of masked pre-training; it exists only during pre-training.

It receives the encoder's features of every token, or of the visible tokens only (then it puts a learned mask
token at every hidden position), adds fixed 2-D sine-cosine position embeddings (the encoder's features carry
no absolute position: the stem's position embedding is a convolution), and runs ``depth`` pre-norm
transformer blocks over the full grid before a linear projection to the pixels of every patch.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def sincos_position_embedding(grid: tuple[int, int], dim: int) -> torch.Tensor:
    """Fixed 2-D position embedding ``[h*w, dim]``: half the channels encode the row, half the column, each as
    sines and cosines of geometrically spaced frequencies."""
    if dim % 4:
        raise ValueError(f"the decoder width must be a multiple of 4 for 2-D sine-cosine positions, got {dim}")
    h, w = grid
    quarter = dim // 4
    frequencies = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter))  # [dim/4]
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                                indexing="ij")
    parts = []
    for coordinate in (rows.flatten(), cols.flatten()):
        angles = coordinate[:, None] * frequencies[None, :]  # [N, dim/4]
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=1).float()  # [N, dim]


class ReconstructionDecoder(nn.Module):
    """Token features ``[B, N, D]`` (or of the visible tokens, ``[B, N_vis, D]``) and the mask ``[B, N]`` ->
    pixels of every patch ``[B, N, P]`` (``P = patch * patch * channels``; the loss reads the masked ones).

    ``fills_hidden``: it receives visible tokens only and holds the mask token that fills the hidden positions.
    Without it there is no mask token: a parameter that never reaches the loss would stop DDP at its second step.
    """

    def __init__(self, encoder_dim: int, grid: tuple[int, int], patch_pixels: int, dim: int = 256,
                 depth: int = 4, num_heads: int = 8, mlp_ratio: float = 4.0, fills_hidden: bool = True) -> None:
        super().__init__()
        self.grid = grid
        # The encoder's output is a sum of spikes whose scale grows with depth: normalise it first.
        self.encoder_norm = nn.LayerNorm(encoder_dim)
        self.embed = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim)) if fills_hidden else None
        self.register_buffer("position", sincos_position_embedding(grid, dim), persistent=False)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, num_heads, int(dim * mlp_ratio), dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.predict = nn.Linear(dim, patch_pixels)
        if self.mask_token is not None:
            nn.init.normal_(self.mask_token, std=0.02)
        self.apply(_init_weights)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, N = mask.shape
        if N != math.prod(self.grid):
            raise ValueError(f"mask has {N} patches but the decoder was built for a {self.grid} grid")
        tokens = self.embed(self.encoder_norm(features))  # [B, N or N_vis, d]
        if tokens.shape[1] != N:  # visible tokens only: hidden positions get the mask token
            if self.mask_token is None:
                raise ValueError("this decoder was built for all tokens (fills_hidden=False) but received "
                                 f"{tokens.shape[1]} of {N}")
            visible_tokens = tokens
            tokens = self.mask_token.expand(B, N, -1).to(visible_tokens.dtype).clone()  # [B, N, d]
            tokens[~mask] = visible_tokens.reshape(-1, visible_tokens.shape[-1])
        tokens = tokens + self.position.to(tokens.dtype)
        for block in self.blocks:
            tokens = block(tokens)
        return self.predict(self.norm(tokens))  # [B, N, P]


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
