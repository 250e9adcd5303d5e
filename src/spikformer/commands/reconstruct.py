"""``spikformer reconstruct --checkpoint RUN/last.safetensors [--out PNG] [--num N]``: the masked
pre-training figure (input | mask | reconstruction) for images of the checkpoint's dataset.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser("reconstruct", help="render input | mask | reconstruction of a pre-training run")
    parser.add_argument("--checkpoint", required=True, help="a pre-training run's last.safetensors")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="change the stored config, e.g. ssl.mask_ratio=0.75")
    parser.add_argument("--out", help="PNG to write (default: reconstructions.png beside the checkpoint)")
    parser.add_argument("--num", type=int, default=8, help="number of images (rows)")
    parser.add_argument("--split", default="val", choices=("train", "val"))
    parser.add_argument("--seed", type=int, default=0, help="seed of the random masks")
    parser.set_defaults(func=run)


def run(args) -> int:
    import torch

    from ..checkpoint import match_state_dict, read_checkpoint, stored_config
    from ..data import build_dataset
    from ..errors import CheckpointError, ConfigError
    from ..models import resolve_config
    from ..ssl import build_masked_model
    from ..ssl.figure import render_reconstructions

    if args.num < 1:
        raise ConfigError(f"--num must be at least 1, got {args.num}")
    tensors, metadata = read_checkpoint(args.checkpoint)
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    if not metadata.get("config") or not any(k.startswith("decoder.") for k in state):
        raise CheckpointError(f"{args.checkpoint} holds no decoder: pass the last.safetensors of a "
                              f"`spikformer pretrain` run (encoder.safetensors keeps the encoder only)")
    config = resolve_config(stored_config(args.checkpoint, metadata, args.overrides))  # the file's word, bounded
    model = build_masked_model(config)
    if "decoder.mask_token" not in model.state_dict():  # saved before the unused mask token was left out
        state.pop("decoder.mask_token", None)
    match_state_dict(model, state, strict=True, source=str(args.checkpoint))
    dataset = build_dataset(config, args.split)
    images = torch.stack([dataset[i][0] for i in range(min(args.num, len(dataset)))])
    out = Path(args.out) if args.out else Path(args.checkpoint).with_name("reconstructions.png")
    render_reconstructions(model, images, out, torch.Generator().manual_seed(args.seed))
    log.info(f"wrote {out} ({len(images)} images, {model.mask_ratio:.0%} of the patches hidden)")
    return 0
