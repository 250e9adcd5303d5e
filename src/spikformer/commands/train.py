"""``spikformer train --config FILE [section.key=value ...]``: a supervised (or fine-tuning) run."""

from __future__ import annotations

import argparse
import logging

from . import add_config_arguments

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train (or fine-tune) a model from a YAML config")
    add_run_arguments(parser)
    parser.set_defaults(func=run)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The config, its overrides, ``--resume`` and ``--overwrite``: what every run command takes."""
    add_config_arguments(parser)
    parser.add_argument("--resume", metavar="auto|PATH", help="continue a run (same as train.resume=...)")
    parser.add_argument("--overwrite", action="store_true", help="start over in an existing run folder")


def fit_run(run_class, args):
    """Load the config ``args`` describe, build ``run_class(config)`` and fit it; returns ``(config, result,
    is_main)``, ``is_main`` false on every process of a distributed run but rank 0's (which alone reports)."""
    from ..config import load_config
    from ..train.distributed import shutdown_distributed

    overrides = list(args.overrides)
    if args.resume:
        overrides.append(f"train.resume={args.resume}")
    if args.overwrite:
        overrides.append("train.overwrite=true")
    config = load_config(args.config, overrides)
    try:
        runner = run_class(config)
        return runner.config, runner.fit(), runner.is_main
    finally:
        shutdown_distributed()  # under torchrun: leave the process group cleanly, also after an error


def run(args) -> int:
    from ..train import Trainer

    config, result, is_main = fit_run(Trainer, args)
    if is_main:
        log.info(f"best val top-1 {result['best_top1']:.2f}% (epoch {result['best_epoch']}); run folder "
                 f"{config.train.out_dir}")
    return 0
