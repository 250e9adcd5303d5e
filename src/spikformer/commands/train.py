"""``spikformer train --config FILE [section.key=value ...]``: a supervised (or fine-tuning) run."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

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
    """Load the config ``args`` describe, build ``run_class()(config)`` and fit it; returns ``(config, result,
    is_main)``, ``is_main`` false on every process of a distributed run but rank 0's (which alone reports).
    ``run_class`` returns the class, so a config that does not load is reported before torch is imported."""
    from ..config import load_config

    overrides = list(args.overrides)
    if args.resume:
        overrides.append(f"train.resume={args.resume}")
    if args.overwrite:
        overrides.append("train.overwrite=true")
    config = load_config(args.config, overrides)
    if config.train.overwrite:
        _check_overwrite_spares(args.config, config.train.out_dir)
    from ..train.distributed import shutdown_distributed

    run_class = run_class()
    try:
        runner = run_class(config)
        return runner.config, runner.fit(), runner.is_main
    finally:
        shutdown_distributed()  # under torchrun: leave the process group cleanly, also after an error


def _check_overwrite_spares(config_file: str | None, out_dir: str) -> None:
    """``--overwrite`` deletes the run folder's ``config.yaml``: refuse when that is the file being read."""
    from ..config_files import config_path
    from ..errors import ConfigError

    if config_file is None:
        return
    read = Path(config_path(config_file)).expanduser().resolve()
    if read == (Path(out_dir).expanduser() / "config.yaml").resolve():
        raise ConfigError(f"--overwrite would delete the config file it reads ({read}), which is the run folder's "
                          f"config.yaml; copy it elsewhere and pass that copy, or choose another train.out_dir")


def _trainer():
    from ..train import Trainer

    return Trainer


def run(args) -> int:
    config, result, is_main = fit_run(_trainer, args)
    if is_main:
        log.info(f"best val top-1 {result['best_top1']:.2f}% (epoch {result['best_epoch']}); run folder "
                 f"{config.train.out_dir}")
    return 0
