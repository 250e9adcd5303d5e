"""``spikformer export (--checkpoint PATH | --model NAME) [section.key=value ...] --format onnx|nir --out FILE``.

Writes the inference model (BatchNorm folded, T unrolled) as ONNX, checked against PyTorch in onnxruntime
when it is installed, or as NIR (what NIR can express; ``--partial`` writes the graph up to the first part it
cannot). Overrides change the model, e.g. ``model.T=8`` or ``model.embed_dim=64``.
"""

from __future__ import annotations

import logging
import math

from .paths import check_output_file

log = logging.getLogger(__name__)

FORMATS = {".onnx": "onnx", ".nir": "nir", ".h5": "nir", ".hdf5": "nir"}


def register(subparsers) -> None:
    parser = subparsers.add_parser("export", help="write the inference model as ONNX or NIR")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="own checkpoint (its config describes the model)")
    source.add_argument("--model", help="a registered model name (random weights unless model.pretrained=PATH)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="change the model, e.g. model.T=8 model.pretrained=weights.safetensors")
    parser.add_argument("--format", choices=("onnx", "nir"), help="default: from the --out suffix")
    parser.add_argument("--out", required=True, help="output file (.onnx, .nir)")
    parser.add_argument("--frames", action="store_true",
                        help="ONNX input as event frames [B, T, C, H, W] (the default for 2-channel models)")
    parser.add_argument("--partial", action="store_true",
                        help="NIR: write the graph up to the first part NIR cannot express")
    parser.add_argument("--dt", type=float, default=1e-4,
                        help="NIR: seconds per model time step (default 1e-4, the step NIR importers assume)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..errors import ConfigError
    from ..export import example_input, export_nir, export_onnx, onnx_max_difference

    out = check_output_file(args.out, "--out")
    fmt = args.format or FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise ConfigError(f"cannot tell the format from {args.out!r}; add --format onnx or --format nir")
    if not (math.isfinite(args.dt) and args.dt > 0):
        raise ConfigError(f"--dt must be a positive number of seconds, got {args.dt}")
    model = _load_model(args)
    if fmt == "onnx":
        path = export_onnx(model, out, frames=True if args.frames else None)
        try:
            diff = onnx_max_difference(model, path, example_input(model, batch=2, frames=args.frames or None))
            check = f"; onnxruntime matches PyTorch to {diff:.1e}"
        except ImportError:
            check = " (install onnxruntime to check it)"
        log.info(f"wrote {path} (ONNX, T={model.T}, BatchNorm folded){check}")
    else:
        graph = export_nir(model, out, partial=args.partial, dt=args.dt)
        stop = graph.metadata.get("truncated_at")
        what = f"up to {stop}, which NIR cannot express" if stop else "complete"
        log.info(f"wrote {out} (NIR, {len(graph.nodes)} nodes, {what})")
    return 0


def _load_model(args):
    from ..checkpoint import load_checkpoint, load_model_from_checkpoint
    from ..config import load_config
    from ..models import build_model

    if args.checkpoint:
        model, _ = load_model_from_checkpoint(args.checkpoint, args.overrides)
        return model
    config = load_config(None, [f"model.name={args.model}", *args.overrides])
    model = build_model(config.model)
    if config.model.pretrained:
        load_checkpoint(model, config.model.pretrained)
    return model
