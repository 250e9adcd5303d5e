"""Giving a randomly initialised network plausible BatchNorm statistics before its spikes are analysed.

A fresh model's BatchNorm layers hold running statistics of (mean 0, variance 1) that match nothing, so in
eval mode most of its LIF layers stay silent or saturate and its firing rates say nothing. Re-estimating the
statistics on real (or random) inputs, as after training, puts each pre-activation at zero mean and unit
variance and the rates in a plausible range. The weights are untouched; the numbers still describe an
untrained network.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .firing import iterate_inputs


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, batches: Iterable, max_batches: int | None = None,
                        device: torch.device | str = "cpu") -> int:
    """Reset every BatchNorm's running statistics and re-estimate them as the plain average over ``batches``;
    returns the number of BatchNorm layers calibrated. The model is left in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    model.train()
    try:
        for inputs in iterate_inputs(batches, max_batches):
            model(inputs.to(device))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.eval()
    return len(norms)
