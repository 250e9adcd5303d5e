"""Everything a GPU run should measure, in one command (under 8 minutes on one H100-class GPU).

Usage: python benchmarks/bench_gpu.py [--rounds 3] [--train-batch 32] [--infer-batch 64] [--no-record]
       python benchmarks/bench_gpu.py --dry-run     # the same logic on the CPU at toy sizes (the tests run it)

1. LIF layers, forward and forward+backward, as ratios in one run: our Triton LIF kernel and our
   BatchNorm->LIF (``batch_norm_lif``, training mode) against SpikingJelly's fastest backend present (cupy,
   else torch) with ``nn.BatchNorm1d`` in front, and against the memory-bandwidth floor (the time to stream
   the bytes a LIF must move: read X and write S forward; read dS and X and write dX backward, timed as
   copies of the same tensor).
2. ``spikformer_8_512`` (224x224, T=4): training (forward, cross-entropy, backward, AdamW ``fused=True``)
   and inference throughput and peak memory (``torch.cuda.max_memory_allocated`` during the step, over what
   was allocated before it), under float16 autocast
   (with loss scaling) and bfloat16 autocast, ours against the reference path (``bench_model.py``: the
   original code's way of computing the same model, SpikingJelly's LIF).
3. The published anchors to compare with.

All configurations of a table take turns in every round; each keeps its median.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from bench_model import RefSpikformer, _has_cupy
from benchutil import forward_and_backward, markdown_table, record, sync
from torch import nn

from spikformer import create_model
from spikformer.neurons import LIFParams, default_backend, lif_multistep
from spikformer.neurons.batchnorm import batch_norm_lif

ANCHORS = (
    "Published anchors: Spikformer-8-512 (T=4), the original code: about 70 images/s of training per V100; "
    "Spike-driven Transformer 8-512: about 133 images/s per A800."
)


def interleaved(fns: dict[str, Callable[[], object]], device: torch.device, rounds: int) -> dict[str, dict]:
    """Median seconds and peak growth in bytes (CUDA) per function, the functions taking turns in every round.

    The growth is the step's own: the allocation high-water mark during the call over what was allocated
    just before it (the other configurations' models and optimizer states stay resident and are not counted).
    """
    for fn in fns.values():
        fn()  # warm-up: Triton and cupy compilation, cuDNN autotuning, optimizer state
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    peaks: dict[str, int] = {name: 0 for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
            if device.type == "cuda":
                peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated(device) - before)
    return {name: {"time": statistics.median(t), "peak": peaks[name]} for name, t in times.items()}


# --- 1. LIF layers ---------------------------------------------------------------------------------


def spikingjelly_lif(device: torch.device) -> tuple[str, Callable[[torch.Tensor], torch.Tensor]] | None:
    try:
        from spikingjelly.clock_driven import neuron
    except ImportError:
        return None
    backend = "cupy" if device.type == "cuda" and _has_cupy() else "torch"
    node = neuron.MultiStepLIFNode(tau=2.0, detach_reset=True, backend=backend).to(device)

    def run(x: torch.Tensor) -> torch.Tensor:
        node.reset()
        return node(x)

    return f"SpikingJelly MultiStepLIFNode, {backend}", run


def lif_rows(shape: tuple[int, ...], device: torch.device, rounds: int) -> list[list[str]]:
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(shape, device=device, generator=gen) * 1.5 + 0.5
    grad = torch.randn(shape, device=device, generator=gen)
    xg = x.clone().requires_grad_()
    norm = nn.BatchNorm1d(shape[-1]).to(device)
    params = LIFParams()
    ours = default_backend(device.type, torch.float32)
    impls: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        f"ours, LIF ({ours})": lambda t: lif_multistep(t, params),
        f"ours, BatchNorm->LIF ({ours})": lambda t: batch_norm_lif(t, norm, params),
    }
    sj = spikingjelly_lif(device)
    if sj is not None:
        name, run = sj
        impls[name] = run
        impls[f"BatchNorm1d + {name}"] = lambda t: run(norm(t.reshape(-1, shape[-1])).view(shape))
    fns: dict[str, Callable[[], object]] = {}
    for name, fn in impls.items():
        fns[name + " fwd"], fns[name + " fwdbwd"] = forward_and_backward(fn, x, xg, grad)
    fns["copy"] = lambda: x.clone()
    r = interleaved(fns, device, rounds)
    copy = r["copy"]["time"]
    floor = (copy, 2.5 * copy)  # forward moves 2 tensors (one copy), forward+backward 5
    rows = []
    for name in impls:
        fwd, fwdbwd = r[name + " fwd"]["time"], r[name + " fwdbwd"]["time"]
        rows.append([f"`{list(shape)}`", name, f"{fwd * 1e3:.3f}", f"{fwdbwd * 1e3:.3f}",
                     f"{fwd / floor[0]:.2f}x", f"{fwdbwd / floor[1]:.2f}x"])
    rows.append([f"`{list(shape)}`", "memory floor (2 / 5 tensor streams)", f"{floor[0] * 1e3:.3f}",
                 f"{floor[1] * 1e3:.3f}", "1.00x", "1.00x"])
    return rows


# --- 2. the whole model ----------------------------------------------------------------------------


def model_fns(model_name: str, model_kwargs: dict, device: torch.device, train_batch: int, infer_batch: int,
              dtype: torch.dtype, label: str) -> dict[str, Callable[[], None]]:
    torch.manual_seed(0)
    model = create_model(model_name, **model_kwargs).to(device)
    ref_model = create_model(model_name, **model_kwargs).to(device)
    ref_model.load_state_dict(model.state_dict())
    backend = "cupy" if device.type == "cuda" and _has_cupy() else "torch"
    paths = {"ours": (model, model), "reference": (RefSpikformer(ref_model, backend), ref_model)}
    size, chans, classes = model.img_size, model.in_chans, model.num_classes
    x_train = torch.randn(train_batch, chans, size, size, device=device)
    y_train = torch.randint(0, classes, (train_batch,), device=device)
    x_infer = torch.randn(infer_batch, chans, size, size, device=device)
    fns: dict[str, Callable[[], None]] = {}
    for path, (net, params_of) in paths.items():
        optimizer = torch.optim.AdamW(params_of.parameters(), lr=1e-4, fused=device.type == "cuda")
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

        def train(net=net, params_of=params_of, optimizer=optimizer, scaler=scaler) -> None:
            params_of.train(), net.train()
            with torch.autocast(device.type, dtype=dtype):
                loss = F.cross_entropy(net(x_train), y_train)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)

        def infer(net=net, params_of=params_of) -> None:
            params_of.eval(), net.eval()
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype):
                net(x_infer)

        fns[f"train|{label}|{path}"] = train
        fns[f"infer|{label}|{path}"] = infer
    return fns


def model_rows(model_name: str, model_kwargs: dict, device: torch.device, train_batch: int, infer_batch: int,
               rounds: int) -> list[list[str]]:
    fns: dict[str, Callable[[], None]] = {}
    for dtype, label in ((torch.float16, "float16"), (torch.bfloat16, "bfloat16")):
        fns.update(model_fns(model_name, model_kwargs, device, train_batch, infer_batch, dtype, label))
    r = interleaved(fns, device, rounds)
    rows = []
    for key, result in r.items():
        mode, label, path = key.split("|")
        batch = train_batch if mode == "train" else infer_batch
        ref = r[f"{mode}|{label}|reference"]
        peak = f"{result['peak'] / 2**30:.2f}" if device.type == "cuda" else "-"
        peak_ratio = f"{result['peak'] / ref['peak']:.2f}x" if device.type == "cuda" and ref["peak"] else "-"
        rows.append([mode, label, path, str(batch), f"{result['time'] * 1e3:.1f}", f"{batch / result['time']:.1f}",
                     f"{ref['time'] / result['time']:.2f}x", peak, peak_ratio])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--infer-batch", type=int, default=64)
    parser.add_argument("--dry-run", action="store_true", help="CPU, toy sizes: check the script, measure nothing")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    if args.dry_run:
        device = torch.device("cpu")
        shapes = [(2, 2, 8, 16)]
        model_name, model_kwargs = "spikformer_8_512", dict(embed_dim=32, depth=1, num_heads=2, img_size=32)
        train_batch = infer_batch = 2
        rounds = 1
    else:
        if not torch.cuda.is_available():
            raise SystemExit("bench_gpu.py needs a CUDA GPU; use --dry-run to check it on the CPU")
        device = torch.device("cuda")
        shapes = [(4, 32, 64, 384), (4, 32, 196, 512)]  # CIFAR 4-384 and ImageNet 8-512 tokens, batch 32
        model_name, model_kwargs = "spikformer_8_512", {}
        train_batch, infer_batch, rounds = args.train_batch, args.infer_batch, args.rounds

    lif = []
    for shape in shapes:
        lif += lif_rows(shape, device, rounds)
    lif_table = markdown_table(["shape [T, B, N, D]", "implementation", "fwd ms", "fwd+bwd ms", "fwd vs floor",
                                "fwd+bwd vs floor"], lif)
    print(lif_table, flush=True)
    model = model_rows(model_name, model_kwargs, device, train_batch, infer_batch, rounds)
    model_table = markdown_table(["mode", "autocast", "path", "batch", "ms/step", "images/s", "speed vs reference",
                                  "peak growth GiB", "growth vs reference"], model)
    notes = ["", model_table, "",
             f"LIF tables: float32, median of {rounds} rounds, implementations taking turns. Model: "
             f"`{model_name}` T=4 at {model_kwargs.get('img_size', 224)} pixels square; median of {rounds} rounds "
             "after a warm-up step, configurations "
             "taking turns; the reference path is bench_model.py's (SpikingJelly LIF: cupy where installed).",
             ANCHORS]
    if args.dry_run or args.no_record:
        print(*notes, sep="\n")
    else:
        record(f"GPU: LIF kernels and {model_name}", device, lif_table, notes)


if __name__ == "__main__":
    main()
