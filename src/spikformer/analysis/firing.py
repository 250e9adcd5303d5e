"""Firing rates of every LIF layer, recorded by forward hooks that exist only while a recorder is active."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..neuron import LIF


class FiringRateRecorder:
    """Context manager: while active, accumulates the spikes and neuron-steps of each LIF layer.

    ``rates()`` gives the mean firing rate (spikes per neuron per time step) by layer name;
    ``per_step()`` gives it per time step ``[T]``. Outside the ``with`` block no hook is attached.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = {name: module for name, module in model.named_modules() if isinstance(module, LIF)}
        self.spikes: dict[str, torch.Tensor] = {}
        self.neurons: dict[str, int] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._handles: list = []

    def __enter__(self) -> FiringRateRecorder:
        for name, module in self.layers.items():
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, name: str):
        def record(module, inputs, output: torch.Tensor) -> None:
            per_step = output.detach().float().flatten(1).sum(1).cpu()  # [T]
            if name in self.spikes and self.spikes[name].shape == per_step.shape:
                self.spikes[name] += per_step
            else:
                self.spikes[name] = per_step
                self.neurons[name] = 0
            self.neurons[name] += output[0].numel()
            self.shapes[name] = tuple(output.shape)

        return record

    def rates(self) -> dict[str, float]:
        return {name: float(self.spikes[name].sum() / (self.neurons[name] * len(self.spikes[name])))
                for name in self.layers if name in self.spikes}

    def per_step(self) -> dict[str, list[float]]:
        return {name: (self.spikes[name] / self.neurons[name]).tolist() for name in self.layers
                if name in self.spikes}


@torch.no_grad()
def measure_firing_rates(model: nn.Module, batches: Iterable, device: torch.device | str = "cpu",
                         max_batches: int | None = None) -> dict[str, float]:
    """Mean firing rate of every LIF layer over ``batches`` of ``(inputs, labels)`` or inputs."""
    model.eval()
    with FiringRateRecorder(model) as recorder:
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            inputs = batch[0] if isinstance(batch, list | tuple) else batch
            model(inputs.to(device))
    return recorder.rates()
