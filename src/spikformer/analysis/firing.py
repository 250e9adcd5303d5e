"""Firing rates of every spiking neuron layer (any ``SpikingNeuron``: LIF, PLIF, ...), recorded by forward
hooks that exist only while a recorder is active.

The firing rate of a layer is its mean number of spikes per neuron per time step. Outside a recorder's
``with`` block no hook is attached to any module, so a model that is not being analysed runs exactly as
fast as one that never was.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn

from ..console import progress_bar
from ..neurons import SpikingNeuron

# The parts of a Spikformer a LIF belongs to, by the last names of its module path (checked in order).
_ROLES = (
    ("attn_lif", "attention"), ("attn.q.", "Q"), ("attn.k.", "K"), ("attn.v.", "V"), ("attn.proj.", "projection"),
    ("mlp.fc1.", "MLP fc1"), ("mlp.fc2.", "MLP fc2"), ("rpe.", "RPE"), ("patch_embed.", "stem"),
)


def lif_role(name: str) -> str:
    """What a LIF layer is in the paper's words, from its module name (``blocks.0.attn.q.lif`` -> ``Q``)."""
    for key, role in _ROLES:
        if key in name + ".":
            return role
    return "spiking layer"


class FiringRateRecorder:
    """Context manager: while active, accumulates the spikes and neuron-steps of each LIF layer.

    ``rates()`` gives the mean firing rate (spikes per neuron per time step) by layer name, over every forward
    pass made inside the block; ``per_step()`` gives it per time step ``[T]``. ``keep`` names layers whose
    spikes of the first sample of the first batch are kept in ``kept[name]`` (``[T, *neuron_shape]``) for a
    raster plot. Outside the ``with`` block no hook is attached.
    """

    def __init__(self, model: nn.Module, keep: Iterable[str] = ()) -> None:
        self.layers = {name: module for name, module in model.named_modules() if isinstance(module, SpikingNeuron)}
        keep = list(keep)
        unknown = [name for name in keep if name not in self.layers]
        if unknown:
            raise ValueError(f"no LIF layer named {', '.join(map(repr, unknown))}; "
                             f"LIF layers: {', '.join(self.layers)}")
        self.keep = set(keep)
        self.spikes: dict[str, torch.Tensor] = {}
        self.neurons: dict[str, int] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.kept: dict[str, torch.Tensor] = {}
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
            if output.is_meta:  # shape-only runs (operation counting on the meta device) carry no spikes
                return
            per_step = output.detach().float().flatten(1).sum(1).cpu()  # [T]
            if name in self.spikes and self.spikes[name].shape == per_step.shape:
                self.spikes[name] += per_step
            else:
                self.spikes[name] = per_step
                self.neurons[name] = 0
            self.neurons[name] += output[0].numel()
            self.shapes[name] = tuple(output.shape)
            if name in self.keep and name not in self.kept:
                self.kept[name] = _first_sample(output).detach().cpu()

        return record

    def rates(self) -> dict[str, float]:
        """Mean spikes per neuron per time step of every LIF layer that ran, in the model's module order."""
        return {name: float(self.spikes[name].sum() / (self.neurons[name] * len(self.spikes[name])))
                for name in self.layers if name in self.spikes}

    def per_step(self) -> dict[str, list[float]]:
        """Firing rate at each time step ``t = 0..T-1`` of every LIF layer that ran."""
        return {name: (self.spikes[name] / self.neurons[name]).tolist() for name in self.layers
                if name in self.spikes}


def _first_sample(spikes: torch.Tensor) -> torch.Tensor:
    """The first sample of a LIF output: ``[T, B, ...] -> [T, ...]``."""
    return spikes[:, 0]


def iterate_inputs(batches: Iterable, max_batches: int | None = None, progress: bool = False,
                   desc: str = "analyse") -> Iterator[torch.Tensor]:
    """The input tensors of ``batches`` (items ``(inputs, labels)`` or bare inputs), at most ``max_batches``."""
    total = None
    if hasattr(batches, "__len__"):
        total = len(batches) if max_batches is None else min(len(batches), max_batches)
    bar = progress_bar(batches, enabled=progress, desc=desc, total=total)
    for i, batch in enumerate(bar):
        if max_batches is not None and i >= max_batches:
            break
        yield batch[0] if isinstance(batch, list | tuple) else batch


@torch.no_grad()
def measure_firing_rates(model: nn.Module, batches: Iterable, device: torch.device | str = "cpu",
                         max_batches: int | None = None) -> dict[str, float]:
    """Mean firing rate of every LIF layer over ``batches`` of ``(inputs, labels)`` or inputs."""
    model.eval()
    with FiringRateRecorder(model) as recorder:
        for inputs in iterate_inputs(batches, max_batches):
            model(inputs.to(device))
    return recorder.rates()
