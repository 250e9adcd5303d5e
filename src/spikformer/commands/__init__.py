"""One module per ``spikformer`` subcommand; see ``spikformer.cli``."""

from __future__ import annotations

import argparse


def add_config_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--config FILE|NAME`` plus ``section.key=value`` overrides, shared by the commands that read a config."""
    parser.add_argument("--config", required=required, metavar="FILE|NAME",
                        help="YAML config file, or the name of a packaged config (spikformer configs lists them)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="override any config key, e.g. model.embed_dim=64 train.epochs=1 (spikformer "
                             "configs --keys lists every key with its type, default and meaning)")
