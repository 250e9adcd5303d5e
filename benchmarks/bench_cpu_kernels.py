"""The CPU kernels for max-pooling and the attention products against PyTorch, and what keeping freed memory
does to a step.

Usage: python benchmarks/bench_cpu_kernels.py [--model spikformer_cifar_4_384] [--batch 32] [--repeats 7]
       [--steps 30 (0: the kernels only)] [--threads 1] [--no-record]

Kernels (one process, the two paths taking turns, median of ``--repeats``), on the model's own shapes at
T=4 and ``--batch``, bfloat16 and float32 spike maps:

- the stem's max-pool of its biggest map: ``memory.SpikeMaxPool2d`` with the C kernel against the same
  module with ``use_kernel = False`` (PyTorch's max-pool, the argmax found again in the backward pass);
- the attention products of one block: ``fast.attention.fast_spike_products`` with and without the C kernel
  (bfloat16 under autocast, as training runs it).

Allocator (``--steps`` bfloat16 training steps in a fresh process each): glibc's defaults against
``spikformer.allocator.keep_freed_memory()`` (what the commands call): page faults and CPU time per step over
the last ten steps, and the resident set at the end and at its peak. ``--steps 0`` skips it (on a machine
run as an AVX2 one, docs/performance.md "AVX2", bfloat16 steps are emulated and take minutes each).
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import sys
import time

import torch
from bench_bf16 import training_step
from benchutil import forward_and_backward, markdown_table, record, run_worker, time_interleaved

from spikformer import allocator, create_model
from spikformer.fast.attention import fast_spike_products
from spikformer.fast.memory import SpikeMaxPool2d
from spikformer.layers import SpikingSelfAttention


def shapes(model: torch.nn.Module, batch: int) -> tuple[torch.Size, torch.Size]:
    """The biggest input of a stem max-pool and the Q/K/V shape of a block, from one forward pass."""
    pools: list[torch.Size] = []
    qkv: list[torch.Size] = []
    hooks = [m.register_forward_hook(lambda m, a, o: pools.append(a[0].shape))
             for m in model.modules() if isinstance(m, SpikeMaxPool2d)]
    hooks += [m.q.register_forward_hook(lambda m, a, o: qkv.append(o.shape))
              for m in model.modules() if isinstance(m, SpikingSelfAttention)]
    with torch.no_grad():
        model.eval()(torch.randn(batch, model.in_chans, model.img_size, model.img_size))
    for h in hooks:
        h.remove()
    return max(pools, key=lambda s: s.numel()), qkv[0]


def spike_map(shape: torch.Size, dtype: torch.dtype, channels_last: bool = False) -> torch.Tensor:
    x = (torch.rand(shape) < 0.2).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def attention_step(qkv: list[torch.Tensor], grad: torch.Tensor, heads: int, amp: bool, use_kernel: bool,
                   backward: bool):
    """One call of the attention products (bfloat16 under autocast, as training runs them), with or without
    its backward pass."""
    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp), torch.set_grad_enabled(backward):
            out = fast_spike_products(*qkv, heads, 0.125, use_kernel=use_kernel)
        if backward:
            out.backward(grad)
    return step


def kernel_rows(model: torch.nn.Module, batch: int, repeats: int) -> list[list[str]]:
    pool_shape, qkv_shape = shapes(model, batch)
    heads = next(m for m in model.modules() if isinstance(m, SpikingSelfAttention)).num_heads
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        amp = dtype == torch.bfloat16
        x = spike_map(pool_shape, dtype, channels_last=True)
        ours, theirs = SpikeMaxPool2d(3, 2, 1), SpikeMaxPool2d(3, 2, 1)
        theirs.use_kernel = False
        grad = torch.randn_like(ours(x))
        x_grad = x.clone().requires_grad_()
        fns = {}
        for name, module in (("kernel", ours), ("PyTorch", theirs)):
            fns[f"pool fwd {name}"], fns[f"pool fwd+bwd {name}"] = forward_and_backward(module, x, x_grad, grad)
        qkv = [spike_map(qkv_shape, dtype).requires_grad_() for _ in range(3)]
        attn_grad = torch.randn(qkv_shape)
        for name, use in (("kernel", True), ("PyTorch", False)):
            for mode, backward in (("fwd", False), ("fwd+bwd", True)):
                fns[f"attn {mode} {name}"] = attention_step(qkv, attn_grad, heads, amp, use, backward)
        times = time_interleaved(fns, "cpu", repeats)
        for op, shape in (("pool", pool_shape), ("attn", qkv_shape)):
            for mode in ("fwd", "fwd+bwd"):
                ours_t, theirs_t = times[f"{op} {mode} kernel"], times[f"{op} {mode} PyTorch"]
                label = "max-pool 3x3/2" if op == "pool" else f"SSA products, {heads} heads"
                rows.append([label, str(list(shape)), str(dtype).removeprefix("torch."), mode,
                             f"{ours_t * 1e3:.1f}", f"{theirs_t * 1e3:.1f}", f"{theirs_t / ours_t:.2f}x"])
    return rows


def worker(cfg: dict) -> dict:
    kept = allocator.keep_freed_memory() if cfg["keep"] else False
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    step = training_step(create_model(cfg["model"]), cfg["batch"])
    faults, cpu = [], []
    for _ in range(cfg["steps"]):
        before, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.process_time()
        step()
        cpu.append(time.process_time() - start)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    with open("/proc/self/statm") as f:
        resident = int(f.read().split()[1]) * resource.getpagesize()
    return {"kept": kept, "faults": statistics.median(faults[-10:]), "max_faults": max(faults[-10:]),
            "cpu": statistics.median(cpu[-10:]), "resident": resident,
            "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(worker(json.loads(sys.argv[2]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="spikformer_cifar_4_384")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model(args.model)
    kernels = markdown_table(["operation", "input", "dtype", "pass", "C kernel ms", "PyTorch ms", "speed-up"],
                             kernel_rows(copy.deepcopy(model), args.batch, args.repeats))
    rows = []
    for keep in (False, True) if args.steps else ():
        r = run_worker(__file__, {"keep": keep, "model": args.model, "batch": args.batch, "steps": args.steps,
                                  "threads": args.threads})
        rows.append(["kept (the commands)" if r["kept"] else "glibc defaults", f"{r['faults']:.0f}",
                     f"{r['max_faults']}", f"{r['cpu']:.3f}", f"{r['resident'] / 2**30:.2f}",
                     f"{r['peak'] / 2**30:.2f}"])
    memory = markdown_table(["freed memory", "page faults/step (median, last 10)", "max of last 10",
                             "CPU s/step (median, last 10)", "resident GiB at the end", "peak GiB"], rows)
    notes = [f"`{args.model}`, T=4, batch {args.batch}, {args.threads} thread(s). Kernels: median of "
             f"{args.repeats}, the paths taking turns; bfloat16 attention under autocast."
             + (f" Allocator: {args.steps} bfloat16 training steps in a fresh process per row." if rows else "")]
    table = kernels + ("\n\n" + memory if rows else "")
    record(f"CPU kernels and the allocator, {args.model}, cpu", "cpu", table, notes, write=not args.no_record)


if __name__ == "__main__":
    main()
