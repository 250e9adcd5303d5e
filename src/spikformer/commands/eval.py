"""``spikformer eval --checkpoint PATH [section.key=value ...] [--json OUT]``: top-1, top-5 (with more than 5
classes) and loss.

The data is checked against the checkpoint first: as many classes as the model's head and, when the checkpoint
stores its class names, the same names in the same order (another folder's classes would be scored against
the wrong outputs without a sign).

The checkpoint carries its config, whose model section is the complete architecture the model is rebuilt
from (older checkpoints with a sparse one are resolved against today's variant table), so nothing else is
needed; overrides change it (``model.T=8`` evaluates at another number of time steps, ``data.root=...``
points at the data).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="evaluate a checkpoint on its dataset's validation split")
    parser.add_argument("--checkpoint", required=True, help="own checkpoint (best.safetensors / last.safetensors)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    parser.add_argument("--split", default="val", choices=("train", "val"))
    parser.add_argument("--json", metavar="OUT", help="also write the result as JSON")
    parser.set_defaults(func=run)


def local_cache_folder() -> Path:
    """Where ``eval`` caches event frames for a dataset whose root came from a checkpoint:
    ``$XDG_CACHE_HOME/spikformer/frames`` (``~/.cache/spikformer/frames``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "spikformer" / "frames"


def run(args) -> int:
    from ..checkpoint import checkpoint_class_names, load_model_from_checkpoint
    from ..config import parse_override
    from ..data import build_dataset, build_loader
    from ..data.checks import check_class_count, check_class_names
    from ..errors import ConfigError
    from ..models import resolve_config
    from ..train.engine import autocast_dtype, check_lif_backend, evaluate, resolve_device

    if args.json and Path(args.json).is_dir():  # found out before the evaluation, not after it
        raise ConfigError(f"--json {args.json} is a folder; give a file name such as {Path(args.json) / 'eval.json'}")
    model, config = load_model_from_checkpoint(args.checkpoint, args.overrides)
    chosen = {parse_override(text)[:2] for text in args.overrides}
    if config.data.cache_dir is None and config.data.root is not None and ("data", "root") not in chosen:
        # The file's data.root says where to read; where to write is this machine's choice.
        config.data.cache_dir = str(local_cache_folder())
    config = resolve_config(config)  # a no-op for a complete description; the datasets read its input size
    device = resolve_device(config.train.device)
    check_lif_backend(config.model.lif_backend, device)
    dataset = build_dataset(config, args.split)
    # The data must be what the model was trained on: as many classes, the same names in the same order.
    check_class_count(dataset, getattr(model, "num_classes", None), config.data.name)
    class_names = checkpoint_class_names(args.checkpoint)
    check_class_names(dataset, class_names, str(args.checkpoint), config.data.name)
    loader = build_loader(dataset, config.data.eval_batch_size or config.data.batch_size, train=False,
                          num_workers=config.data.num_workers)
    result = evaluate(model.to(device), loader, device, autocast_dtype(device, config.train.amp),
                      progress=config.train.progress)
    result = {"checkpoint": str(args.checkpoint), "model": config.model.name, "T": model.T,
              "split": args.split, **result, "class_names": class_names}
    top5 = f"top5 {result['top5']:.2f}%  " if "top5" in result else ""  # only with more than 5 classes
    log.info(f"top1 {result['top1']:.2f}%  {top5}loss {result['loss']:.4f}  "
             f"({result['count']} samples, T={model.T})")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0
