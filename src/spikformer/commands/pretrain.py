"""``spikformer pretrain --config FILE [section.key=value ...]``: masked self-supervised pre-training.

Writes the run folder (see ``spikformer.ssl.pretrain``); fine-tune the result with
``spikformer train --config FINETUNE.yaml model.pretrained=RUN/encoder.safetensors``.
"""

from __future__ import annotations

from . import add_config_arguments


def register(subparsers) -> None:
    parser = subparsers.add_parser("pretrain", help="masked self-supervised pre-training (no labels)")
    add_config_arguments(parser)
    parser.add_argument("--resume", metavar="auto|PATH", help="continue a run (same as train.resume=...)")
    parser.add_argument("--overwrite", action="store_true", help="start over in an existing run folder")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..config import load_config
    from ..ssl.pretrain import Pretrainer
    from ..train.distributed import shutdown_distributed

    overrides = list(args.overrides)
    if args.resume:
        overrides.append(f"train.resume={args.resume}")
    if args.overwrite:
        overrides.append("train.overwrite=true")
    config = load_config(args.config, overrides)
    try:
        result = Pretrainer(config).fit()
    finally:
        shutdown_distributed()  # under torchrun: leave the process group cleanly, also after an error
    print(f"encoder saved to {result['encoder']}; fine-tune it with "
          f"spikformer train --config CONFIG model.pretrained={result['encoder']}")
    return 0
