"""Does masked pre-training help a spiking transformer? The digits proof of Spikformer V2's recipe.

For each seed: pre-train the encoder of ``configs/digits_v2_pretrain.yaml`` on the digits training split
without labels, fine-tune it on 10% of the labels (``configs/digits_v2_finetune.yaml``), and train the same
model from scratch on the same 10% with the same budget. Every run is scored once, on the 360 test images,
after its last epoch (no checkpoint is picked by its test accuracy). Prints a markdown table.

Usage (about 10 minutes per seed on one core; seeds can run in parallel processes, and finished runs are
skipped on a re-run, so a last call with all seeds gathers the table):
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/digits_v2_ssl.py --seeds 0 1 2
Options after ``--`` are config overrides for all runs, e.g. ``-- train.threads=2``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

PRETRAIN_CONFIG = "configs/digits_v2_pretrain.yaml"
FINETUNE_CONFIG = "configs/digits_v2_finetune.yaml"


def pretrain(seed: int, out: Path, overrides: list[str]) -> Path:
    from spikformer.config import load_config
    from spikformer.ssl.pretrain import ENCODER_FILE, Pretrainer

    run = out / f"pretrain_seed{seed}"
    done = run / "result.json"
    if not done.exists():
        config = load_config(PRETRAIN_CONFIG, [f"train.seed={seed}", f"train.out_dir={run}", "train.overwrite=true",
                                               "train.progress=false", *overrides])
        start = time.perf_counter()
        result = Pretrainer(config).fit()
        result["seconds"] = time.perf_counter() - start
        done.write_text(json.dumps(result, indent=2))
    return run / ENCODER_FILE


def classify(seed: int, out: Path, name: str, encoder: Path | None, overrides: list[str]) -> dict:
    """Fine-tune ``encoder`` (or train from scratch when None) and score the last epoch on the test split."""
    from spikformer.config import load_config
    from spikformer.train import Trainer

    run = out / f"{name}_seed{seed}"
    done = run / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    init = [f"model.pretrained={encoder}"] if encoder else ["model.pretrained=null", "optim.layer_decay=null"]
    config = load_config(FINETUNE_CONFIG, [f"train.seed={seed}", f"train.out_dir={run}", "train.overwrite=true",
                                           "train.progress=false", *init, *overrides])
    config.train.eval_every = config.train.epochs + config.optim.cooldown_epochs  # one evaluation, at the end
    start = time.perf_counter()
    metrics = Trainer(config).fit()
    result = {"test_top1": metrics["val_top1"], "seconds": time.perf_counter() - start}
    done.write_text(json.dumps(result, indent=2))
    return result


def summary(values: list[float]) -> str:
    spread = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.1f}%{spread}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/digits_v2_ssl", help="folder of all runs and results.json")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="applied to every run")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    rows = []
    for seed in args.seeds:
        encoder = pretrain(seed, out, args.overrides)
        finetuned = classify(seed, out, "finetune", encoder, args.overrides)
        scratch = classify(seed, out, "scratch", None, args.overrides)
        rows.append({"seed": seed, "pretrained": finetuned["test_top1"], "scratch": scratch["test_top1"]})
        print(f"seed {seed}: pre-trained + fine-tuned {finetuned['test_top1']:.1f}%, "
              f"from scratch {scratch['test_top1']:.1f}%", flush=True)

    (out / "results.json").write_text(json.dumps(rows, indent=2))
    print("\n| seed | from scratch (10% labels) | pre-trained, fine-tuned (10% labels) |")
    print("|---|---|---|")
    for row in rows:
        print(f"| {row['seed']} | {row['scratch']:.1f}% | {row['pretrained']:.1f}% |")
    scratch = [row["scratch"] for row in rows]
    pretrained = [row["pretrained"] for row in rows]
    print(f"| mean ± sd | {summary(scratch)} | {summary(pretrained)} |")
    print(f"\ngain from pre-training: {statistics.mean(pretrained) - statistics.mean(scratch):+.1f} points "
          f"(test accuracy on the 360 test digits, last epoch)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
