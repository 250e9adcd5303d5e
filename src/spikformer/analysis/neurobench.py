"""NeuroBench (``pip install neurobench``) measuring a Spikformer: an adapter for its ``Benchmark``.

Usage::

    from neurobench.benchmarks import Benchmark
    from spikformer.analysis.neurobench import SpikformerModel, spikformer_metrics

    benchmark = Benchmark(SpikformerModel(model), loader, [], [], spikformer_metrics())
    results = benchmark.run()  # per sample: SynapticOperations, AttentionSynapticOperations, ...

What the adapter adds to NeuroBench's ``TorchModel``:

- every ``SpikingNeuron`` is an activation module. NeuroBench finds ``nn.ReLU``, ``nn.Sigmoid`` and snnTorch's
  neurons by type; without this its ``ActivationSparsity`` reads 0.0 for a Spikformer, with no error;
- the SSA's products of two spike tensors (``Q K^T`` and its product with ``V``) are counted on every forward
  and reported by :class:`AttentionSynapticOperations`. NeuroBench counts the operations of ``Linear`` and
  convolution modules only, and those products are no module, so its ``SynapticOperations`` leaves them out;
- the forward runs without gradients.

:func:`neurobench_layer_operations` gives NeuroBench's operation count per layer (its own ``LayerHook`` and
``single_layer_MACs``, the pieces its ``SynapticOperations`` adds up), for side-by-side tables with
``spikformer.analysis.count_operations`` (docs/energy.md names where the two conventions differ).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..extras import require
from ..neurons import SpikingNeuron
from .ops import OpCounter

_models = require("neurobench.models", "measuring a model with NeuroBench")
_workload = require("neurobench.metrics.workload", "measuring a model with NeuroBench")
_static = require("neurobench.metrics.static", "measuring a model with NeuroBench")
_abstract = require("neurobench.metrics.abstract.workload_metric", "measuring a model with NeuroBench")


class SpikformerModel(_models.TorchModel):
    """A Spikformer (or any module built from ``SpikingNeuron`` layers) as NeuroBench's ``Benchmark`` takes it.

    ``net`` takes what the data loader yields (``[B, C, H, W]`` images or ``[B, T, C, H, W]`` frames) and is
    put in eval mode. After each call, ``attention_accumulates`` holds the SSA products' accumulates of that
    batch (all samples together).
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__(net)
        self.add_activation_module(SpikingNeuron)
        self.attention_accumulates = 0.0

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), OpCounter(self.net, weight_layers=False) as counter:
            out = self.net(batch)
        self.attention_accumulates = sum(layer.sops for layer in counter.layers()) * counter.samples
        return out


class AttentionSynapticOperations(_abstract.AccumulatedMetric):
    """Accumulates of the SSA's spike-spike products per sample (exact coincidences, ``docs/energy.md``): the
    synaptic operations NeuroBench's ``SynapticOperations`` cannot see. Add them to its ``Effective_ACs``."""

    def __init__(self) -> None:
        super().__init__(requires_hooks=False)
        self.reset()

    def reset(self) -> None:
        self.accumulates, self.samples = 0.0, 0

    def __call__(self, model, preds, data) -> float:
        if not isinstance(model, SpikformerModel):
            raise TypeError(
                f"AttentionSynapticOperations needs the model wrapped as SpikformerModel(net), got "
                f"{type(model).__name__}"
            )
        self.accumulates += model.attention_accumulates
        self.samples += data[0].size(0)
        return self.compute()

    def compute(self) -> float:
        return self.accumulates / self.samples if self.samples else 0.0


def spikformer_metrics() -> list[list[type]]:
    """NeuroBench's ``metric_list`` for a Spikformer: static (footprint, connection sparsity, parameters) and
    workload (activation sparsity, synaptic operations, the SSA products' synaptic operations) metrics."""
    return [
        [_static.Footprint, _static.ConnectionSparsity, _static.ParameterCount],
        [_workload.ActivationSparsity, _workload.SynapticOperations, AttentionSynapticOperations],
    ]


@dataclass
class NeuroBenchLayerOps:
    """NeuroBench's count for one connection layer, per sample: its effective MACs (calls whose input held
    a value other than -1, 0, 1) and ACs (the other calls)."""

    name: str
    macs: float
    acs: float

    @property
    def operations(self) -> float:
        return self.macs + self.acs


def neurobench_layer_operations(model: nn.Module, inputs: torch.Tensor) -> list[NeuroBenchLayerOps]:
    """NeuroBench's synaptic operations of every ``Linear``/convolution layer of ``model`` on ``inputs``
    (``[B, ...]``), per sample, in the order the layers ran: its ``LayerHook`` and ``single_layer_MACs``, as
    its ``SynapticOperations`` metric applies them (whose ``Effective_MACs + Effective_ACs`` is their sum)."""
    hooks_module = require("neurobench.hooks.layer", "measuring a model with NeuroBench")
    macs = require("neurobench.metrics.utils.layers", "measuring a model with NeuroBench")
    layers = require("neurobench.blocks.layer", "measuring a model with NeuroBench").SUPPORTED_LAYERS
    hooks = {
        name: hooks_module.LayerHook(module) for name, module in model.named_modules() if isinstance(module, layers)
    }
    order: list[str] = []
    handles = [
        module.register_forward_pre_hook(lambda m, i, name=name: order.append(name))
        for name, module in model.named_modules()
        if name in hooks
    ]
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for hook in hooks.values():
            hook.close()
        for handle in handles:
            handle.remove()
    samples = inputs.size(0)
    result = []
    for name in dict.fromkeys(order):
        hook, counts = hooks[name], {True: 0.0, False: 0.0}
        for call in hook.inputs:
            spikes = call[0] if len(call) == 1 else call
            count, spiking = macs.single_layer_MACs(spikes, hook.layer)
            counts[spiking] += count
        result.append(NeuroBenchLayerOps(name, counts[False] / samples, counts[True] / samples))
    return result
