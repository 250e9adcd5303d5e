"""``spikformer build-kernels``: build the C kernels for this machine into the cache now, and say where."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "build-kernels", help="build the CPU kernels into the cache ahead of time (else the first forward does)"
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..fast import status

    cpu = status()["cpu_kernels"]
    if not cpu["built"]:
        log.error(f"the CPU kernels were not built: {cpu['reason']} (the models run on the pure-PyTorch path)")
        return 1
    log.info(f"CPU kernels built for target {cpu['target']}: {cpu['library']}")
    return 0
