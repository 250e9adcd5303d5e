"""Time a few training and evaluation steps of each recipe's full-size model and extrapolate to one epoch.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/recipe_epoch_time.py configs/cifar10_4_384.yaml ... [--json OUT]``

Synthetic inputs at the recipe's resolution (data loading and augmentation are not timed), the recipe's
optimizer and autocast setting on this machine's device. The epoch figure is an extrapolation:
``train images / measured train images/s + val images / measured eval images/s``. Also reports the
forward+backward FLOPs per image (counted on the meta device), which do not depend on the hardware.

On a shared CPU the wall-clock rate depends on what else runs; the rate from the process's CPU time (with
one thread: the time the work needs on one core of its own) is reported beside it and used for the epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from spikformer.config import load_config, setting_choices
from spikformer.data import model_input
from spikformer.models import build_model, resolve_config
from spikformer.train.engine import autocast, autocast_dtype, resolve_device
from spikformer.train.optim import build_optimizer

# Training / validation split sizes of the datasets the recipes name.
SPLIT_SIZES = {"cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000), "imagenet": (1_281_167, 50_000)}


def flops_per_image(config) -> float:
    """Forward + backward FLOPs of one image (``torch.utils.flop_counter``, on the meta device)."""
    size = model_input(config)
    with torch.device("meta"):
        model = build_model(config.model)
        images = torch.randn(1, size["in_chans"], size["img_size"], size["img_size"])
    with FlopCounterMode(display=False) as counter:
        model(images).sum().backward()
    return float(counter.get_total_flops())


def time_steps(config, batch: int, steps: int, warmup: int, device: torch.device) -> dict[str, float]:
    size = model_input(config)
    model = build_model(config.model).to(device)
    optimizer = build_optimizer(model, config.optim)
    dtype = autocast_dtype(device, config.train.amp)
    images = torch.randn(batch, size["in_chans"], size["img_size"], size["img_size"], device=device)
    labels = torch.randint(0, size["num_classes"], (batch,), device=device)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.optim.label_smoothing)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def train_step() -> None:
        with autocast(device, dtype):
            logits = model(images)
        loss_fn(logits.float(), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def eval_step() -> None:
        with torch.no_grad(), autocast(device, dtype):
            model(images)

    result: dict[str, float] = {}
    for name, step, mode in (("train", train_step, model.train), ("eval", eval_step, model.eval)):
        mode()
        wall, cpu = [], []
        for i in range(warmup + steps):
            sync()
            start, start_cpu = time.perf_counter(), time.process_time()
            step()
            sync()
            if i >= warmup:
                wall.append(time.perf_counter() - start)
                cpu.append(time.process_time() - start_cpu)
        result[f"{name}_images_per_s"] = batch / statistics.median(wall)
        result[f"{name}_images_per_cpu_s"] = batch / statistics.median(cpu)
        result[f"{name}_step_seconds"] = wall
    return result


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", type=Path)
    parser.add_argument("--batch", type=int, default=None, help="images per step (default: 8 at 32x32, 1 at 224)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps (the median is used)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", choices=setting_choices("train", "amp"),  # from the config: cannot drift
                        help="override the recipes' train.amp (CPUs without native bfloat16 want off)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser


def main() -> None:
    args = build_parser().parse_args()

    device = resolve_device(args.device)
    machine = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
               "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
               "amp": args.amp or "as in each config", "load_before": os.getloadavg()[0], "torch": torch.__version__}
    print(f"# {machine}")
    # On the CPU the epoch is extrapolated from the CPU-time rate; on a GPU from the wall-clock rate.
    rate = "images_per_cpu_s" if device.type == "cpu" else "images_per_s"
    print("| config | params | GFLOP/image (train) | batch | train img/s (wall / CPU time) | "
          "eval img/s (wall / CPU time) | epoch (extrapolated) |")
    print("|---|---|---|---|---|---|---|")
    results = []
    for path in args.configs:
        config = resolve_config(load_config(path, [f"train.amp={args.amp!r}"] if args.amp else []))
        size = model_input(config)
        batch = args.batch or (8 if size["img_size"] <= 64 else 1)
        flops = flops_per_image(config)
        timing = time_steps(config, batch, args.steps, args.warmup, device)
        train_images, val_images = SPLIT_SIZES[config.data.name]
        epoch_s = train_images / timing[f"train_{rate}"] + val_images / timing[f"eval_{rate}"]
        with torch.device("meta"):
            params = sum(p.numel() for p in build_model(config.model).parameters())
        row = {"config": path.stem, "params": params, "gflop_per_image_train": flops / 1e9, "batch": batch,
               **timing, "epoch_hours_extrapolated": epoch_s / 3600}
        results.append(row)
        print(f"| {path.stem} | {params / 1e6:.2f}M | {flops / 1e9:.1f} | {batch} | "
              f"{timing['train_images_per_s']:.2f} / {timing['train_images_per_cpu_s']:.2f} | "
              f"{timing['eval_images_per_s']:.2f} / {timing['eval_images_per_cpu_s']:.2f} | "
              f"{epoch_s / 3600:.1f} h |", flush=True)
    machine["load_after"] = os.getloadavg()[0]
    print(f"# load average after: {machine['load_after']:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=2))


if __name__ == "__main__":
    main()
