"""One module per ``spikformer`` subcommand; see ``spikformer.cli``."""

from __future__ import annotations

import argparse


def add_config_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--config FILE`` plus ``section.key=value`` overrides, shared by the commands that read a config."""
    parser.add_argument("--config", required=required, help="YAML config file (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="override any config key, e.g. model.embed_dim=64 train.epochs=1")
