"""Export for deployment: ONNX (onnxruntime and friends) and NIR (neuromorphic toolchains).

Both start from a copy of the model in eval mode with every BatchNorm folded into the conv or linear layer
before it. For ONNX, :func:`inference_model` also replaces every neuron by its ``inference_module()``, plain
tensor operations over ``T`` unrolled steps (the kernels' custom ops mean nothing outside PyTorch); NIR writes
each neuron from its ``lif_constants()`` (see ``spikformer.neurons.SpikingNeuron``).

- :func:`export_onnx` writes a graph taking ``[B, C, H, W]`` images (or ``[B, T, 2, H, W]`` event frames for
  2-channel models) and returning ``[B, classes]`` logits, with a dynamic batch dimension.
- :func:`export_nir` writes what NIR can express: convolutions (linear layers become 1x1 convolutions on the
  token map), LIF populations, residual sums (NIR adds the edges that meet at a node), the stem's max-pools
  over spikes (a box-sum convolution and a LIF that fires on any spike in the window), average pooling and
  the affine head. NIR has no product of two spike tensors, so the SSA's ``Q K^T V`` cannot be written; the
  export names it in its error, and ``partial=True`` writes the graph up to it instead.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import SpikformerError
from .layers import LinearBNLIF, SpikformerBlock, SpikingConvolutionalStem, SpikingConvStage
from .neurons import LIFParams, SpikingNeuron


class ExportError(SpikformerError):
    """The model (or part of it) cannot be written in the requested format."""


# --- the inference model -----------------------------------------------------------------------------


def folded_model(model: nn.Module) -> nn.Module:
    """A float32 CPU copy of ``model`` in eval mode with every BatchNorm folded (``model.fuse()``)."""
    model = copy.deepcopy(model).cpu().float()
    if hasattr(model, "fuse"):
        model.fuse()
    non_finite = [name for name, tensor in (*model.named_parameters(), *model.named_buffers())
                  if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if non_finite:
        shown = ", ".join(non_finite[:4]) + (f", ... ({len(non_finite)} in all)" if len(non_finite) > 4 else "")
        raise ExportError(f"non-finite values (NaN or infinite) in {shown}: an exported graph would compute NaN; "
                          f"export weights saved before the run diverged")
    return model.eval()


def inference_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for export: eval mode, BatchNorms folded, every neuron its ``inference_module()``."""
    model = folded_model(model)
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, SpikingNeuron):
                try:
                    setattr(module, child_name, child.inference_module())
                except NotImplementedError as error:
                    raise ExportError(f"{error}; give the neuron an inference_module() to export it") from None
    return model


def example_input(model: nn.Module, batch: int = 1, frames: bool | None = None) -> torch.Tensor:
    """A random input of the shape the model takes: images, or event frames for 2-channel models."""
    frames = model.in_chans == 2 if frames is None else frames
    size = (model.in_chans, model.img_size, model.img_size)
    return torch.rand(batch, model.T, *size) if frames else torch.randn(batch, *size)


# --- ONNX --------------------------------------------------------------------------------------------


def export_onnx(model: nn.Module, path: str | Path, frames: bool | None = None, opset: int | None = None
                ) -> Path:
    """Write ``model`` as an ONNX graph (BN folded, T unrolled) with a dynamic batch dimension.

    The input is ``images [B, C, H, W]``, or ``frames [B, T, C, H, W]`` when ``frames`` (default: for
    2-channel event models); the output is ``logits [B, classes]``.
    """
    try:
        import onnxscript  # noqa: F401  (the exporter needs it; fail with the fix, not deep inside)
    except ImportError:
        raise ExportError("ONNX export needs the 'onnx' and 'onnxscript' packages: "
                          "pip install 'spikformer[export]'") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = inference_model(model)
    example = example_input(net, batch=2, frames=frames)
    name = "frames" if example.ndim == 5 else "images"
    batch = torch.export.Dim("batch", min=1, max=65536)
    large = sum(p.numel() * p.element_size() for p in net.parameters()) > 1_800_000_000  # ONNX's 2 GB limit
    program = torch.onnx.export(net, (example,), dynamo=True, input_names=[name], output_names=["logits"],
                                dynamic_shapes=({0: batch},), opset_version=opset, external_data=large,
                                verbose=False)
    program.save(str(path), external_data=large)
    return path


def onnx_max_difference(model: nn.Module, path: str | Path, x: torch.Tensor) -> float:
    """Largest absolute difference between PyTorch's eval logits and onnxruntime's for input ``x``."""
    from .extras import require

    onnxruntime = require("onnxruntime", "checking an ONNX export")

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = copy.deepcopy(model).cpu().float().eval()(x)
    return float((torch.from_numpy(got) - expected).abs().max())


