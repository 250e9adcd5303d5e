"""``spikformer demo``: train a small Spikformer on the embedded digits, then report what it learned.

Prints the test accuracy, the firing rate of every spiking layer, the synaptic operations and theoretical
energy per image in mJ, the unit of every energy figure (and the same network's energy as an ANN, see
docs/energy.md), and the wall time. Used by ``make demo``.

The run folder is ``runs/demo``, apart from ``runs/digits`` where ``spikformer train --config digits``
writes; when it already holds a run, the next free ``runs/demo-2``, ``runs/demo-3``, ... so that running the
demo again (``make demo`` twice) works and never replaces anything. ``train.out_dir=...`` names a folder, which
is then guarded as ``train`` guards it: a folder holding a run is refused unless ``--overwrite`` is given.
"""

from __future__ import annotations

import logging
import time

from . import add_config_arguments

log = logging.getLogger(__name__)
DEMO_OUT_DIR = "runs/demo"


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="train and evaluate on the embedded digits (make demo)")
    add_config_arguments(parser, required=False)
    parser.add_argument("--overwrite", action="store_true",
                        help=f"start over in a run folder that holds an earlier run (default folder {DEMO_OUT_DIR})")
    # The packaged config works outside a clone. No --resume: the demo reports on a fresh run.
    parser.set_defaults(func=run, config="digits", resume=None)


def demo_out_dir(overwrite: bool, base: str = DEMO_OUT_DIR) -> str:
    """``base`` when it holds no run (or ``overwrite`` asks to start over there), else the first free
    ``base-2``, ``base-3``, ..."""
    from pathlib import Path

    def free(folder: Path) -> bool:
        return not folder.exists() or (folder.is_dir() and not any(folder.iterdir()))

    if overwrite or free(Path(base)):
        return base
    number = 2
    while not free(Path(f"{base}-{number}")):
        number += 1
    return f"{base}-{number}"


def run(args) -> int:
    import torch

    from ..analysis import measure_energy
    from ..checkpoint import load_model_from_checkpoint
    from ..data import build_dataset, build_loader
    from ..models import resolve_config
    from ..train import evaluate
    from .train import _trainer, fit_run

    start = time.perf_counter()
    args.overrides = [f"train.out_dir={demo_out_dir(args.overwrite)}", *args.overrides]  # the command line's wins
    config, _, _ = fit_run(_trainer, args)
    train_seconds = time.perf_counter() - start

    # The final weights, not best.safetensors: the digits have no separate validation split, so picking the
    # best epoch on the test images would overstate the accuracy.
    model, config = load_model_from_checkpoint(f"{config.train.out_dir}/last.safetensors")
    loader = build_loader(build_dataset(resolve_config(config), "val"), 128, train=False)
    result = evaluate(model, loader, torch.device("cpu"))
    report = measure_energy(model, loader, name=config.model.name)
    log.info("\nfiring rate per spiking layer (spikes per neuron per time step, test set):")
    for name, rate in report.firing_rates.items():
        log.info(f"  {name:<36} {rate:6.3f}")
    log.info(f"\nper test image: {report.sops / 1e6:.2f}M synaptic operations, energy {report.energy_mj:.4g} mJ "
             f"(45 nm: E_MAC 4.6 pJ, E_AC 0.9 pJ); as an ANN {report.ann_energy_mj:.4g} mJ, "
             f"{report.ann_energy_mj / report.energy_mj:.1f}x more")
    log.info(f"\ntest accuracy: {result['top1']:.1f}%  ({result['count']} test images, T={model.T})")
    log.info(f"wall time: {time.perf_counter() - start:.0f} s (training {train_seconds:.0f} s)")
    return 0
