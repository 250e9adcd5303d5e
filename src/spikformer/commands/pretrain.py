"""``spikformer pretrain --config FILE [section.key=value ...]``: masked self-supervised pre-training.

Writes the run folder (see ``spikformer.ssl.pretrain``); fine-tune the result with
``spikformer train --config FINETUNE.yaml model.pretrained=RUN/encoder.safetensors``.
"""

from __future__ import annotations

import logging

from .train import add_run_arguments, fit_run

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser("pretrain", help="masked self-supervised pre-training (no labels)")
    add_run_arguments(parser)
    parser.set_defaults(func=run)


def _pretrainer():
    from ..ssl.pretrain import Pretrainer

    return Pretrainer


def run(args) -> int:
    _, result, is_main = fit_run(_pretrainer, args)
    if is_main:
        log.info(f"encoder saved to {result['encoder']}; fine-tune it with "
                 f"spikformer train --config CONFIG model.pretrained={result['encoder']}")
    return 0