# --- NIR ---------------------------------------------------------------------------------------------


Shape = tuple[int, ...]


# snnTorch's and SpikingJelly's NIR importers both turn nir.LIF's tau back into steps with dt = 1e-4 s: a graph
# written with another dt loads without error and runs with other time constants.
NIR_DT = 1e-4
NIR_DT_CONVENTION = (
    "one model time step lasts dt seconds; a neuron of time constant tau steps is nir.LIF(tau=tau*dt, r=1, "
    "v_leak=v_reset), whose Euler step of length dt is the model's charge V += (X - (V - v_reset)) / tau; feed "
    "the input once per step for T steps (snnTorch's and SpikingJelly's importers assume dt=1e-4)"
)


class _NIRBuilder:
    """Walks a Spikformer and emits NIR nodes until the first part NIR cannot express, noting every such part.

    Tensors are per time step, ``[C, H, W]``; tokens stay a ``[D, H, W]`` map. A "frontier" is the list of
    nodes whose outputs, added together, make the current tensor (NIR sums the edges that meet at a node).
    """

    def __init__(self, dt: float) -> None:
        import nir

        self.nir = nir
        self.dt = dt
        self.nodes: dict[str, Any] = {}
        self.edges: list[tuple[str, str]] = []
        self.unsupported: list[str] = []
        self.result: tuple[list[str], Shape] | None = None  # the frontier that feeds the output node
        self.closing = False  # adding the nodes before the output, after the walk stopped

    def refuse(self, name: str, why: str, frontier: list[str], shape: Shape) -> None:
        if not self.unsupported:
            self.result = (frontier, shape)
        self.unsupported.append(f"{name}: {why}")

    def add(self, name: str, node: Any, frontier: list[str]) -> list[str]:
        if not self.unsupported or self.closing:
            self.nodes[name] = node
            self.edges += [(source, name) for source in frontier]
        return [name]

    def conv(self, name: str, conv: nn.Conv2d, frontier: list[str], shape: Shape) -> tuple[list[str], Shape]:
        import numpy as np

        _, H, W = shape
        bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
        node = self.nir.Conv2d(input_shape=(H, W), weight=conv.weight.detach().numpy(), stride=conv.stride,
                               padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                               bias=bias.detach().numpy().astype(np.float32))
        out_h, out_w = (
            (size + 2 * conv.padding[i] - conv.dilation[i] * (conv.kernel_size[i] - 1) - 1) // conv.stride[i] + 1
            for i, size in enumerate((H, W)))
        return self.add(name, node, frontier), (conv.out_channels, out_h, out_w)

    def pointwise(self, name: str, linear: nn.Linear, frontier: list[str], shape: Shape
                  ) -> tuple[list[str], Shape]:
        # A linear layer applied to every token is a 1x1 convolution of the [D, H, W] token map.
        conv = nn.Conv2d(linear.in_features, linear.out_features, 1, bias=linear.bias is not None)
        with torch.no_grad():
            conv.weight.copy_(linear.weight[:, :, None, None])
            if linear.bias is not None:
                conv.bias.copy_(linear.bias)
        return self.conv(name, conv, frontier, shape)

    def lif(self, name: str, neuron: SpikingNeuron, frontier: list[str], shape: Shape) -> list[str]:
        p = neuron.lif_constants()
        if p is None:
            self.refuse(name, f"the {type(neuron).__name__} neuron has no NIR equivalent (no lif_constants())",
                        frontier, shape)
            return [name]
        return self.lif_node(name, p, frontier, shape)

    def lif_node(self, name: str, p: LIFParams, frontier: list[str], shape: Shape) -> list[str]:
        import numpy as np

        def full(value: float) -> np.ndarray:
            return np.full(shape, value, dtype=np.float32)

        # The Euler step dt of tau_nir dv/dt = (v_leak - v) + R I with tau_nir = tau * dt, R = 1 and
        # v_leak = V_reset is exactly H = V + (X - (V - V_reset)) / tau.
        node = self.nir.LIF(tau=full(p.tau * self.dt), r=full(1.0), v_leak=full(p.v_reset),
                            v_threshold=full(p.v_threshold), v_reset=full(p.v_reset))
        return self.add(name, node, frontier)

    def identity(self, name: str, frontier: list[str], shape: Shape) -> list[str]:
        """A 1x1 identity convolution: one node whose output is the sum of the edges that meet at it."""
        conv = nn.Conv2d(shape[0], shape[0], 1)
        with torch.no_grad():
            conv.weight.copy_(torch.eye(shape[0])[:, :, None, None])
            conv.bias.zero_()
        return self.conv(name, conv, frontier, shape)[0]

    def spike_max_pool(self, name: str, pool: nn.MaxPool2d, frontier: list[str], shape: Shape
                       ) -> tuple[list[str], Shape]:
        """A max-pool of 0/1 spikes is 1 where its window holds a spike: a convolution summing each channel's
        window (zero padding equals max-pool's -inf padding for non-negative inputs), then a LIF of time
        constant 2 steps and threshold 1/4 that fires on any count of 1 or more and keeps no charge (a count
        of 0 leaves it at rest). Plain convolution and LIF nodes, so that every NIR importer runs it."""
        def pair(v: int | tuple[int, ...]) -> tuple[int, ...]:
            return (v, v) if isinstance(v, int) else tuple(v)

        kernel, stride, padding = pair(pool.kernel_size), pair(pool.stride or pool.kernel_size), pair(pool.padding)
        if pool.ceil_mode or pair(pool.dilation) != (1, 1):
            self.refuse(name, "max-pool with ceil_mode or dilation (a window sum covers neither)", frontier, shape)
            return [name], shape
        C = shape[0]
        box = nn.Conv2d(C, C, kernel, stride, padding, bias=False)
        with torch.no_grad():
            box.weight.copy_(torch.eye(C)[:, :, None, None].expand(C, C, *kernel))
        out, shape = self.conv(f"{name}.window_sum", box, frontier, shape)
        any_spike = LIFParams(tau=2.0, v_threshold=0.25, v_reset=0.0)
        return self.lif_node(f"{name}.any_spike", any_spike, out, shape), shape

    def conv_stage(self, name: str, stage: SpikingConvStage, frontier: list[str], shape: Shape
                   ) -> tuple[list[str], Shape]:
        out, shape = self.conv(f"{name}.conv", stage.conv, frontier, shape)
        out = self.lif(f"{name}.lif", stage.lif, out, shape)
        if isinstance(stage.pool, nn.MaxPool2d):  # after the LIF: its input is 0/1 spikes
            out, shape = self.spike_max_pool(f"{name}.pool", stage.pool, out, shape)
        return out, shape

    def linear_unit(self, name: str, unit: LinearBNLIF, frontier: list[str], shape: Shape
                    ) -> tuple[list[str], Shape]:
        out, shape = self.pointwise(f"{name}.linear", unit.linear, frontier, shape)
        return self.lif(f"{name}.lif", unit.lif, out, shape), shape

    def spikformer(self, model: nn.Module) -> None:
        import numpy as np

        shape: Shape = (model.in_chans, model.img_size, model.img_size)
        self.nodes["input"] = self.nir.Input(input_type={"input": np.array(shape)})
        x = ["input"]
        stem = model.patch_embed
        if not isinstance(stem, SpikingConvolutionalStem):
            self.refuse("patch_embed", f"the {type(stem).__name__} stem has no NIR translation", x, shape)
            return
        for i, stage in enumerate(stem.stages):
            x, shape = self.conv_stage(f"patch_embed.stages.{i}", stage, x, shape)
        if stem.rpe is not None:
            rpe, _ = self.conv_stage("patch_embed.rpe", stem.rpe, x, shape)
            x = x + rpe  # x + RPE(x): both edges meet at the next node, which adds them
        for i, block in enumerate(model.blocks):
            if not isinstance(block, SpikformerBlock):
                self.refuse(f"blocks.{i}", f"{type(block).__name__} has no NIR translation", x, shape)
                continue
            self.refuse(f"blocks.{i}.attn", "spiking self-attention multiplies two spike tensors (Q K^T V); "
                        "NIR edges only weight and add", x, shape)
            hidden, hidden_shape = self.linear_unit(f"blocks.{i}.mlp.fc1", block.mlp.fc1, x, shape)
            mlp, _ = self.linear_unit(f"blocks.{i}.mlp.fc2", block.mlp.fc2, hidden, hidden_shape)
            x = x + mlp
        D, H, W = shape
        window = np.array([H, W])
        x = self.add("head.pool", self.nir.AvgPool2d(kernel_size=window, stride=window, padding=np.array([0, 0])),
                     x)  # the mean over tokens
        x = self.add("head.flatten", self.nir.Flatten(input_type={"input": np.array([D, 1, 1])}, start_dim=0), x)
        out_shape: Shape = (D,)
        if isinstance(model.head, nn.Linear):
            head = model.head
            x = self.add("head", self.nir.Affine(weight=head.weight.detach().numpy(),
                                                 bias=head.bias.detach().numpy()), x)
            out_shape = (head.out_features,)
        if not self.unsupported:
            self.result = (x, out_shape)


