"""Training memory against T and batch, and what 1-bit spike storage and block checkpointing cost in time.

Usage: python benchmarks/bench_memory.py [--model spikformer_cifar_4_384] [--T 1 4 8 16] [--batch 8 32]
       [--amp off|bf16] [--time-batch 32] [--rounds 3] [--no-record]

Memory: each configuration runs two training steps (forward, cross-entropy, backward, AdamW) in a fresh
subprocess; "growth" is the resident-set high-water mark (``ru_maxrss``) over the resident set just before
the first step: activations, gradients and optimizer state (so "per image" also carries the fixed
parameter-sized part, which batch 8 shows most). Paths, on the same weights:

- ``plain``: the model with 1-bit spike storage turned off (``model.pack_saved_spikes = False``): the step
  as it was before ``spikformer.fast.memory``;
- ``packed``: the default: spike tensors saved for backward stored at 1 bit each;
- ``packed+ckpt``: also ``model.set_grad_checkpointing(True)`` (``train.checkpointing=true``);
- ``reference`` (T=4 and the time batch only): the original code's way of computing the model
  (``bench_model.py``'s reference path: SpikingJelly LIF, layout copies around every BatchNorm).

Time: the three paths take turns step by step in one process at T=4 and ``--time-batch``, and each keeps its
median, so that a busy neighbour slows all of them alike.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time

import torch
import torch.nn.functional as F
from benchutil import markdown_table, record, run_worker

from spikformer import create_model

PATHS = ("plain", "packed", "packed+ckpt")


def build(path: str, model_name: str, T: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """``(module to run, model whose parameters train)`` for one path."""
    torch.manual_seed(0)
    model = create_model(model_name, T=T).train()
    model.pack_saved_spikes = path != "plain"
    model.set_grad_checkpointing(path == "packed+ckpt")
    if path == "reference":
        from bench_model import RefSpikformer

        return RefSpikformer(model, "torch").train(), model
    return model, model


def make_step(net: torch.nn.Module, model: torch.nn.Module, batch: int, amp: bool):
    x = torch.randn(batch, model.in_chans, model.img_size, model.img_size)
    y = torch.randint(0, model.num_classes, (batch,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_worker(cfg: dict) -> dict:
    net, model = build(cfg["path"], cfg["model"], cfg["T"])
    step = make_step(net, model, cfg["batch"], cfg["amp"] == "bf16")
    baseline = current_rss()
    for _ in range(2):
        step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak": peak, "growth": peak - baseline}


def run_memory(cfg: dict) -> dict:
    return run_worker(__file__, cfg)


def time_paths(model_name: str, batch: int, amp: bool, rounds: int) -> dict[str, tuple[float, float]]:
    """Median wall and process-CPU seconds per step of each path."""
    steps = {}
    for path in PATHS:
        net, model = build(path, model_name, 4)
        steps[path] = make_step(net, model, batch, amp)
        steps[path]()  # warm-up
    times: dict[str, list[float]] = {path: [] for path in PATHS}
    cpu: dict[str, list[float]] = {path: [] for path in PATHS}
    for _ in range(rounds):
        for path, step in steps.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            step()
            times[path].append(time.perf_counter() - start)
            cpu[path].append(time.process_time() - cpu_start)
    return {path: (statistics.median(times[path]), statistics.median(cpu[path])) for path in PATHS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="spikformer_cifar_4_384")
    parser.add_argument("--T", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--amp", choices=("off", "bf16"), default="off")
    parser.add_argument("--time-batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="timed steps per path (interleaved)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the timing")
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(memory_worker(json.loads(args.worker))))
        return

    common = {"model": args.model, "amp": args.amp}
    mem: dict[tuple[int, int, str], dict] = {}
    for T in args.T:
        for batch in args.batch:
            paths = list(PATHS) + (["reference"] if T == 4 and batch == args.time_batch else [])
            for path in paths:
                mem[T, batch, path] = run_memory({**common, "T": T, "batch": batch, "path": path})
                print(f"T={T:2d} batch {batch:3d} {path:12s} growth {mem[T, batch, path]['growth'] / 2**30:.2f} GiB",
                      flush=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    times = time_paths(args.model, args.time_batch, args.amp == "bf16", args.rounds)

    def mib_per_image(r: dict, batch: int) -> str:
        return f"{r['growth'] / 2**20 / batch:.1f}"

    rows = []
    for T in args.T:
        for batch in args.batch:
            plain = mem[T, batch, "plain"]
            row = [str(T), str(batch)]
            for path in PATHS:
                r = mem[T, batch, path]
                row.append(f"{r['growth'] / 2**30:.2f} ({mib_per_image(r, batch)})")
            row += [f"{mem[T, batch, p]['growth'] / plain['growth']:.2f}x" for p in PATHS[1:]]
            ref = mem.get((T, batch, "reference"))
            row.append("-" if ref is None else f"{ref['growth'] / 2**30:.2f} ({mib_per_image(ref, batch)})")
            row.append("-" if ref is None else " / ".join(f"{mem[T, batch, p]['growth'] / ref['growth']:.2f}x"
                                                        for p in PATHS))
            rows.append(row)
    header = ["T", "batch", "plain GiB (MiB/image)", "packed GiB (MiB/image)", "packed+ckpt GiB (MiB/image)",
              "packed vs plain", "packed+ckpt vs plain", "reference GiB (MiB/image)",
              "plain / packed / packed+ckpt vs reference"]
    table = markdown_table(header, rows)
    time_table = markdown_table(
        [f"path (T=4, batch {args.time_batch})", "s/step", "time vs plain", "CPU s/step", "CPU time vs plain"],
        [[p, f"{times[p][0]:.3f}", f"{times[p][0] / times['plain'][0]:.2f}x", f"{times[p][1]:.3f}",
          f"{times[p][1] / times['plain'][1]:.2f}x"] for p in PATHS])
    precision = "bfloat16 autocast" if args.amp == "bf16" else "float32"
    notes = [time_table, "",
             f"`{args.model}`, {precision}, eager. Growth: peak resident set over the resident set before the first "
             "of two training steps (activations, gradients, AdamW state), in GiB, and per image in MiB. Times: "
             f"median of {args.rounds} steps per path, the paths taking turns step by step in one process."]
    record(f"Training memory, {args.model}, cpu", "cpu", table, notes, write=not args.no_record)


if __name__ == "__main__":
    main()
