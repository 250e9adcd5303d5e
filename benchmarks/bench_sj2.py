"""Side by side with SpikingJelly 2.x's own Spikformer, at matched width, depth, heads and T: a training step and
an inference step, each implementation run the way our commands run a model and the way a library user would.

Usage: python benchmarks/bench_sj2.py [--config cifar10_4_384] [--train-batch 16] [--infer-batch 32]
       [--repeats 3] [--rounds 2] [--dtype float32|bf16] [--threads N] [--no-record]
       (tiny, for a smoke run: --set model.embed_dim=32 --set model.depth=1 --set model.num_heads=2)

The architecture is the config's (``model.*``, after ``--set`` overrides); SpikingJelly 2.x builds the same sizes
with its ``spikformer.Spikformer`` class (``spikformer_cifar10`` is exactly 384 wide, 12 heads, 4 blocks, T=4,
patch 4 at 32x32, our ``cifar10_4_384``). Both are trained with cross-entropy on the mean logits over time.

Settings, each implementation in a fresh process per setting:
- ``commands``: what ``spikformer train``/``eval`` do to a model besides the data: freed memory kept in the
  process (``spikformer.allocator``), the config's optimizer (timm's AdamW with its weight-decay groups), the
  config's ``train.amp`` resolved for this device; the model built by ``build_model(config.model)``;
- ``library``: a user's hand loop: ``spikformer.create_model(name, **sizes)`` (SpikingJelly: its class), plain
  ``torch.optim.AdamW``, glibc's default allocator, ``--dtype`` (float32, or bf16 autocast).
SpikingJelly's model is reset (``functional.reset_net``) after every step, as its examples do; ours starts every
forward pass from rest by itself. With ``--rounds N`` the plan runs N times, configurations taking turns, and each
keeps its fastest round (a shared machine's neighbours slow some rounds down).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys

import torch
import torch.nn.functional as F
from benchutil import markdown_table, record, run_worker, time_it

IMPLEMENTATIONS = ("ours", "spikingjelly 2.x")
SETTINGS = ("commands", "library")


def sj2_model(m: dict) -> tuple[torch.nn.Module, str]:
    """SpikingJelly 2.x's Spikformer at our sizes ``m`` (a resolved model description), and how it was built."""
    from spikingjelly.activation_based.model import spikformer as sj

    sizes = dict(T=m["T"], in_channels=m["in_chans"], img_size_h=m["img_size"], img_size_w=m["img_size"],
                 patch_size=m["patch_size"], num_classes=m["num_classes"], embed_dims=m["embed_dim"],
                 num_heads=m["num_heads"], mlp_ratio=m["mlp_ratio"], depths=m["depth"])
    cifar10 = dict(T=4, in_channels=3, img_size_h=32, img_size_w=32, patch_size=4, num_classes=10, embed_dims=384,
                   num_heads=12, mlp_ratio=4.0, depths=4)
    if sizes == cifar10:
        return sj.spikformer_cifar10(), "spikformer_cifar10()"
    return sj.Spikformer(**sizes), "Spikformer(...) at these sizes"


