"""The Spikformer model (V1 and V2 share this class; they differ in the stem) and its input handling."""

from __future__ import annotations

import contextlib
import inspect
from typing import Any

import torch
from timm.layers import register_notrace_function, register_notrace_module
from timm.models._features import feature_take_indices
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from .. import layers
from ..layers import Neuron, SpikformerBlock, build_stem
from ..neurons import NeuronLayer, SpikingNeuron, neuron_layer
from ..neurons.lif import UnrolledLIF

# torch.fx (timm's fx feature extraction, torchvision's create_feature_extractor) traces the model down to these
# units and calls them as they are: each runs the neuron's custom autograd Function (the surrogate gradient,
# which tracing through would lose) or branches on its input's device, shape or dtype.
for _unit in (SpikingNeuron, UnrolledLIF, layers.SpikingConvStage, layers.LinearBNLIF):
    register_notrace_module(_unit)
register_notrace_function(layers.scaled_spike_attention)
register_notrace_function(layers.token_max_pool)


class Spikformer(nn.Module):
    """Spiking Transformer: stem -> ``depth`` SSA blocks -> mean over tokens and time -> Linear head.

    Accepts static images ``[B, C, H, W]`` (repeated over ``T`` steps) or event frames ``[B, T', C, H, W]``
    (run for their own ``T'`` steps). ``H`` and ``W`` may be any multiple of ``patch_size``.

    ``neuron`` is the spiking neuron of every unit, by registered name (``"lif"``, ``"plif"``, see
    ``spikformer.neurons``) or a neuron class, made with ``neuron_options``; ``lif_backend`` is the LIF's
    ``backend`` option, kept as its own argument.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 512,
        depth: int = 8,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        T: int = 4,
        qkv_bias: bool = False,
        attn_scale: float = 0.125,
        drop_path_rate: float = 0.0,
        stem: str = "sps",
        stem_options: dict[str, Any] | None = None,
        lif_backend: str = "auto",
        neuron: Neuron = "lif",
        neuron_options: dict[str, Any] | None = None,
        qk_pool: int = 0,  # > 0: max-pool width over tokens after Q and K (the DVS128 Gesture variant)
    ) -> None:
        super().__init__()
        _check_hyper_parameters(img_size, patch_size, in_chans, num_classes, embed_dim, depth, num_heads,
                                mlp_ratio, T, drop_path_rate)
        self.img_size = img_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.T = T
        self.stem_name = stem
        self.neuron_name = neuron if isinstance(neuron, str) else getattr(neuron, "__name__", repr(neuron))
        make_neuron = _neuron_with_backend(neuron, neuron_options, lif_backend)
        self.patch_embed = build_stem(
            stem, in_chans=in_chans, embed_dim=embed_dim, patch_size=patch_size, neuron=make_neuron,
            **(stem_options or {}),
        )
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear, as in timm
        self.blocks = nn.ModuleList(
            SpikformerBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, attn_scale, rates[i], neuron=make_neuron,
                            qk_pool=qk_pool)
            for i in range(depth)
        )
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.grad_checkpointing = False
        # timm's feature_info: every block's output, a map of embed_dim channels at 1/patch_size resolution.
        self.feature_info = [dict(num_chs=embed_dim, reduction=patch_size, module=f"blocks.{i}") for i in range(depth)]
        self.apply(_init_weights)

    # --- timm's model interface --------------------------------------------------------------------

    def time_first(self, x: torch.Tensor) -> torch.Tensor:
        """Validate the input and return it as ``[T, B, C, H, W]``. Errors name the shape received, as given."""
        return time_first(x, self.T, self.in_chans, self.patch_size, self.img_size)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images or frames -> token features ``[T, B, N, D]`` after the last block."""
        checkpointing = self.grad_checkpointing and self.training and not torch.jit.is_scripting()
        x = self.patch_embed(self.time_first(x))  # [T, B, N, D]
        for block in self.blocks:
            x = self.checkpoint_block(block, x) if checkpointing else block(x)
        return x

    def checkpoint_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``block(x)`` under gradient checkpointing (:func:`recompute_in_backward`)."""
        return recompute_in_backward(block, x)

    def forward_intermediates(
        self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False, stop_early: bool = False,
        output_fmt: str = "NCHW", intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's per-block features. Each block's output ``[T, B, N, D]`` is averaged over the time steps (the
        mean the head takes too) and returned as ``[B, D, H/patch, W/patch]`` (``"NCHW"``) or ``[B, N, D]``
        (``"NLC"``). ``indices``: an int takes the last n blocks, a list those blocks. Returns the features,
        or ``(final tokens [T, B, N, D], features)``. Spikformer has no final norm: ``norm`` changes nothing."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be NCHW or NLC, got {output_fmt!r}")
        take, last = feature_take_indices(len(self.blocks), indices)
        x = self.time_first(x)
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        x = self.patch_embed(x)
        blocks = self.blocks if not stop_early else self.blocks[:last + 1]
        intermediates = []
        for i, block in enumerate(blocks):
            x = block(x)
            if i in take:
                feature = x.mean(0)  # [B, N, D]
                if output_fmt == "NCHW":
                    feature = feature.transpose(1, 2).reshape(feature.shape[0], -1, *grid)
                intermediates.append(feature)
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the blocks after the last one ``indices`` asks for (and the head), for features only."""
        take, last = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:last + 1]
        if prune_head:
            self.reset_classifier(0)
        return take

    # The axis of forward_features' output [T, B, N, D] that holds the features (timm's feature_dim): its
    # features are tokens over time, not a [B, C, H, W] map.
    feature_dim: int = -1

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass instead of storing its activations (timm's switch;
        ``train.checkpointing``): less memory for about one more forward pass of the blocks per step."""
        self.grad_checkpointing = enable

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``[T, B, N, D]`` -> mean over tokens, then over time -> ``[B, D]`` (or logits ``[B, classes]``)."""
        x = x.mean(2).mean(0)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for timm's layer-wise lr decay: the stem, then each block, then (unmatched) the
        head. ``coarse`` is accepted for timm's interface; the groups are the same."""
        return {"stem": r"^patch_embed", "blocks": [(r"^blocks\.(\d+)", None)]}

    def no_weight_decay(self) -> set[str]:
        """Parameter names exempt from weight decay beyond biases and norms (which timm exempts by shape):
        none, as Spikformer has no position or class embeddings."""
        return set()

    # --- inference ------------------------------------------------------------------------------------

    def fuse(self) -> Spikformer:
        """Fold every BatchNorm into the conv or linear layer before it, for inference; returns ``self``.

        Eval outputs equal the unfused model's to float rounding (a membrane potential within rounding of
        the threshold may fire differently). The model is put in eval mode and can no longer be trained.
        """
        self.eval()
        for module in self.modules():
            if module is not self and hasattr(module, "fuse_bn"):
                module.fuse_bn()
        self.bn_folded = True
        return self

    def train(self, mode: bool = True) -> Spikformer:
        if mode and getattr(self, "bn_folded", False):
            raise RuntimeError("this model's BatchNorms are folded into its weights (model.fuse()), so it can "
                               "only run inference; rebuild it or reload the checkpoint to train")
        return super().train(mode)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new head for ``num_classes`` (0: none, ``forward`` returns the pooled features). ``global_pool``:
        the pooling is always the mean over tokens and time steps; only None or "avg" are accepted."""
        if global_pool not in (None, "avg"):
            raise ValueError(f"global_pool={global_pool!r}: Spikformer pools by the mean over tokens and time steps; "
                             f"pass None or 'avg'")
        self.num_classes = num_classes
        if num_classes == 0:
            self.head = nn.Identity()
            return
        like = next(self.parameters(), None)  # the new head goes on the model's device, in its dtype and mode
        where = dict(device=like.device, dtype=like.dtype) if like is not None else {}
        self.head = nn.Linear(self.embed_dim, num_classes, **where).train(self.training)
        _init_weights(self.head)


@register_notrace_function  # branches on the input's shape: one call in a traced graph
def time_first(x: torch.Tensor, T: int, in_chans: int, patch_size: int, img_size: int) -> torch.Tensor:
    """Images ``[B, C, H, W]`` (repeated over ``T`` steps) or event frames ``[B, T', C, H, W]`` as ``[T, B, C, H,
    W]``, after checking them. Errors name the shape received, as given (``img_size`` is the example size)."""
    shape = list(x.shape)
    expected = (f"an image batch [B, {in_chans}, H, W] or event frames [B, T, {in_chans}, H, W] "
                f"with H and W multiples of {patch_size} (e.g. {img_size}x{img_size})")
    if x.ndim not in (4, 5):
        raise ValueError(f"expected {expected}, got a tensor of shape {shape} ({x.ndim} dimensions)")
    B, C, H, W = x.shape[0], *x.shape[-3:]
    steps = T if x.ndim == 4 else x.shape[1]
    if C != in_chans:
        raise ValueError(f"expected {in_chans} input channels, got {C}: the input must be {expected}; "
                         f"received shape {shape}")
    if steps < 1 or B < 1:
        raise ValueError(f"expected at least one time step and one sample: the input must be {expected}; "
                         f"received shape {shape}")
    if H % patch_size or W % patch_size or H == 0 or W == 0:
        raise ValueError(f"input size {H}x{W} is not a positive multiple of the patch size {patch_size}: "
                         f"the input must be {expected}; received shape {shape}. Resize or pad the input")
    if x.ndim == 4:
        x = x.unsqueeze(0).expand(T, *x.shape)  # the same frame at every step
    else:
        x = x.transpose(0, 1)  # event frames [B, T', C, H, W] -> [T', B, C, H, W]
    if not x.is_floating_point():
        x = x.float()
    return x


def recompute_in_backward(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``block(x)``, keeping only ``x`` for backward and recomputing the block there (same gradients).

    The BatchNorm running statistics are restored after the recomputation, so they are updated once per step
    as without it, and the random state is replayed, so drop-path masks are those of the plain step.
    """
    if not torch.is_grad_enabled() or torch.compiler.is_compiling():
        return block(x)
    return checkpoint(block, x, use_reentrant=False,
                      context_fn=lambda: (contextlib.nullcontext(), running_statistics_restored(block)))


