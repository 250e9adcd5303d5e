"""``accelerate(model, device, policy)``: the one call that turns a plain model into a fast one."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..layers import SpikingConvolutionalStem, SpikingConvStage, SpikingSelfAttention
from ..models.spikformer import Spikformer
from .kernels import cpu
from .memory import SpikeMaxPool2d
from .modules import FastSpikformer, FastSpikingConvStage, FastSpikingSelfAttention

# A stem unit recomputes its conv output in the backward pass (instead of storing it) when the conv costs at
# most this many multiply-adds per output element: V1's first two units on CIFAR (3 -> 48 -> 96 channels)
# store 75 MiB at batch 32, T=4, for about 1.5% of the step's arithmetic; the later, wider units would cost
# 6% each.
RECOMPUTED_CONV_MACS = 48 * 9


@dataclass(frozen=True)
class FastPolicy:
    """Which fused ops a model uses. Every one gives the plain model's values (bit for bit where
    docs/performance.md says so); turning one off measures it against PyTorch's own operators."""

    attention_kernel: bool = True  # SSA's products on the CPU kernel where it applies
    pool_kernel: bool = True  # the stem's max-pool on the CPU kernel where it applies
    channels_last: bool = True  # the stem's CPU images channels-last
    recompute_conv: bool = True  # cheap stem convs recomputed in backward (RECOMPUTED_CONV_MACS)
    pack_spikes: bool = True  # spikes saved for backward at 1 bit each, on the CPU
    pack_spikes_off_cpu: bool = False  # also on a GPU, at one host read (a synchronisation) per saved tensor

    @classmethod
    def off(cls) -> FastPolicy:
        """Every switch off: the fast modules compute exactly as the plain ones."""
        return cls(**{f.name: False for f in dataclasses.fields(cls)})


_TWINS: dict[type[nn.Module], type[nn.Module]] = {
    Spikformer: FastSpikformer,
    SpikingSelfAttention: FastSpikingSelfAttention,
    SpikingConvStage: FastSpikingConvStage,
    nn.MaxPool2d: SpikeMaxPool2d,
}


def accelerate(
    model: nn.Module, device: torch.device | str | None = None, policy: FastPolicy | None = None
) -> nn.Module:
    """``model`` (moved to ``device`` when given) with every plain module that has a fast twin swapped for it,
    switched by ``policy`` (default: everything on). Returns the same object; calling it again re-applies a
    policy. Modules of other classes (a user's subclass included) are left as they are."""
    policy = policy or FastPolicy()
    if device is not None:
        model = model.to(device)
    # The relative position embedding is a stem unit too, but a wide one: never recomputed.
    embeddings = {id(m.rpe) for m in model.modules() if isinstance(m, SpikingConvolutionalStem)}
    for module in model.modules():
        twin = _TWINS.get(type(module))
        if twin is not None:
            module.__class__ = twin
        if isinstance(module, FastSpikformer):
            module.pack_saved_spikes = policy.pack_spikes
            module.pack_saved_spikes_off_cpu = policy.pack_spikes_off_cpu
        elif isinstance(module, FastSpikingSelfAttention):
            module.attention_kernel = policy.attention_kernel
        elif isinstance(module, FastSpikingConvStage):
            module.channels_last = policy.channels_last
            kernel_size = module.conv.kernel_size[0] * module.conv.kernel_size[1]
            module.recompute_conv = (
                policy.recompute_conv
                and id(module) not in embeddings
                and module.conv.in_channels * kernel_size <= RECOMPUTED_CONV_MACS
            )
        elif isinstance(module, SpikeMaxPool2d):
            module.use_kernel = policy.pool_kernel
    return model


def status() -> dict[str, Any]:
    """The fast path's state on this machine: whether the CPU kernels built (and if not, why), for which
    target and from which cache; whether Triton runs the LIF on CUDA."""
    from .kernels import triton_lif

    return {"cpu_kernels": cpu.build_status(), "triton": triton_lif.available(torch.float32)}
