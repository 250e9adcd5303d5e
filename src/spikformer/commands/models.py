"""``spikformer models [PATTERN]``: the registered variants with their parameter counts."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list the registered model variants")
    parser.add_argument("pattern", nargs="?", default="", help="only names containing this text")
    parser.set_defaults(func=run)


def run(args) -> int:
    import torch

    from ..models import create_model, get_variant, list_models

    names = list_models(args.pattern)
    log.info(f"{'name':<28}{'params':>14}  {'input':<16}{'T':>3}  paper top-1")
    for name in names:
        variant = get_variant(name)
        with torch.device("meta"):  # counts parameters without allocating them
            params = sum(p.numel() for p in create_model(name).parameters())
        size = f"{variant.in_chans}x{variant.img_size}x{variant.img_size}"
        log.info(f"{name:<28}{params:>14,}  {size:<16}{variant.T:>3}  {variant.paper_accuracy}")
    return 0
