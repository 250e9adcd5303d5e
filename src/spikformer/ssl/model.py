"""Masked image modelling for a spiking encoder: the encoder (a ``Spikformer`` without head) and the decoder.

The method in three steps (``forward_encoder``, ``forward_decoder``, ``forward_loss``):
1. Hide a random subset of the patches. The stem runs as a sparse convolution (``masking.py``), so hidden
   regions stay empty through every conv stage. Then either all tokens enter the SSA blocks, each hidden one
   as a learned mask token plus a fixed position code (``encoder_tokens="all"``, as SimMIM: the encoder
   itself must fill the holes), or only the visible ones (``"visible"``, as MAE).
2. The non-spiking decoder predicts every patch's pixels (with ``"visible"`` it first puts a mask token at
   every hidden position).
3. MSE on the (normalised) pixels of the hidden patches only.

Only the encoder is kept: ``encoder_state_dict()`` is what fine-tuning loads (``model.pretrained``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..models import Spikformer, create_model
from .decoder import ReconstructionDecoder, sincos_position_embedding
from .loss import masked_patch_loss, normalize_patches, patchify, unpatchify
from .masking import accepts_mask, masked_stem_forward, random_patch_mask

ENCODER_TOKENS = ("all", "visible")


class MaskedSpikformer(nn.Module):
    """``images [B, C, H, W]`` -> ``(loss, prediction [B, N, P], mask [B, h, w])``.

    ``encoder`` must have no classifier (``num_classes=0``); its ``T`` is the pre-training time steps.
    """

    def __init__(self, encoder: Spikformer, mask_ratio: float = 0.5, decoder_dim: int = 256,
                 decoder_depth: int = 4, decoder_heads: int = 8, norm_pix_loss: bool = True,
                 encoder_tokens: str = "all") -> None:
        super().__init__()
        if encoder.num_classes != 0:
            raise ValueError("the pre-training encoder must be built with num_classes=0 (no classifier)")
        if not accepts_mask(encoder.patch_embed):
            raise ValueError(f"masked pre-training needs a stem whose forward takes a mask (sps or scs); the "
                             f"{type(encoder.patch_embed).__name__} stem has no masked forward path")
        if encoder_tokens not in ENCODER_TOKENS:
            raise ValueError(f"encoder_tokens must be one of {', '.join(ENCODER_TOKENS)}, got {encoder_tokens!r}")
        if encoder_tokens == "visible" and decoder_depth == 0:
            raise ValueError("with encoder_tokens='visible' the decoder needs at least one block to see the "
                             "visible tokens from the hidden positions; set decoder_depth >= 1")
        self.encoder = encoder
        self.encoder_tokens = encoder_tokens
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.patch_size = encoder.patch_size
        self.grid = (encoder.img_size // encoder.patch_size,) * 2
        if encoder_tokens == "all":
            # Hidden tokens leave the sparse stem empty, and SSA and MLP treat identical tokens identically:
            # without a position code every hidden token would get the same features. Spikformer has no
            # absolute position embedding of its own, so the mask token carries one (pre-training only).
            self.mask_token = nn.Parameter(torch.zeros(1, 1, encoder.embed_dim))
            nn.init.trunc_normal_(self.mask_token, std=0.02)
            self.register_buffer("mask_position", sincos_position_embedding(self.grid, encoder.embed_dim),
                                 persistent=False)
        self.decoder = ReconstructionDecoder(
            encoder.embed_dim, self.grid, self.patch_size**2 * encoder.in_chans, decoder_dim, decoder_depth,
            decoder_heads, fills_hidden=encoder_tokens == "visible",
        )

    def random_mask(self, batch: int, device: torch.device, generator: torch.Generator | None = None
                    ) -> torch.Tensor:
        return random_patch_mask(batch, self.grid, self.mask_ratio, device=device, generator=generator)

    def check_input(self, images: torch.Tensor) -> None:
        expected = (self.encoder.in_chans, self.grid[0] * self.patch_size, self.grid[1] * self.patch_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"masked pre-training expects images [B, {expected[0]}, {expected[1]}, {expected[2]}] "
                             f"(the encoder's img_size), got {list(images.shape)}")

    def forward_encoder(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Images and mask ``[B, h, w]`` -> token features ``[T, B, N, D]`` (``"all"``) or those of the
        visible tokens ``[T, B, N_vis, D]`` (``"visible"``)."""
        x = self.encoder.time_first(images)  # [T, B, C, H, W]
        x = masked_stem_forward(self.encoder.patch_embed, x, mask)  # [T, B, N, D], hidden tokens zero
        if self.encoder_tokens == "all":
            hidden = mask.flatten(1)[None, :, :, None].to(x.dtype)  # [1, B, N, 1]
            x = x + hidden * (self.mask_token + self.mask_position).to(x.dtype)
        else:
            T, B, N, D = x.shape
            visible = (~mask).flatten(1).nonzero()[:, 1].view(B, -1)  # [B, N_vis], ascending per sample
            x = x.gather(2, visible.view(1, B, -1, 1).expand(T, B, visible.shape[1], D))  # [T, B, N_vis, D]
        for block in self.encoder.blocks:
            x = block(x)
        return x

    def forward_decoder(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Encoder features ``[T, B, N or N_vis, D]`` -> predicted pixels of every patch ``[B, N, P]``."""
        return self.decoder(features.mean(0), mask.flatten(1))  # the decoder is not spiking: average over T

    def forward_loss(self, images: torch.Tensor, prediction: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_patch_loss(prediction, patchify(images, self.patch_size), mask.flatten(1),
                                 self.norm_pix_loss)

    def forward(self, images: torch.Tensor, mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.check_input(images)
        if mask is None:
            mask = self.random_mask(images.shape[0], images.device)
        prediction = self.forward_decoder(self.forward_encoder(images, mask), mask)
        return self.forward_loss(images, prediction, mask), prediction, mask

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Images with the hidden patches replaced by the prediction, ``[B, C, H, W]``. With ``norm_pix_loss``
        the model predicts each patch's normalised pattern only; it is shown at the true patch's mean and std."""
        _, prediction, _ = self(images, mask)
        target = patchify(images, self.patch_size)
        if self.norm_pix_loss:
            _, mean, std = normalize_patches(target)
            prediction = prediction * std + mean
        hidden = mask.flatten(1).unsqueeze(-1)
        patches = torch.where(hidden, prediction.to(target.dtype), target)
        return unpatchify(patches, self.patch_size, self.encoder.in_chans, self.grid)

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        return self.encoder.state_dict()


def encoder_overrides(config) -> dict[str, Any]:
    """``create_model`` overrides of the pre-training encoder: the config's model at ``ssl.T``, no head."""
    from ..config import model_overrides

    overrides = model_overrides(config.model)
    overrides.update(T=config.ssl.T, num_classes=0)
    return overrides


def build_masked_model(config) -> MaskedSpikformer:
    """The encoder and decoder a config (``model`` and ``ssl`` sections) describes."""
    encoder = create_model(config.model.name, **encoder_overrides(config))
    ssl = config.ssl
    return MaskedSpikformer(encoder, ssl.mask_ratio, ssl.decoder_dim, ssl.decoder_depth, ssl.decoder_heads,
                            ssl.norm_pix_loss, ssl.encoder_tokens)
