"""Where a training step's time goes: one ``spikformer_cifar_4_384`` step under ``torch.profiler``, grouped.

Usage: python benchmarks/profile_train_step.py [--model spikformer_cifar_4_384] [--batch 32] [--rows 15]
       [--amp bf16]

Prints the share of self CPU time per group (convolutions, linear layers, the fused BatchNorm+LIF forward
and backward, the LIF kernels, batch statistics, copies, attention products, the rest) and the busiest
operators. A profile, not a benchmark: it says where to look, and nothing is appended to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from spikformer import create_model

GROUPS = (  # first match wins: (group, substrings of the operator name)
    ("BatchNorm+LIF backward", ("_BatchNormLIFBackward",)),
    ("BatchNorm+LIF forward", ("_BatchNormLIF",)),
    ("LIF kernels", ("lif_c", "lif_triton")),
    ("batch statistics", ("var_mean", "_KernelBatchStatistics")),
    ("convolutions", ("convolution",)),
    ("linear layers", ("aten::mm", "aten::addmm")),
    ("attention products", ("aten::bmm",)),
    ("copies", ("aten::copy_", "aten::clone")),
)


def group_of(name: str) -> str:
    return next((group for group, keys in GROUPS if any(key in name for key in keys)), "rest")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="spikformer_cifar_4_384")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rows", type=int, default=15, help="busiest operators to list")
    parser.add_argument("--amp", choices=("off", "bf16"), default="off", help="bfloat16 autocast")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = create_model(args.model).train()
    images = torch.randn(args.batch, model.in_chans, model.img_size, model.img_size)
    labels = torch.randint(0, model.num_classes, (args.batch,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.amp == "bf16")

    def step() -> None:
        with amp:
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    shares: dict[str, float] = defaultdict(float)
    for e in events:
        shares[group_of(e.key)] += e.self_cpu_time_total / total
    precision = "bfloat16 autocast" if args.amp == "bf16" else "float32"
    print(f"{args.model}, batch {args.batch}, {precision}, one training step: {total / 1e6:.2f} s of self CPU time")
    for group, share in sorted(shares.items(), key=lambda item: -item[1]):
        print(f"  {group:24s} {100 * share:5.1f}%")
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
