"""``spikformer frames --config FILE [section.key=value ...] [--index I] [--split val] --out FILE.png``: draw the
event frames of one recording, one panel per time step (ON events blue, OFF events orange).

Usage: ``spikformer frames --config configs/digits_dvs.yaml --index 3 --out frames.png``
"""

from __future__ import annotations

import logging
from pathlib import Path

from . import add_config_arguments
from .paths import check_output_file

log = logging.getLogger(__name__)

COLUMNS = 8


def register(subparsers) -> None:
    parser = subparsers.add_parser("frames", help="render the event frames of one sample of an event dataset to PNG")
    add_config_arguments(parser)
    parser.add_argument("--index", type=int, default=0, help="which recording of the split (default 0)")
    parser.add_argument("--split", choices=("train", "val"), default="val",
                        help="dataset split; train frames are augmented as in training (default val)")
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..config import load_config
    from ..data import build_dataset
    from ..errors import ConfigError
    from ..models import resolve_config

    out = check_output_file(args.out, "--out", image=True)
    config = resolve_config(load_config(args.config, args.overrides))
    dataset = build_dataset(config, args.split)
    if not 0 <= args.index < len(dataset):
        raise ConfigError(f"--index {args.index} is out of range: the {args.split} split of {config.data.name} "
                          f"has {len(dataset)} samples (0-{len(dataset) - 1})")
    frames, label = dataset[args.index]
    if frames.ndim != 4 or frames.shape[1] != 2:
        raise ConfigError(f"data.name={config.data.name} gives images of shape {list(frames.shape)}, not event "
                          f"frames [T, 2, H, W]; frames draws event datasets (cifar10dvs, dvs128gesture, digits-dvs)")
    classes = getattr(dataset, "classes", None)
    name = classes[label] if classes else str(label)
    title = (f"{config.data.name} {args.split} #{args.index}: {name} — {int(frames.sum())} events in "
             f"{frames.shape[0]} frames by {config.data.event_framing}")
    render_frame_grid(frames.numpy(), out, title)
    log.info(f"wrote {out} ({frames.shape[0]} frames of {frames.shape[2]}x{frames.shape[3]}, label {name})")
    return 0


def render_frame_grid(frames, path: str | Path, title: str = "") -> None:
    """Save frames ``[T, 2, H, W]`` (OFF, ON counts) as a grid of panels, ``COLUMNS`` per row (on a Figure with
    its own Agg canvas: matplotlib's global backend is left alone)."""
    import numpy as np

    from ..extras import require

    Figure = require("matplotlib.figure", "spikformer frames").Figure
    FigureCanvasAgg = require("matplotlib.backends.backend_agg", "spikformer frames").FigureCanvasAgg

    T = frames.shape[0]
    cols = min(T, COLUMNS)
    rows = -(-T // cols)
    scale = max(float(np.percentile(frames[frames > 0], 99)) if (frames > 0).any() else 1.0, 1.0)
    off, on = np.clip(frames[:, 0] / scale, 0, 1), np.clip(frames[:, 1] / scale, 0, 1)
    # White paper; ON removes red and some green (blue), OFF removes blue and some green (orange).
    rgb = np.ones((*on.shape, 3))
    rgb[..., 0] -= on
    rgb[..., 1] -= 0.45 * (on + off)
    rgb[..., 2] -= off
    rgb = np.clip(rgb, 0, 1)
    fig = Figure(figsize=(1.6 * cols, 1.75 * rows + 0.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < T:
            ax.imshow(rgb[i], interpolation="nearest")
            ax.set_title(f"t={i}  ({int(frames[i].sum())})", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
