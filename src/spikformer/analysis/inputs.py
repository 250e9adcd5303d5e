"""Random inputs for analysing a model without a dataset (e.g. the energy table of every variant)."""

from __future__ import annotations

import torch
from torch import nn


def random_batches(model: nn.Module, batch_size: int, num_batches: int, seed: int = 0,
                   events: bool = False, event_rate: float = 0.1) -> list[torch.Tensor]:
    """``num_batches`` batches at the model's input size: standard-normal images ``[B, C, H, W]`` (like
    normalised pixels), or with ``events`` binary event frames ``[B, T, C, H, W]`` with ``event_rate`` events
    per pixel per step (like the neuromorphic datasets). Reproducible from ``seed``."""
    if batch_size < 1 or num_batches < 1:
        raise ValueError(f"batch_size and num_batches must be >= 1, got {batch_size} and {num_batches}")
    for attr in ("in_chans", "img_size", "T"):
        if not hasattr(model, attr):
            raise ValueError(f"random inputs need a model with in_chans, img_size and T (a Spikformer); "
                             f"{type(model).__name__} has no {attr!r}")
    generator = torch.Generator().manual_seed(seed)
    C, S, T = model.in_chans, model.img_size, model.T
    if events:
        shape = (batch_size, T, C, S, S)
        return [torch.bernoulli(torch.full(shape, event_rate), generator=generator) for _ in range(num_batches)]
    return [torch.randn((batch_size, C, S, S), generator=generator) for _ in range(num_batches)]