def export_nir(model: nn.Module, path: str | Path | None = None, partial: bool = False, dt: float = NIR_DT):
    """The NIR graph of ``model`` (BN folded, per time step); written to ``path`` if given.

    NIR cannot express the SSA's spike-by-spike product: without ``partial`` an :class:`ExportError` names every
    such part. With ``partial=True`` the graph holds everything before the first of them and its ``output``
    node emits the tensor there (the stem's tokens as a ``[D, H, W]`` map); ``metadata["truncated_at"]`` names
    that first part. A complete graph's ``output`` emits per-step logits, whose mean over the ``T`` steps is the
    model's output. Exactly one edge enters ``output``.

    One model step lasts ``dt`` seconds (``metadata["dt_convention"]``); the default 1e-4 s is the step that
    snnTorch's and SpikingJelly's importers assume. Each LIF is ``nir.LIF(tau=tau*dt, r=1, v_leak=V_reset,
    v_threshold, v_reset)``, whose Euler step of length ``dt`` is this package's charge equation. NIR fires on
    ``v > v_threshold``, the model on ``>=`` (they differ only where ``v`` equals the threshold exactly).
    Every metadata value is a string, so that ``nir.read`` gives back what was written.
    """
    if not (math.isfinite(dt) and dt > 0):
        raise ExportError(f"dt must be a positive number of seconds per model step, got {dt}")
    try:
        import nir
        import numpy as np
    except ImportError:
        raise ExportError("NIR export needs the 'nir' package: pip install 'spikformer[export]'") from None
    if not dt > 0:
        raise ExportError(f"NIR export needs a time step dt > 0 seconds, got {dt!r}; the default is {NIR_DT}")
    net = folded_model(model)
    builder = _NIRBuilder(dt)
    builder.spikformer(net)
    if builder.unsupported and not partial:
        parts = "\n  ".join(builder.unsupported)
        raise ExportError(f"NIR cannot express these parts of {type(model).__name__}:\n  {parts}\nexport the "
                          "graph up to the first of them with partial=True (CLI: --partial), or use --format onnx")
    assert builder.result is not None
    frontier, shape = builder.result
    if len(frontier) > 1:
        # Importers give an output node one tensor per incoming edge: add them in one node first.
        builder.closing = True
        frontier = builder.identity("output_sum", frontier, shape)
    builder.nodes["output"] = nir.Output(output_type={"output": np.array(shape)})
    builder.edges += [(source, "output") for source in frontier]
    metadata = {"source": "spikformer", "model": type(model).__name__, "dt": repr(float(dt)),
                "dt_convention": NIR_DT_CONVENTION, "T": str(int(net.T))}
    if builder.unsupported:
        metadata["truncated_at"] = builder.unsupported[0].split(":")[0]
        metadata["unsupported"] = "\n".join(builder.unsupported)
    graph = nir.NIRGraph(nodes=builder.nodes, edges=builder.edges, metadata=metadata)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        nir.write(str(path), graph)
    return graph


