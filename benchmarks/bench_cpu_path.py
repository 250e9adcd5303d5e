"""The CPU fast path's layout and statistics choices, each against the plain PyTorch way, in one run.

Usage: python benchmarks/bench_cpu_path.py [--batch 64] [--repeats 10] [--no-record]

Rows (float32, the implementations taking turns in every round):
- batch statistics (per-channel mean and biased variance): ``torch.var_mean`` over the non-channel
  dimensions against the C kernel (``spikformer.fast.kernels.cpu.bn_stats``) on the shapes of a
  ``spikformer_cifar_4_384`` training step at batch 32 (tokens, MLP hidden tokens, the widest stem map in
  both memory layouts);
- the stem's 3x3 max-pool on spike maps, NCHW against channels-last;
- a whole ``spikformer_cifar_4_384`` inference step (T=4) with the stem in NCHW against channels-last
  (``FastPolicy.channels_last``).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from benchutil import markdown_table, record, time_interleaved

from spikformer import create_model
from spikformer.fast.kernels import cpu
from spikformer.layers import SpikingConvStage


def statistics_rows(repeats: int) -> list[list[str]]:
    cases = {
        "tokens [8192, 384]": torch.randn(8192, 384),
        "MLP tokens [8192, 1536]": torch.randn(8192, 1536),
        "stem map [128, 192, 32, 32], NCHW": torch.randn(128, 192, 32, 32),
        "stem map [128, 192, 32, 32], channels-last": torch.randn(128, 192, 32, 32).contiguous(
            memory_format=torch.channels_last),
    }
    rows = []
    for name, y in cases.items():
        dims = (0,) if y.ndim == 2 else (0, 2, 3)
        t = time_interleaved({"var_mean": lambda y=y, dims=dims: torch.var_mean(y, dims, correction=0),
                              "kernel": lambda y=y: cpu.bn_stats(y)}, "cpu", repeats)
        rows.append([f"batch statistics, {name}", f"{t['var_mean'] * 1e3:.2f} ms", f"{t['kernel'] * 1e3:.2f} ms",
                     f"{t['var_mean'] / t['kernel']:.2f}x"])
    return rows


def max_pool_row(repeats: int) -> list[str]:
    spikes = (torch.rand(256, 192, 32, 32) < 0.2).float()
    nhwc = spikes.contiguous(memory_format=torch.channels_last)
    t = time_interleaved({"nchw": lambda: F.max_pool2d(spikes, 3, 2, 1), "nhwc": lambda: F.max_pool2d(nhwc, 3, 2, 1)},
                         "cpu", repeats)
    return ["max-pool 3x3/2 of spikes [256, 192, 32, 32]", f"{t['nchw'] * 1e3:.1f} ms", f"{t['nhwc'] * 1e3:.1f} ms",
            f"{t['nchw'] / t['nhwc']:.2f}x"]


def stem_layout_row(batch: int, repeats: int) -> list[str]:
    torch.manual_seed(0)
    model = create_model("spikformer_cifar_4_384").eval()
    images = torch.randn(batch, 3, 32, 32)
    stages = [m for m in model.modules() if isinstance(m, SpikingConvStage)]

    def step(channels_last: bool):
        def run():
            for stage in stages:
                stage.channels_last = channels_last
            with torch.inference_mode():
                return model(images)
        return run

    t = time_interleaved({"nchw": step(False), "nhwc": step(True)}, "cpu", repeats)
    return [f"`spikformer_cifar_4_384` inference step, batch {batch}, T=4", f"{t['nchw']:.2f} s", f"{t['nhwc']:.2f} s",
            f"{t['nchw'] / t['nhwc']:.2f}x"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64, help="images per inference step")
    parser.add_argument("--repeats", type=int, default=10, help="rounds for the kernels (the model step: a third)")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    if not cpu.available(torch.float32):
        raise SystemExit("the CPU kernel is not available here (no C compiler, or SPIKFORMER_NO_CPU_KERNEL=1)")
    rows = [*statistics_rows(args.repeats), max_pool_row(args.repeats),
            stem_layout_row(args.batch, max(args.repeats // 3, 2))]
    table = markdown_table(["what", "plain PyTorch way", "ours", "speed-up"], rows)
    notes = ["Plain PyTorch way: `torch.var_mean`; NCHW. Ours: the C statistics kernel; channels-last. Float32, "
             "median of the rounds, the two taking turns in every round."]
    record("CPU path choices", "cpu", table, notes, write=not args.no_record)


if __name__ == "__main__":
    main()