@contextlib.contextmanager
def running_statistics_restored(module: nn.Module):
    """Put the BatchNorm running statistics of ``module`` back as they were on entry, on exit."""
    norms = [m for m in module.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    saved = [[b.clone() for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
             for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, buffers in zip(norms, saved):
                for b, value in zip([b for b in (m.running_mean, m.running_var, m.num_batches_tracked)
                                     if b is not None], buffers):
                    b.copy_(value)


def _neuron_with_backend(neuron: Neuron, options: dict[str, Any] | None, lif_backend: str) -> NeuronLayer:
    """The neuron factory of every unit: ``lif_backend`` (when not ``"auto"``) is the neuron's ``backend``."""
    make = neuron_layer(neuron, options)  # an unknown name or option fails here, naming the valid ones
    if lif_backend == "auto":
        return make
    options = dict(options or {})
    if options.get("backend", lif_backend) != lif_backend:
        raise ValueError(f"lif_backend={lif_backend!r} and neuron_options backend={options['backend']!r} "
                         f"disagree; set one of them")
    if "backend" not in inspect.signature(make).parameters:
        raise ValueError(f"lif_backend={lif_backend!r} is the LIF's backend, but the {neuron!r} neuron has "
                         f"no backend option; leave lif_backend at 'auto'")
    return neuron_layer(neuron, {**options, "backend": lif_backend})


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def _check_hyper_parameters(img_size, patch_size, in_chans, num_classes, embed_dim, depth, num_heads,
                            mlp_ratio, T, drop_path_rate) -> None:
    problems = []
    for name, value, low in (("img_size", img_size, 1), ("patch_size", patch_size, 1),
                             ("in_chans", in_chans, 1), ("num_classes", num_classes, 0),
                             ("embed_dim", embed_dim, 8), ("depth", depth, 0), ("num_heads", num_heads, 1),
                             ("T", T, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            problems.append(f"{name} must be an integer >= {low} (got {value!r})")
    if not problems:
        if img_size % patch_size:
            problems.append(f"img_size {img_size} is not divisible by patch_size {patch_size}")
        if embed_dim % num_heads:
            problems.append(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
    if not (isinstance(mlp_ratio, int | float) and mlp_ratio > 0):
        problems.append(f"mlp_ratio must be > 0 (got {mlp_ratio!r})")
    if not (isinstance(drop_path_rate, int | float) and 0.0 <= drop_path_rate < 1.0):
        problems.append(f"drop_path_rate must be in [0, 1) (got {drop_path_rate!r})")
    if problems:
        raise ValueError("invalid Spikformer configuration: " + "; ".join(problems))
