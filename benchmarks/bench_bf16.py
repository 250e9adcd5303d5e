"""bfloat16 training and inference against the bfloat16 floor, step by step in one process.

Usage: python benchmarks/bench_bf16.py [--model spikformer_cifar_4_384] [--train-batch 32] [--infer-batch 64]
       [--rounds 5] [--threads N] [--amp bf16|off] [--glibc-defaults] [--no-record]

``--amp off`` runs every configuration, the floor included, in float32 instead: what an AVX2-only machine
runs (``amp=auto`` keeps float32 there), and with the environment of docs/performance.md ("AVX2") this
machine runs as one.

The floor is ``bench_model.py``'s: the same model's convolutions and matrix products alone (forward, and
backward to inputs and weights for training), here on bfloat16 spike inputs under bfloat16 autocast. Every
round runs one step of each configuration in turn, so a busy neighbour on a shared machine slows them alike;
the table gives each configuration's median step and, for the ratio to the floor, the median and the range of
the per-round ratios (how stable it is). It also gives the process's CPU time per step (all threads): on a
machine shared with other jobs wall times swing several-fold from round to round while CPU times do not, so
with ``--threads 1`` the CPU-time ratio is the steadier measure of the same thing.

- ``ours``: the training step as ``spikformer train train.amp=bf16`` runs it (autocast, 1-bit spike storage,
  AdamW ``fused=True``);
- ``ours, spikes unpacked``: the same with ``model.pack_saved_spikes = False`` (what the 1-bit storage costs);
- ``ours, PyTorch's SSA products and max-pool``: the same with the C kernels for the attention products and
  the stem's max-pool turned off (``FastPolicy(attention_kernel=False, pool_kernel=False)``), i.e. the step
  before those kernels;
- inference: ``ours`` (eval, ``inference_mode``) and ``ours, BN folded`` (``model.fuse()``).

The process keeps freed memory as the ``spikformer`` commands do (``spikformer.allocator``); with
``--glibc-defaults`` it runs on glibc's defaults instead, as an imported library does.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from bench_model import Floor
from benchutil import markdown_table, record

from spikformer import create_model
from spikformer.allocator import keep_freed_memory
from spikformer.fast import FastPolicy, accelerate
from spikformer.train.engine import autocast

CPU = torch.device("cpu")


def training_step(model: torch.nn.Module, batch: int, dtype: torch.dtype | None = torch.bfloat16
                  ) -> Callable[[], None]:
    """One training step as ``spikformer train`` runs it, under ``dtype`` autocast (None: float32)."""
    x = torch.randn(batch, model.in_chans, model.img_size, model.img_size)
    y = torch.randint(0, model.num_classes, (batch,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    model.train()

    def step() -> None:
        with autocast(CPU, dtype):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def inference_step(model: torch.nn.Module, batch: int, dtype: torch.dtype | None = torch.bfloat16
                   ) -> Callable[[], None]:
    x = torch.randn(batch, model.in_chans, model.img_size, model.img_size)
    model.eval()

    def step() -> None:
        with torch.inference_mode(), autocast(CPU, dtype):
            model(x)

    return step


def floor_step(model: torch.nn.Module, batch: int, train: bool, dtype: torch.dtype | None = torch.bfloat16
               ) -> Callable[[], None]:
    net = Floor(model, batch, model.img_size, CPU, dtype or torch.float32)
    with autocast(CPU, dtype):
        grads = [torch.randn_like(o) for o in net()]

    def step() -> None:
        if train:
            with autocast(CPU, dtype):
                outs = net()
            torch.autograd.backward(outs, grads)
        else:
            with torch.inference_mode(), autocast(CPU, dtype):
                net.infer()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="spikformer_cifar_4_384")
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--infer-batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--amp", choices=("bf16", "off"), default="bf16", help="off: float32 throughout")
    parser.add_argument("--glibc-defaults", action="store_true", help="leave glibc's malloc as it is")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    kept = False if args.glibc_defaults else keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.amp == "bf16" else None
    torch.manual_seed(0)
    base = create_model(args.model)
    unpacked = copy.deepcopy(base)
    unpacked.pack_saved_spikes = False
    unfused = copy.deepcopy(base)
    accelerate(unfused, policy=FastPolicy(attention_kernel=False, pool_kernel=False))
    configs: dict[tuple[str, str], Callable[[], None]] = {
        ("train", "ours"): training_step(copy.deepcopy(base), args.train_batch, dtype),
        ("train", "ours, spikes unpacked"): training_step(unpacked, args.train_batch, dtype),
        ("train", "ours, PyTorch's SSA products and max-pool"): training_step(unfused, args.train_batch, dtype),
        ("train", "floor"): floor_step(copy.deepcopy(base), args.train_batch, True, dtype),
        ("infer", "ours"): inference_step(copy.deepcopy(base), args.infer_batch, dtype),
        ("infer", "ours, BN folded"): inference_step(copy.deepcopy(base).fuse(), args.infer_batch, dtype),
        ("infer", "floor"): floor_step(copy.deepcopy(base), args.infer_batch, False, dtype),
    }
    for step in configs.values():
        step()  # warm-up: kernel builds, oneDNN primitive caches, AdamW state
    times: dict[tuple[str, str], list[float]] = {key: [] for key in configs}
    cpu: dict[tuple[str, str], list[float]] = {key: [] for key in configs}
    for round_index in range(args.rounds):
        for key, step in configs.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            step()
            times[key].append(time.perf_counter() - start)
            cpu[key].append(time.process_time() - cpu_start)
        print(f"round {round_index + 1}: " + ", ".join(f"{m} {p} {t[-1]:.2f} s" for (m, p), t in times.items()),
              flush=True)
    rows = []
    for (mode, path), t in times.items():
        batch = args.train_batch if mode == "train" else args.infer_batch
        floor = times[mode, "floor"]
        ratios = [a / b for a, b in zip(t, floor)]
        c = cpu[mode, path]
        cpu_ratios = [a / b for a, b in zip(c, cpu[mode, "floor"])]
        rows.append([mode, path, str(batch), f"{statistics.median(t):.3f}", f"{batch / statistics.median(t):.1f}",
                     f"{statistics.median(ratios):.2f}x", f"{min(ratios):.2f}-{max(ratios):.2f}x",
                     f"{statistics.median(c):.3f}", f"{statistics.median(cpu_ratios):.2f}x",
                     f"{min(cpu_ratios):.2f}-{max(cpu_ratios):.2f}x"])
    header = ["mode", "path", "batch", "s/step (median)", "images/s", "time vs floor (median of rounds)",
              "range over rounds", "CPU s/step", "CPU time vs floor", "range over rounds"]
    table = markdown_table(header, rows)
    precision = "bfloat16 autocast" if dtype else "float32"
    notes = [f"`{args.model}`, T={base.T}, {precision}, eager, {torch.get_num_threads()} threads; "
             f"{args.rounds} rounds after a warm-up, one step of each configuration per round, in turn; "
             f"freed memory {'kept in the process (as the commands do)' if kept else 'returned (glibc defaults)'}."]
    record(f"{precision.split()[0]} against its floor, {args.model}, cpu", "cpu", table, notes,
           write=not args.no_record)


if __name__ == "__main__":
    main()
