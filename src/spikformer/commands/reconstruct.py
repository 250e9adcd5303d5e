"""``spikformer reconstruct --checkpoint RUN/last.safetensors [--out PNG] [--num N]``: the masked
pre-training figure (input | mask | reconstruction) for images of the checkpoint's dataset.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .paths import check_output_file

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

    from .. import ssl
    from ..checkpoint import check_state_fits, described_model_state, match_state_dict, read_checkpoint, stored_config
    from ..data import build_dataset
    from ..errors import CheckpointError, ConfigError
    from ..models import resolve_config
    from ..ssl.figure import render_reconstructions

    if args.num < 1:
        raise ConfigError(f"--num must be at least 1, got {args.num}")
    if args.out:
        check_output_file(args.out, "--out", image=True)
    # The header alone first: the stored architecture is checked against the file's tensor names and shapes on
    # the meta device, so neither a model nor a tensor is allocated for a file that does not fit.
    described, metadata = described_model_state(args.checkpoint) or ({}, {})
    if not metadata.get("config") or not any(k.startswith("decoder.") for k in described):
        raise CheckpointError(f"{args.checkpoint} holds no decoder: pass the last.safetensors of a "
                              f"`spikformer pretrain` run (encoder.safetensors keeps the encoder only)")
    config = resolve_config(stored_config(args.checkpoint, metadata, args.overrides))  # the file's word, bounded
    with torch.device("meta"):
        meta = ssl.build_masked_model(config)
    if "decoder.mask_token" not in meta.state_dict():  # saved before the unused mask token was left out
        described.pop("decoder.mask_token", None)
    check_state_fits(meta, described, strict=True, source=str(args.checkpoint))
    tensors, metadata = read_checkpoint(args.checkpoint)
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    model = ssl.build_masked_model(config)
    if "decoder.mask_token" not in model.state_dict():
        state.pop("decoder.mask_token", None)
    match_state_dict(model, state, strict=True, source=str(args.checkpoint))
    dataset = build_dataset(config, args.split)
    images = torch.stack([dataset[i][0] for i in range(min(args.num, len(dataset)))])
    out = Path(args.out) if args.out else Path(args.checkpoint).with_name("reconstructions.png")
    render_reconstructions(model, images, out, torch.Generator().manual_seed(args.seed))
    log.info(f"wrote {out} ({len(images)} images, {model.mask_ratio:.0%} of the patches hidden)")
    return 0
