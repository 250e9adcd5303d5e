"""Whole-model training step, inference throughput and peak memory: our fast path against the reference path
(the original code's way of computing the same model) and against the conv/matmul floor.

Usage: python benchmarks/bench_model.py [--model spikformer_cifar_4_384] [--device cpu|cuda]
       [--train-batch 8] [--infer-batch 16] [--repeats 3] [--amp bf16] [--compile] [--no-record]

Configurations, each measured in a fresh subprocess (so that peak memory is its own):
- ``ours``: the model as this package builds it (fused LIF kernels, BatchNorm->LIF recompute); for
  inference also ``ours, BN folded`` (``model.fuse()``);
- ``reference``: the same weights computed the way the original research code does: SpikingJelly's
  ``MultiStepLIFNode`` (torch backend on CPU, cupy on CUDA when installed) and the original layout juggling:
  Linear on ``[T*B, N, C]``, BatchNorm1d on a transposed view, transposed back, ``reshape``d and
  ``.contiguous()`` before every LIF, heads split by ``permute().contiguous()``, ``(Q K^T) V``;
- ``floor``: only the model's convolutions and matrix products on inputs of the right shapes (forward, and
  backward to inputs and weights for training): no LIF, no BatchNorm, no optimizer.

A training step is forward + cross-entropy + backward + AdamW step (``fused=True``; the floor: forward +
backward only). With ``--rounds N`` the whole plan runs N times, configurations taking turns, and each
configuration keeps its fastest round (a shared machine's neighbours slow some rounds down).
"CPU s/step" is the process's CPU time per step (all threads), a check on wall times taken beside busy
neighbours. Peak memory on CPU is the process's resident-set high-water mark (``ru_maxrss``), reported whole and as
the growth over the resident set just before the first step (activations, gradients, optimizer state); on
CUDA it is ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import torch
import torch.nn.functional as F
from benchutil import markdown_table, record, run_worker, sync
from torch import nn

from spikformer import create_model
from spikformer.layers import LinearBNLIF, SpikformerBlock, SpikingConvolutionalStem, SpikingConvStage

# --- the reference path ----------------------------------------------------------------------------


def sj_lif(v_threshold: float, backend: str) -> nn.Module:
    try:
        from spikingjelly.clock_driven import neuron
    except ImportError:  # SpikingJelly 2.x: the same neuron, activation_based's multi-step LIFNode (which picks
        from spikingjelly.activation_based import neuron  # its kernels itself: no backend argument)

        return neuron.LIFNode(tau=2.0, v_threshold=v_threshold, detach_reset=True, step_mode="m")
    return neuron.MultiStepLIFNode(tau=2.0, v_threshold=v_threshold, detach_reset=True, backend=backend)


class RefConvStage(nn.Module):
    """Conv and BN on ``[T*B, C, H, W]``, reshaped to ``[T, B, ...]`` and made contiguous for the LIF,
    flattened and made contiguous again for the pool."""

    def __init__(self, stage: SpikingConvStage, backend: str) -> None:
        super().__init__()
        self.conv, self.bn, self.pool = stage.conv, stage.bn, stage.pool
        if isinstance(stage.pool, nn.MaxPool2d):  # the built-in pool, which stores int64 indices, as the original
            self.pool = nn.MaxPool2d(stage.pool.kernel_size, stage.pool.stride, stage.pool.padding)
        self.lif = sj_lif(1.0, backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B = x.shape[:2]
        y = self.bn(self.conv(x.flatten(0, 1)))
        y = self.lif(y.reshape(T, B, *y.shape[1:]).contiguous())
        y = self.pool(y.flatten(0, 1).contiguous())
        return y.reshape(T, B, *y.shape[1:]).contiguous()


class RefSPS(nn.Module):
    def __init__(self, sps: SpikingConvolutionalStem, backend: str) -> None:
        super().__init__()
        self.stages = nn.ModuleList(RefConvStage(s, backend) for s in sps.stages)
        self.rpe = RefConvStage(sps.rpe, backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        x_feat = x.contiguous()
        x = self.rpe(x) + x_feat
        return x.flatten(-2).transpose(-1, -2)  # [T, B, N, D], a strided view as in the original


class RefLinearBNLIF(nn.Module):
    """Linear on ``[T*B, N, C]``, BatchNorm1d on the ``[T*B, C, N]`` transpose, back, reshape, contiguous, LIF."""

    def __init__(self, unit: LinearBNLIF, backend: str, v_threshold: float = 1.0) -> None:
        super().__init__()
        self.linear, self.bn = unit.linear, unit.bn
        self.lif = sj_lif(v_threshold, backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B, N, _ = x.shape
        y = self.linear(x.flatten(0, 1))
        y = self.bn(y.transpose(-1, -2)).transpose(-1, -2).reshape(T, B, N, -1).contiguous()
        return self.lif(y)


class RefBlock(nn.Module):
    def __init__(self, block: SpikformerBlock, backend: str) -> None:
        super().__init__()
        attn = block.attn
        self.heads, self.scale = attn.num_heads, attn.scale
        self.q, self.k, self.v = (RefLinearBNLIF(u, backend) for u in (attn.q, attn.k, attn.v))
        self.attn_lif = sj_lif(attn.attn_lif.v_threshold, backend)
        self.proj = RefLinearBNLIF(attn.proj, backend)
        self.fc1 = RefLinearBNLIF(block.mlp.fc1, backend)
        self.fc2 = RefLinearBNLIF(block.mlp.fc2, backend)

    def heads_first(self, x: torch.Tensor) -> torch.Tensor:
        T, B, N, C = x.shape
        return x.reshape(T, B, N, self.heads, C // self.heads).permute(0, 1, 3, 2, 4).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B, N, C = x.shape
        q, k, v = (self.heads_first(f(x)) for f in (self.q, self.k, self.v))
        attn = (q @ k.transpose(-2, -1)) @ v * self.scale
        attn = self.attn_lif(attn.transpose(2, 3).reshape(T, B, N, C).contiguous())
        x = x + self.proj(attn)
        return x + self.fc2(self.fc1(x))


class RefSpikformer(nn.Module):
    def __init__(self, model: nn.Module, backend: str) -> None:
        super().__init__()
        self.model_T = model.T
        self.patch_embed = RefSPS(model.patch_embed, backend)
        self.blocks = nn.ModuleList(RefBlock(b, backend) for b in model.blocks)
        self.head = model.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            from spikingjelly.clock_driven import functional
        except ImportError:  # SpikingJelly 2.x
            from spikingjelly.activation_based import functional

        functional.reset_net(self)  # the original trainer resets every LIF after each batch
        x = x.unsqueeze(0).repeat(self.model_T, 1, 1, 1, 1)
        x = self.patch_embed(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(2).mean(0))


# --- the floor -------------------------------------------------------------------------------------


class Floor(nn.Module):
    """The model's convs, linears and SSA products, each on a binary input of its real shape and memory
    layout (channels-last where the model's stem runs so)."""

    def __init__(self, model: nn.Module, batch: int, img_size: int, device: torch.device,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.layers: list[tuple[nn.Module, torch.Size, bool]] = []
        self.products: list[torch.Size] = []
        hooks = [m.register_forward_hook(self._record) for m in model.modules()
                 if isinstance(m, nn.Conv2d | nn.Linear)]
        hooks += [block.attn.register_forward_hook(self._record_attention) for block in model.blocks]
        with torch.no_grad():
            model.eval()(torch.randn(batch, model.in_chans, img_size, img_size, device=device))
        for h in hooks:
            h.remove()
        self.model = model
        # Under bfloat16 autocast the model's spikes are bfloat16 already (the first conv's image input is
        # cast), so the floor's inputs are too: the floor is the products alone, not casts of their inputs.
        self.inputs = [self._spikes(shape, device, requires_grad=i > 0, channels_last=nhwc,
                                    dtype=torch.float32 if i == 0 else dtype)
                       for i, (_, shape, nhwc) in enumerate(self.layers)]
        self.qkv = [[self._spikes(shape, device, True, dtype=dtype) for _ in range(3)] for shape in self.products]

    def _record(self, module, inputs, output) -> None:
        x = inputs[0]
        nhwc = x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        self.layers.append((module, x.shape, nhwc))

    def _record_attention(self, module, inputs, output) -> None:
        T, B, N, D = inputs[0].shape
        self.products.append(torch.Size((T, B, module.num_heads, N, D // module.num_heads)))

    @staticmethod
    def _spikes(shape, device, requires_grad: bool, channels_last: bool = False,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
        spikes = (torch.rand(shape, device=device) < 0.2).to(dtype)
        if channels_last:
            spikes = spikes.contiguous(memory_format=torch.channels_last)
        return spikes.requires_grad_(requires_grad)

    @staticmethod
    def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        N, d = q.shape[-2:]
        return q @ (k.transpose(-2, -1) @ v) if N > d else (q @ k.transpose(-2, -1)) @ v

    def forward(self) -> list[torch.Tensor]:
        """Every product, all outputs kept (a training step's backward needs them)."""
        outs = [module(x) for (module, _, _), x in zip(self.layers, self.inputs)]
        return outs + [self._attention(q, k, v) for q, k, v in self.qkv]

    def infer(self) -> None:
        """Every product, each output dropped as soon as it is made, as an inference pass holds one layer's
        output at a time: holding them all (about 2 GiB at batch 64) made the floor take page faults that the
        model's own pass does not, flattering the model by up to 18% under glibc's default allocator."""
        for (module, _, _), x in zip(self.layers, self.inputs):
            module(x)
        for q, k, v in self.qkv:
            self._attention(q, k, v)


# --- one configuration, in its own process -----------------------------------------------------------


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(cfg: dict) -> dict:
    torch.manual_seed(0)
    device = torch.device(cfg["device"])
    model = create_model(cfg["model"]).to(device)
    img, classes = model.img_size, model.num_classes
    batch = cfg["batch"]
    x = torch.randn(batch, model.in_chans, img, img, device=device)
    y = torch.randint(0, classes, (batch,), device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if cfg["amp"] == "bf16" else None
    path, train = cfg["path"], cfg["mode"] == "train"

    if path == "floor":
        net = Floor(model, batch, img, device, torch.bfloat16 if cfg["amp"] == "bf16" else torch.float32)
        with amp or torch.autocast(device.type, enabled=False):
            grads = [torch.randn_like(o) for o in net()]

        def step():
            if not train:  # as the model's inference step runs: no autograd records, one output at a time
                with torch.inference_mode(), amp or torch.autocast(device.type, enabled=False):
                    net.infer()
                return
            with amp or torch.autocast(device.type, enabled=False):
                outs = net()
            torch.autograd.backward(outs, grads)
    else:
        if path == "reference":
            backend = "cupy" if device.type == "cuda" and _has_cupy() else "torch"
            net = RefSpikformer(model, backend)
        else:
            net = model
            if path == "ours-fused":
                model.fuse()
        if cfg["compile"]:
            net = torch.compile(net)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # same optimizer for every path
        model.train(train)

        def step():
            if train:
                with amp or torch.autocast(device.type, enabled=False):
                    loss = F.cross_entropy(net(x), y)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            else:
                with torch.inference_mode(), amp or torch.autocast(device.type, enabled=False):
                    net(x)

    baseline = current_rss() if device.type == "cpu" else 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    step()  # warm-up (and compilation)
    sync(device)
    first = time.perf_counter() - start
    times = []
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_start = usage.ru_utime + usage.ru_stime
    for _ in range(cfg["repeats"]):
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (usage.ru_utime + usage.ru_stime - cpu_start) / cfg["repeats"]
    times.sort()
    if device.type == "cuda":
        peak, growth = torch.cuda.max_memory_allocated(device), None
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        growth = peak - baseline
    return {"time": times[len(times) // 2], "cpu": cpu, "first": first, "peak": peak, "growth": growth}


def _has_cupy() -> bool:
    try:
        import cupy  # noqa: F401
    except ImportError:
        return False
    return True


def run_config(cfg: dict) -> dict:
    return run_worker(__file__, cfg)


def check_reference_path(model_name: str, device: torch.device) -> str:
    """Max logit difference between our path and the reference path on the same weights (eval)."""
    torch.manual_seed(0)
    model = create_model(model_name).to(device).eval()
    ref = RefSpikformer(model, "torch").eval()
    x = torch.randn(2, model.in_chans, model.img_size, model.img_size, device=device)
    with torch.no_grad():
        diff = (model(x) - ref(x)).abs().max().item()
    return f"{diff:.2e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="spikformer_cifar_4_384")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--train-batch", type=int, default=None, help="default: 8 on CPU, 32 on CUDA")
    parser.add_argument("--infer-batch", type=int, default=None, help="default: 16 on CPU, 64 on CUDA")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per configuration and round")
    parser.add_argument("--rounds", type=int, default=2, help="times the whole plan runs (fastest kept)")
    parser.add_argument("--amp", choices=("off", "bf16"), default="off")
    parser.add_argument("--compile", action="store_true", help="torch.compile ours and the reference path")
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    train_batch = args.train_batch or (32 if cuda else 8)
    infer_batch = args.infer_batch or (64 if cuda else 16)
    common = {"model": args.model, "device": args.device, "repeats": args.repeats, "amp": args.amp,
              "compile": args.compile}
    plan = [("train", "ours"), ("train", "reference"), ("train", "floor"),
            ("infer", "ours"), ("infer", "ours-fused"), ("infer", "reference"), ("infer", "floor")]
    results: dict[tuple[str, str], dict] = {}
    for round_index in range(args.rounds):
        for mode, path in plan:
            batch = train_batch if mode == "train" else infer_batch
            r = run_config({**common, "mode": mode, "path": path, "batch": batch})
            print(f"round {round_index + 1}: {mode:5s} {path:10s} {r['time']:.3f} s/step  "
                  f"peak {r['peak'] / 2**30:.2f} GiB", flush=True)
            best = results.get((mode, path))
            if best is None or r["time"] < best["time"]:
                results[mode, path] = {**r, "peak": min(r["peak"], best["peak"]) if best else r["peak"]}
    def gib(v):
        return "-" if v is None else f"{v / 2**30:.2f}"

    rows = []
    for mode, path in plan:
        r = results[mode, path]
        batch = train_batch if mode == "train" else infer_batch
        ref, floor = results[mode, "reference"], results[mode, "floor"]
        rows.append([mode, path, str(batch), f"{r['time']:.3f}", f"{r['cpu']:.2f}", f"{batch / r['time']:.2f}",
                     f"{ref['time'] / r['time']:.2f}x", f"{r['time'] / floor['time']:.2f}x",
                     gib(r["peak"]), gib(r["growth"]),
                     "-" if path == "floor" else f"{r['peak'] / ref['peak']:.2f}x"
                     + ("" if r["growth"] is None else f" ({r['growth'] / ref['growth']:.2f}x)")])
    header = ["mode", "path", "batch", "s/step", "CPU s/step", "images/s", "speed vs reference", "time vs floor",
              "peak GiB", "growth GiB", "peak vs reference (growth)"]
    table = markdown_table(header, rows)
    amp = "bfloat16 autocast" if args.amp == "bf16" else "float32"
    notes = [f"`{args.model}`, T={create_model(args.model).T}, {amp}"
             + (", torch.compile" if args.compile else ", eager")
             + f"; per configuration the median of {args.repeats} steps after one warm-up step, fastest of "
             f"{args.rounds} rounds. Reference-path logits differ from "
             f"ours by at most {check_reference_path(args.model, device)} (same weights, eval, batch 2)."]
    record(f"Whole model, {args.model}, {device.type}", device, table, notes, write=not args.no_record)


if __name__ == "__main__":
    main()
