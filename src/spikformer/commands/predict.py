"""``spikformer predict MODEL IMAGE|FOLDER ... [-k 5] [--json OUT]``: the top-k classes of image files.

MODEL is an own checkpoint (``runs/digits/best.safetensors``; its config gives the preprocessing) or an ONNX
file written by ``spikformer export`` (run through onnxruntime; its metadata gives the preprocessing and the
class names). Folders are searched for images recursively.

Usage:
  spikformer predict runs/digits/best.safetensors digit.png photos/ -k 3
  spikformer predict model.onnx photos/ --json predictions.json
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="classify image files with a checkpoint or an exported ONNX file (top-k with class names)",
        description="Classify image files (or every image in folders) with a trained checkpoint or an ONNX file "
        "written by `spikformer export`; prints the top-k classes of each image.",
    )
    parser.add_argument("model", metavar="MODEL", help="own checkpoint (.safetensors) or exported ONNX file (.onnx)")
    parser.add_argument("inputs", nargs="+", metavar="IMAGE|FOLDER", help="image files, or folders of images")
    parser.add_argument("-k", "--top-k", type=int, default=5, help="classes per image (default 5, at most all)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    parser.add_argument("--json", metavar="OUT", help="also write the predictions as JSON")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..errors import ConfigError
    from ..predict import Classifier, classify, image_files
    from .paths import check_output_file

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not Path(args.model).is_file():
        raise ConfigError(f"model {args.model!r} is not a file; give a checkpoint (.safetensors) or an ONNX file")
    json_out = check_output_file(args.json, "--json") if args.json else None
    files = image_files(args.inputs)
    classifier = Classifier.from_file(args.model)
    results = classify(classifier, files, k=args.top_k, batch_size=args.batch_size)
    width = max(len(str(result.path)) for result in results) + 2
    for result in results:
        top = "  ".join(f"{name} {p:.1%}" for name, p in result.top)
        log.info(f"{str(result.path):<{width}}{top}")
    if json_out is not None:
        document = [{"file": str(r.path), "top": [{"class": n, "probability": p} for n, p in r.top]} for r in results]
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(document, indent=2))
    return 0