def worker(cfg: dict) -> dict:
    """One implementation in one setting: median seconds of a training and an inference step, peak RSS."""
    from spikformer.allocator import keep_freed_memory
    from spikformer.config import load_config
    from spikformer.models import build_model, create_model, resolve_config
    from spikformer.train.engine import autocast_dtype
    from spikformer.train.optim import build_optimizer

    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    commands = cfg["setting"] == "commands"
    if commands:
        keep_freed_memory()
    config = resolve_config(load_config(cfg["config"], cfg["overrides"]))
    m = {key: getattr(config.model, key) for key in ("name", "T", "in_chans", "img_size", "patch_size",
                                                      "num_classes", "embed_dim", "num_heads", "mlp_ratio", "depth")}
    torch.manual_seed(0)
    sj = cfg["impl"] != "ours"
    if sj:
        from spikingjelly.activation_based import functional

        model, built = sj2_model(m)
    elif commands:
        model, built = build_model(config.model), "build_model(config.model)"
    else:
        sizes = {k: v for k, v in m.items() if k != "name"}
        model, built = create_model(m["name"], **sizes), f"create_model({m['name']!r}, ...)"
    device = torch.device("cpu")
    if commands:
        optimizer = build_optimizer(model, config.optim)
        amp = autocast_dtype(device, config.train.amp)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        amp = torch.bfloat16 if cfg["dtype"] == "bf16" else None

    def logits(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            out = model(x)
            out = out.mean(0) if sj else out  # SpikingJelly's head answers every step: [T, B, classes]
        if sj:
            functional.reset_net(model)
        return out.float()

    generator = torch.Generator().manual_seed(1)
    shape = (m["in_chans"], m["img_size"], m["img_size"])
    x_train = torch.randn(cfg["train_batch"], *shape, generator=generator)
    y_train = torch.randint(0, m["num_classes"], (cfg["train_batch"],), generator=generator)
    x_infer = torch.randn(cfg["infer_batch"], *shape, generator=generator)

    def train_step() -> None:
        model.train()
        loss = F.cross_entropy(logits(x_train), y_train)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def infer_step() -> None:
        model.eval()
        with torch.inference_mode():
            logits(x_infer)

    train = time_it(train_step, device, cfg["repeats"])
    infer = time_it(infer_step, device, cfg["repeats"])
    return {"train": train, "infer": infer, "params": sum(p.numel() for p in model.parameters()), "built": built,
            "amp": str(amp).replace("torch.", "") if amp else "float32", "model": m,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="cifar10_4_384")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override, e.g. model.embed_dim=32 (repeatable)")
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--infer-batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--dtype", choices=("float32", "bf16"), default="float32", help="the library setting's")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to docs/benchmarks.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    plan = [dict(impl=impl, setting=setting, config=args.config, overrides=args.overrides, dtype=args.dtype,
                 train_batch=args.train_batch, infer_batch=args.infer_batch, repeats=args.repeats,
                 threads=args.threads) for setting in SETTINGS for impl in IMPLEMENTATIONS]
    best: dict[tuple[str, str], dict] = {}
    for _ in range(args.rounds):
        for cfg in plan:
            result = run_worker(sys.argv[0], cfg)
            key = (cfg["impl"], cfg["setting"])
            if key in best:
                result["train"] = min(result["train"], best[key]["train"])
                result["infer"] = min(result["infer"], best[key]["infer"])
            best[key] = result
    rows = []
    for setting in SETTINGS:
        ours = best[("ours", setting)]
        for impl in IMPLEMENTATIONS:
            r = best[(impl, setting)]
            rows.append([setting, impl, f"`{r['built']}`", f"{r['params']:,}", r["amp"],
                         f"{r['train']:.3f}", f"{args.train_batch / r['train']:.1f}",
                         f"{r['train'] / ours['train']:.2f}x", f"{r['infer']:.3f}",
                         f"{args.infer_batch / r['infer']:.1f}", f"{r['infer'] / ours['infer']:.2f}x",
                         f"{r['peak_rss_mb']:.0f}"])
    table = markdown_table(["setting", "implementation", "built by", "params", "compute", "train s/step",
                            "train images/s", "train time vs ours", "infer s/step", "infer images/s",
                            "infer time vs ours", "peak RSS MB"], rows)
    m = best[("ours", "library")]["model"]
    notes = [f"{m['name']} sizes: width {m['embed_dim']}, {m['depth']} blocks, {m['num_heads']} heads, T={m['T']}, "
             f"{m['img_size']}x{m['img_size']} inputs, patch {m['patch_size']}; train batch {args.train_batch}, "
             f"infer batch {args.infer_batch}; median of {args.repeats} steps after one warm-up, fastest of "
             f"{args.rounds} round(s), each implementation and setting in a process of its own."]
    record(f"SpikingJelly 2.x's Spikformer side by side, {args.config}", "cpu", table, notes,
           write=not args.no_record)


if __name__ == "__main__":
    main()
