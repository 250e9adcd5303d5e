"""Masked self-supervised pre-training of a spiking encoder (Spikformer V2): masking, decoder, loss, run."""

from .loss import masked_patch_loss, patchify, unpatchify
from .masking import masked_stem_forward, random_patch_mask
from .model import MaskedSpikformer, build_masked_model

__all__ = ["MaskedSpikformer", "build_masked_model", "masked_patch_loss", "masked_stem_forward", "patchify",
           "random_patch_mask", "unpatchify"]
