"""The fast twins of the model's modules: each computes what its plain class computes, on the fused ops.

A twin is a subclass that adds no parameters or buffers, so :func:`spikformer.fast.accelerate` turns a plain
module into its twin by setting its class: the parameters, buffers, hooks and state-dict keys stay the same
objects, and an optimizer built before or after sees the same tensors. Each twin's switches are instance
attributes that the :class:`~spikformer.fast.FastPolicy` sets.
"""

from __future__ import annotations

import torch
from timm.layers import register_notrace_function, register_notrace_module
from torch import nn
from torch.nn.modules import module as module_hooks

from ..layers import SpikingConvStage, SpikingSelfAttention
from ..models.spikformer import Spikformer
from ..neurons import LIF
from ..neurons.batchnorm import conv_batch_norm_lif
from .attention import fast_spike_products
from .memory import SpikeMaxPool2d, checkpoint_block, spike_packing


class FastSpikingSelfAttention(SpikingSelfAttention):
    """SSA whose spike products run on :func:`~spikformer.fast.attention.fast_spike_products`."""

    attention_kernel: bool = True

    def spike_products(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return fast_spike_products(q, k, v, self.num_heads, self.scale, use_kernel=self.attention_kernel)


class FastSpikingConvStage(SpikingConvStage):
    """A stem unit whose CPU images go channels-last, and which may recompute its conv output in backward.

    Channels-last: oneDNN's convolutions and PyTorch's max-pool run faster on that layout here (about 10% of a
    CIFAR inference step, docs/performance.md), the LIF kernels read it in place, and the stem's tokens come
    out contiguous with no copy. Values do not depend on the layout beyond the convolution's summation order.
    ``recompute_conv``: in training, the conv output is recomputed in the backward pass from the input instead
    of being stored (:func:`~spikformer.neurons.batchnorm.conv_batch_norm_lif`).
    """

    channels_last: bool = True
    recompute_conv: bool = False

    def convolve(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.convolve_input(x))

    def convolve_input(self, x: torch.Tensor) -> torch.Tensor:
        """``[T, B, C, H, W] -> [T*B, C, H, W]`` in the layout the conv reads."""
        x = x.flatten(0, 1)
        if x.device.type == "cpu" and self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if (
            mask is None
            and self.recompute_conv
            and self.training
            and type(self.lif) is LIF
            and _unwatched(self.conv, self.bn, self.lif)
        ):
            # This calls neither the conv nor the LIF module, so it is skipped while a hook watches either.
            T, B = x.shape[:2]
            y = conv_batch_norm_lif(self.convolve_input(x), self.conv, self.bn, self.lif.params, T, self.lif.backend)
            return self.pool(y.flatten(0, 1)).unflatten(0, (T, B))
        return super().forward(x, mask)


# torch.fx (timm's fx feature extraction) treats a leaf class by its exact type: the twins are leaves as their
# plain classes are (spikformer.models.spikformer), since each branches on its input's device, dtype or layout.
for _twin in (FastSpikingConvStage, SpikeMaxPool2d):
    register_notrace_module(_twin)
register_notrace_function(fast_spike_products)


def _unwatched(*modules: nn.Module) -> bool:
    """Whether no forward hook (of these modules, or global) would miss a call these modules do not get."""
    if module_hooks._global_forward_hooks or module_hooks._global_forward_pre_hooks:
        return False
    return not any(m._forward_hooks or m._forward_pre_hooks for m in modules)


class FastSpikformer(Spikformer):
    """Spikformer whose training forward stores saved spikes at 1 bit each (``pack_saved_spikes``) and whose
    checkpointed blocks keep their input as int8 (:mod:`spikformer.fast.memory`)."""

    pack_saved_spikes: bool = True
    pack_saved_spikes_off_cpu: bool = False

    def packs_saved_spikes(self, device: torch.device) -> bool:
        """Whether a forward on ``device`` stores its saved spikes at 1 bit each. Off the CPU, telling a 0/1
        tensor from another takes one host read per saved tensor (hundreds per step, each a synchronisation
        of the GPU), so there only when ``pack_saved_spikes_off_cpu`` asks for the memory at that price."""
        return (self.training and self.pack_saved_spikes
                and (device.type == "cpu" or self.pack_saved_spikes_off_cpu))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.fx.Proxy):  # torch.fx traces the computation; packing is a runtime choice
            return super().forward_features(x)
        with spike_packing(self.packs_saved_spikes(x.device)):
            return super().forward_features(x)

    def checkpoint_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return checkpoint_block(block, x)
