"""Counting the operations of a spiking network: FLOPs (multiply-accumulates) and synaptic operations.

An ``OpCounter`` hooks every ``Conv1d``/``Conv2d``/``Linear`` and the spike-spike matrix products of every
``SpikingSelfAttention`` while it is active, and records, per layer and per sample:

- ``flops``: multiply-accumulates of one application at one time step (BatchNorm is folded into the
  preceding conv/linear, and biases into the neuron's threshold, so neither is counted);
- ``steps``: how many times the layer runs per sample (``T``, or 1 for the classifier head, which runs once
  on the time-averaged features);
- ``firing_rate``: the mean value of the layer's actual input, i.e. spikes per input neuron per time step.
  The residual stream holds small integers (a value of 2 is two spikes that arrived together); because a
  layer is linear, feeding it ``n`` costs the same accumulates as feeding it ``n`` spikes one by one, so the
  mean value is the right rate;
- ``kind``: ``"AC"`` when every input value the layer ever saw is a non-negative integer (spikes or spike
  counts), ``"MAC"`` otherwise (real pixels at the first conv), and always for a layer fed time-averaged
  features (the head).

``sops`` are the accumulates the layer's input actually causes, per sample: every input value times the
number of weights it meets on its way to an output (a count ``n`` counting as ``n`` spikes). For a linear
layer that is ``firing_rate * steps * flops`` (SPEC §3). For a convolution it is counted exactly, as the sum of
the convolution of the input with all-ones weights: a spike on a zero-padded border, or one that a stride
skips over, reaches fewer outputs than the full fan-out ``k^2 C_out`` the rate formula assumes (which
over-counts there by up to 7% on the stem's small feature maps). On the meta device, with no values,
``sops`` fall back to the rate formula.

SSA's products have spikes on both sides, so an accumulate happens only where both operands are non-zero:
their SOPs are the exact number of such coincidences (a count ``n`` counting as ``n`` spikes, as above),
``sum(A @ B)`` for non-negative ``A``, ``B``, and their ``firing_rate`` is that count divided by
``steps * flops`` (for two independent binary operands, the product of their rates). They are counted in the
order the model evaluates them: ``Q (K^T V)`` when ``N > d`` (``N`` tokens, ``d`` channels per head), else
``(Q K^T) V``; ``attention_order`` forces one. With ``qk_pool`` (the DVS128 Gesture variant) the operands are
the max-pooled Q and K the product actually receives, still 0/1 spikes, so the products are counted from the
pooled spikes (the Q and K neurons' own firing rates, recorded elsewhere, stay those of their outputs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..layers import SpikingSelfAttention

ATTENTION_ORDERS = ("as_computed", "qk_first", "kv_first")


@dataclass
class LayerOps:
    """The operations of one layer for one sample (see the module docstring for each field)."""

    name: str
    kind: str  # "MAC" | "AC"
    shape: tuple[int, ...]  # output of one application at one time step, e.g. (C, H, W) or (N, D)
    flops: float  # multiply-accumulates per time step
    steps: int
    firing_rate: float | None  # None for MAC layers (real-valued input)
    accumulates: float | None = None  # counted accumulates per sample; None: from the rate (meta device)

    @property
    def sops(self) -> float:
        if self.kind == "MAC":
            return 0.0
        if self.accumulates is not None:
            return self.accumulates
        return float(self.firing_rate or 0.0) * self.steps * self.flops


class _Tally:
    """Running sums of one layer over every forward pass of the counter."""

    def __init__(self, shape: tuple[int, ...], flops: float, steps: int, spike_valued: bool | None) -> None:
        self.shape, self.flops, self.steps = shape, flops, steps
        self.spike_valued = spike_valued  # None: not known (meta tensors)
        self.input_sum = 0.0  # sum of input values (weight layers) or coincidences (spike-spike products)
        self.input_count = 0.0  # number of input values (weight layers) or multiply pairs (products)
        self.accumulates: float | None = None  # weight layers: input values times the weights each one meets


def _is_spike_valued(x: torch.Tensor) -> bool | None:
    if x.is_meta:
        return None
    return bool(((x >= 0) & (x == torch.floor(x))).all())


class OpCounter:
    """Context manager that counts FLOPs and SOPs of every conv/linear layer and SSA product, per sample.

    ``model`` takes ``[B, C, H, W]`` images or ``[B, T, C, H, W]`` frames when it has a ``time_first`` method
    (a ``Spikformer``); any other module is taken to receive time-first input ``[T, B, ...]``. Layers are
    reported in the order they first ran; ``weight_layers=False`` counts the SSA products alone. Works on the
    meta device (FLOPs only, no firing rates; the first layer is then taken to see pixels, a MAC layer, as in
    the paper).
    """

    def __init__(self, model: nn.Module, attention_order: str = "as_computed", weight_layers: bool = True) -> None:
        if attention_order not in ATTENTION_ORDERS:
            raise ValueError(f"attention_order must be one of {', '.join(ATTENTION_ORDERS)}, "
                             f"got {attention_order!r}")
        self.model = model
        self.attention_order = attention_order
        self.weight_layers = weight_layers  # False: the SSA products only
        self.tallies: dict[str, _Tally] = {}
        self.samples = 0  # samples seen over all forward passes
        self._T = self._B = 0
        self._handles: list = []
        self._qkv: dict[str, dict[str, torch.Tensor]] = {}

    # --- hooks --------------------------------------------------------------------------------------

    def __enter__(self) -> OpCounter:
        self._handles.append(self.model.register_forward_pre_hook(self._on_model_input))
        for name, module in self.model.named_modules():
            if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Linear) and self.weight_layers:
                self._handles.append(module.register_forward_hook(self._weight_layer_hook(name)))
            elif isinstance(module, SpikingSelfAttention):
                for part in ("q", "k", "v"):
                    self._handles.append(getattr(module, part).register_forward_hook(self._keep_hook(name, part)))
                # The products run between V's LIF and the projection: count them there, in execution order.
                self._handles.append(module.proj.register_forward_pre_hook(self._attention_hook(name, module)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._qkv.clear()

    def _on_model_input(self, module: nn.Module, inputs: tuple) -> None:
        x = inputs[0]
        if hasattr(module, "time_first"):
            x = module.time_first(x)
        self._T, self._B = int(x.shape[0]), int(x.shape[1])
        self.samples += self._B

    def _per_step(self, x: torch.Tensor, conv: bool) -> bool:
        """Whether a layer runs at every time step: a conv sees ``[T*B, C, H, W]``, a linear ``[T, B, N, D]``;
        the head sees time-averaged features ``[B, D]``."""
        return conv or (x.ndim >= 3 and tuple(x.shape[:2]) == (self._T, self._B))

    def _weight_layer_hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            x = inputs[0]
            conv = isinstance(module, nn.Conv1d | nn.Conv2d)
            if conv:
                fan_in = module.in_channels // module.groups * math.prod(module.kernel_size)
                out_shape = tuple(output.shape[1:])
            else:
                fan_in = module.in_features
                out_shape = tuple(output.shape[2:] if x.ndim >= 3 else output.shape[1:])
            per_step = self._per_step(x, conv)
            steps = max(1, x.shape[0] // self._B) if conv else (self._T if per_step else 1)
            flops = output.numel() * fan_in / (self._B * steps)
            # Time-averaged features are real numbers even when they happen to be whole: a MAC layer.
            spike_valued = _is_spike_valued(x) if per_step else False
            self._add(name, out_shape, flops, steps, spike_valued, x)
            if not x.is_meta:
                tally = self.tallies[name]
                tally.accumulates = (tally.accumulates or 0.0) + _accumulates(module, x)

        return hook

    def _add(self, name: str, shape: tuple[int, ...], flops: float, steps: int, spike_valued: bool | None,
             x: torch.Tensor | None = None, coincidences: float = 0.0, pairs: float = 0.0) -> None:
        tally = self.tallies.get(name)
        if tally is None:
            tally = self.tallies[name] = _Tally(shape, flops, steps, spike_valued)
        elif (tally.flops, tally.steps) != (flops, steps):
            raise ValueError(f"layer {name} changed size between batches ({tally.flops:g} x {tally.steps} -> "
                             f"{flops:g} x {steps} FLOPs); analyse inputs of one size and one T at a time")
        if spike_valued is not None and tally.spike_valued is not None:
            tally.spike_valued = tally.spike_valued and spike_valued
        if x is not None and not x.is_meta:
            tally.input_sum += float(x.detach().double().sum())
            tally.input_count += x.numel()
        tally.input_sum += coincidences
        tally.input_count += pairs

    def _keep_hook(self, name: str, part: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            self._qkv.setdefault(name, {})[part] = output.detach()

        return hook

    def _attention_hook(self, name: str, module: SpikingSelfAttention):
        def hook(proj: nn.Module, inputs: tuple) -> None:
            parts = self._qkv.pop(name, {})
            if len(parts) < 3:
                return
            # The operands the product receives: Q and K after the variant's token max-pool, if any.
            q, k = module.pool_qk(parts["q"], parts["k"])
            q, k, v = (module.split_heads(t) for t in (q, k, parts["v"]))  # [T, B, h, N, d]
            T, B, h, N, d = q.shape
            kv_first = self.attention_order == "kv_first" or (self.attention_order == "as_computed" and N > d)
            prefix = f"{name}." if name else ""
            if kv_first:
                names = (f"{prefix}kT@v", f"{prefix}q@(kTv)")
                shapes = ((h, d, d), (h, N, d))
                flops = (h * N * d * d, h * N * d * d)  # per sample per step
            else:
                names = (f"{prefix}q@kT", f"{prefix}(qkT)@v")
                shapes = ((h, N, N), (h, N, d))
                flops = (h * N * N * d, h * N * N * d)
            if q.is_meta:
                spiking, counts, pairs = None, (0.0, 0.0), (0.0, 0.0)
            else:
                spiking = all(_is_spike_valued(t) for t in (q, k, v))
                counts = _coincidences(q, k, v, kv_first)
                pairs = tuple(f * T * B for f in flops)
            for i in range(2):
                self._add(names[i], shapes[i], flops[i], T, spiking, coincidences=counts[i], pairs=pairs[i])

        return hook

    # --- results ------------------------------------------------------------------------------------

    @property
    def T(self) -> int:
        """Time steps of the last forward pass."""
        return self._T

    def layers(self) -> list[LayerOps]:
        """Per-sample operations of every layer that ran, in execution order."""
        out = []
        for i, (name, t) in enumerate(self.tallies.items()):
            if t.spike_valued is None:  # shape-only run: the paper's convention (pixels in: the first layer)
                kind = "MAC" if i == 0 else "AC"
            else:
                kind = "AC" if t.spike_valued else "MAC"
            rate = t.input_sum / t.input_count if (kind == "AC" and t.input_count) else None
            accumulates = t.accumulates / self.samples if (t.accumulates is not None and self.samples) else None
            out.append(LayerOps(name, kind, t.shape, t.flops, t.steps, rate, accumulates))
        return out


def _accumulates(layer: nn.Module, x: torch.Tensor) -> float:
    """Every value of ``x`` times the number of weights of ``layer`` it meets, over the whole batch.

    A linear layer: ``sum(x) * out_features``. A convolution: the input summed over each group's channels,
    convolved with an all-ones kernel (the outputs each input position reaches: fewer on a zero-padded border
    or under a stride), summed, times the group's output channels. Other padding modes than zeros wrap or
    mirror the input, so every position meets the full kernel: ``sum(x) * k^2 * out_channels / groups``.
    """
    x = x.detach().double()
    if isinstance(layer, nn.Linear):
        return float(x.sum()) * layer.out_features
    groups, per_group = layer.groups, layer.out_channels // layer.groups
    if layer.padding_mode != "zeros":
        return float(x.sum()) * math.prod(layer.kernel_size) * per_group
    summed = x.unflatten(1, (groups, -1)).sum(2)  # [N, groups, *spatial]
    ones = torch.ones(groups, 1, *layer.kernel_size, dtype=x.dtype, device=x.device)
    convolve = nn.functional.conv1d if isinstance(layer, nn.Conv1d) else nn.functional.conv2d
    reached = convolve(summed, ones, None, layer.stride, layer.padding, layer.dilation, groups)
    return float(reached.sum()) * per_group


def _coincidences(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_first: bool) -> tuple[float, float]:
    """Accumulates of the two SSA products on ``[T, B, h, N, d]`` spikes, exactly, without forming them:
    the first product's count is ``sum(K^T V)`` (or ``sum(Q K^T)``), the second ``sum(Q K^T V)``, the same
    number in either order."""
    q, k, v = q.double(), k.double(), v.double()
    q_cols = q.sum(-2)  # [T, B, h, d]: spikes per channel over the tokens
    if kv_first:
        first = (k.sum(-1) * v.sum(-1)).sum()  # sum(K^T V) = sum_j rowsum(K)_j rowsum(V)_j
    else:
        first = (q_cols * k.sum(-2)).sum()  # sum(Q K^T) = sum_c colsum(Q)_c colsum(K)_c
    # sum(Q K^T V) = sum_j (sum_i (Q K^T)_ij) * (sum_c V_jc) = sum_j (K_j . colsum(Q)) * rowsum(V)_j
    second = ((k @ q_cols.unsqueeze(-1)).squeeze(-1) * v.sum(-1)).sum()
    return float(first), float(second)


def count_operations(model: nn.Module, inputs: torch.Tensor, attention_order: str = "as_computed"
                     ) -> list[LayerOps]:
    """Operations per sample of one forward pass of ``model`` on ``inputs`` (no gradients)."""
    with torch.no_grad(), OpCounter(model, attention_order) as counter:
        model(inputs)
    return counter.layers()
