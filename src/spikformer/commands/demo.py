"""``spikformer demo``: train a small Spikformer on the embedded digits, then report what it learned.

Prints the test accuracy, the firing rate of every spiking layer, the synaptic operations and theoretical
energy per image (and the same network's energy as an ANN, see docs/energy.md), and the wall time. Used by
``make demo``.
"""

from __future__ import annotations

import logging
import time

from . import add_config_arguments

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="train and evaluate on the embedded digits (make demo)")
    add_config_arguments(parser, required=False)
    parser.set_defaults(func=run, config="digits")  # the packaged config: works outside a clone


def run(args) -> int:
    import torch

    from ..analysis import measure_energy
    from ..checkpoint import load_model_from_checkpoint
    from ..config import load_config
    from ..data import build_dataset, build_loader
    from ..models import resolve_config
    from ..train import Trainer, evaluate

    start = time.perf_counter()
    config = load_config(args.config, [*args.overrides, "train.overwrite=true"])
    Trainer(config).fit()
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
    log.info(f"\nper test image: {report.sops / 1e6:.2f}M synaptic operations, energy {report.energy_mj * 1e3:.2f} uJ "
             f"(45 nm: E_MAC 4.6 pJ, E_AC 0.9 pJ); as an ANN {report.ann_energy_mj * 1e3:.2f} uJ, "
             f"{report.ann_energy_mj / report.energy_mj:.1f}x more")
    log.info(f"\ntest accuracy: {result['top1']:.1f}%  ({result['count']} test images, T={model.T})")
    log.info(f"wall time: {time.perf_counter() - start:.0f} s (training {train_seconds:.0f} s)")
    return 0
