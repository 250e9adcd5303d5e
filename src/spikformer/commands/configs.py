"""``spikformer configs [NAME] [--keys [--markdown]]``: the packaged configs with a one-line description each,
one config's YAML, or the reference of every config key (type, default, meaning; docs/config.md).

Every name works as ``--config NAME`` (``spikformer train --config cifar10_4_384``); ``spikformer configs NAME >
mine.yaml`` starts a config of your own.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser("configs", help="list the packaged configs (each usable as --config NAME)")
    parser.add_argument("name", nargs="?", help="print this config's YAML instead of the list")
    parser.add_argument("--keys", action="store_true",
                        help="print every config key with its type, default and meaning (docs/config.md)")
    parser.add_argument("--markdown", action="store_true", help="with --keys: as the Markdown of docs/config.md")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..config_files import config_names, config_path, describe_config, packaged_config
    from ..errors import ConfigError

    if args.markdown and not args.keys:
        raise ConfigError("--markdown goes with --keys (spikformer configs --keys --markdown)")
    if args.keys:
        if args.name:
            raise ConfigError("--keys lists the keys every config has; leave out the config name")
        from ..config_reference import reference_markdown, reference_text

        log.info(reference_markdown().rstrip("\n") if args.markdown else reference_text())
        return 0
    if args.name:
        path = packaged_config(args.name)
        if path is None:
            config_path(args.name)  # raises the "did you mean" error for a name that is not packaged
            raise ConfigError(f"{args.name!r} is a file, not a packaged config name; `spikformer configs` lists "
                              f"the names")
        log.info(path.read_text().rstrip("\n"))
        return 0
    names = config_names()
    width = max(map(len, names), default=0) + 2
    log.info(f"{'name':<{width}}description")
    for name in names:
        log.info(f"{name:<{width}}{describe_config(packaged_config(name))}")
    return 0