class NIRNetwork(nn.Module):
    """A NIR graph run by this package's modules: ``[T, B, ...]`` inputs, one per step, to ``[T, B, ...]``.

    Nodes run in the graph's order, each on the sum of the edges that meet at it, over all ``T`` steps at once
    (the graphs are feed-forward): ``Conv2d``, ``Affine`` and ``Linear`` as torch layers, ``LIF`` as
    :class:`spikformer.neurons.LIF`, ``AvgPool2d`` and ``Flatten`` as their torch counterparts.
    """

    def __init__(self, modules: dict[str, nn.Module], order: list[str], sources: dict[str, list[str]],
                 output: str) -> None:
        super().__init__()
        self.layers = nn.ModuleDict({name.replace(".", "/"): module for name, module in modules.items()})
        self.order, self.sources, self.output = order, sources, output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values: dict[str, torch.Tensor] = {}
        for name in self.order:
            inputs = [values[source] for source in self.sources[name]]
            y = x if not inputs else sum(inputs[1:], inputs[0])
            layer = self.layers[key] if (key := name.replace(".", "/")) in self.layers else None
            if isinstance(layer, SpikingNeuron):
                y = layer(y)
            elif layer is not None:
                y = layer(y.flatten(0, 1)).unflatten(0, y.shape[:2])  # per step: time folded into the batch
            values[name] = y
        return values[self.output]


def import_nir(graph: Any, dt: float | None = None) -> NIRNetwork:
    """This package's modules for a NIR graph (a ``nir.NIRGraph`` or a file path) of the nodes NIR export writes.

    ``dt`` (seconds per step) defaults to the file's ``metadata["dt"]``, else 1e-4. A ``nir.LIF`` must be
    uniform over its neurons with ``r = 1`` and ``v_leak = v_reset`` (this package's charge equation); it becomes
    a :class:`~spikformer.neurons.LIF` of ``tau = tau_nir / dt`` steps, which fires on ``v >= v_threshold``.
    Any other node raises :class:`ExportError` naming it.
    """
    from .extras import require
    from .neurons import LIF

    nir = require("nir", "reading a NIR graph")
    import numpy as np

    if not isinstance(graph, nir.NIRGraph):
        graph = nir.read(str(graph))
    dt = float(dt if dt is not None else graph.metadata.get("dt", NIR_DT))

    def uniform(name: str, field: str, value: Any) -> float:
        values = np.unique(np.asarray(value, dtype=np.float64))
        if values.size != 1:
            raise ExportError(f"NIR node {name}: {field} differs between neurons; only uniform LIF layers import")
        return float(values[0])

    def pair(value: Any) -> tuple[int, int]:
        values = np.broadcast_to(np.asarray(value, dtype=np.int64), (2,))
        return int(values[0]), int(values[1])

    modules: dict[str, nn.Module] = {}
    output = None
    for name, node in graph.nodes.items():
        if isinstance(node, nir.Input):
            continue
        if isinstance(node, nir.Output):
            output = name
        elif isinstance(node, nir.Conv2d):
            weight = torch.from_numpy(np.asarray(node.weight, dtype=np.float32))
            padding = node.padding if isinstance(node.padding, str) else pair(node.padding)
            conv = nn.Conv2d(weight.shape[1] * node.groups, weight.shape[0], tuple(weight.shape[2:]),
                             pair(node.stride), padding, pair(node.dilation), node.groups)
            with torch.no_grad():
                conv.weight.copy_(weight)
                conv.bias.copy_(torch.from_numpy(np.asarray(node.bias, dtype=np.float32)))
            modules[name] = conv
        elif isinstance(node, nir.Affine | nir.Linear):
            weight = torch.from_numpy(np.asarray(node.weight, dtype=np.float32))
            bias = isinstance(node, nir.Affine)
            linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias)
            with torch.no_grad():
                linear.weight.copy_(weight)
                if bias:
                    linear.bias.copy_(torch.from_numpy(np.asarray(node.bias, dtype=np.float32)))
            modules[name] = linear
        elif isinstance(node, nir.LIF):
            r, v_leak = uniform(name, "r", node.r), uniform(name, "v_leak", node.v_leak)
            v_reset = uniform(name, "v_reset", node.v_reset)
            if r != 1.0 or v_leak != v_reset:
                raise ExportError(f"NIR node {name}: a LIF with r={r:g}, v_leak={v_leak:g}, v_reset={v_reset:g}; "
                                  "this package's LIF is r=1, v_leak=v_reset")
            # tau is stored in float32: rounding tau / dt to float32 gives back the model's steps (2e-4 -> 2.0)
            tau = float(np.float32(uniform(name, "tau", node.tau) / dt))
            modules[name] = LIF(tau=tau,
                                v_threshold=uniform(name, "v_threshold", node.v_threshold), v_reset=v_reset)
        elif isinstance(node, nir.AvgPool2d):
            modules[name] = nn.AvgPool2d(pair(node.kernel_size), pair(node.stride), pair(node.padding))
        elif isinstance(node, nir.Flatten):
            end = node.end_dim + 1 if node.end_dim >= 0 else node.end_dim  # NIR counts dims without the batch
            modules[name] = nn.Flatten(node.start_dim + 1, end)
        else:
            raise ExportError(f"NIR node {name} is a {type(node).__name__}, which this package does not import; "
                              "it reads Conv2d, Affine, Linear, LIF, AvgPool2d and Flatten")
    if output is None:
        raise ExportError("the NIR graph has no Output node")
    sources = {name: [s for s, d in graph.edges if d == name] for name in graph.nodes}
    order: list[str] = []
    while len(order) < len(graph.nodes):
        ready = [n for n in graph.nodes if n not in order and all(s in order for s in sources[n])]
        if not ready:
            raise ExportError("the NIR graph has a cycle; only feed-forward graphs import")
        order += ready
    return NIRNetwork(modules, order, sources, output)
