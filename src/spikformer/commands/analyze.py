"""``spikformer analyze``: firing rates, FLOPs, SOPs and energy per layer, with CSV, JSON and PNG figures.

Usage:
  spikformer analyze --checkpoint runs/digits/best.safetensors            # trained weights, its dataset
  spikformer analyze --model spikformer_8_512 --batch-size 1              # random weights, random input
  spikformer analyze --model spikformer_cifar_4_256 model.in_chans=1 --data val --json out.json

The checkpoint's config names the dataset (``data.name=...`` / ``data.root=...`` override it); ``--data
random`` feeds random images instead. Random weights get their BatchNorm statistics re-estimated on the
input first (``--no-calibrate`` keeps the initial ones) so that their firing rates mean something.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from . import add_config_arguments
from .paths import check_output_file

log = logging.getLogger(__name__)

DATA_CHOICES = ("auto", "random", "train", "val")


def add_energy_arguments(parser) -> None:
    """``--e-mac`` / ``--e-ac``: the energy per operation (shared with ``energy-table``)."""
    parser.add_argument("--e-mac", type=float, default=4.6, metavar="PJ",
                        help="energy of one multiply-accumulate in pJ (default 4.6, 45 nm)")
    parser.add_argument("--e-ac", type=float, default=0.9, metavar="PJ",
                        help="energy of one accumulate in pJ (default 0.9, 45 nm)")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "analyze", help="firing rates, SOPs and energy per layer (table, CSV, JSON, figures)",
        description="Measure firing rates, FLOPs, synaptic operations and theoretical energy of a model "
                    "(see docs/energy.md).")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="own checkpoint (its config gives the model and the dataset)")
    source.add_argument("--model", help="a registered variant with random weights (`spikformer models`)")
    add_config_arguments(parser, required=False)
    parser.add_argument("--data", default="auto", choices=DATA_CHOICES,
                        help="input: the dataset's train/val split or random images (auto: val with "
                             "--checkpoint, random otherwise)")
    parser.add_argument("--batches", type=int, help="batches to average over (default: 10 of a dataset, 1 random)")
    parser.add_argument("--batch-size", type=int, help="default: the config's eval/batch size (random: 8)")
    parser.add_argument("--out", help="folder for CSV files and figures (default: the checkpoint's run folder, "
                                      "RUN/analysis/CHECKPOINT_INPUT; random weights: runs/analyze/MODEL)")
    parser.add_argument("--json", metavar="OUT", help="also write the result as JSON")
    parser.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    parser.add_argument("--raster-layer", help="LIF layer of the spike raster (default: the first block's Q)")
    parser.add_argument("--attn-block", type=int, default=0, help="SSA block of the attention map (from 0)")
    parser.add_argument("--attn-head", type=int, default=0, help="head of the attention map (from 0)")
    parser.add_argument("--no-calibrate", action="store_true",
                        help="random weights: keep the initial BatchNorm statistics")
    parser.add_argument("--seed", type=int, default=0, help="seed of random weights and random input")
    add_energy_arguments(parser)
    parser.set_defaults(func=run)


def energy_model_from_args(args):
    from ..analysis import EnergyModel
    from ..errors import ConfigError

    try:
        return EnergyModel(args.e_mac, args.e_ac)
    except ValueError as error:
        raise ConfigError(f"--e-mac/--e-ac: {error}") from None


def _check_counts(args) -> None:
    from ..errors import ConfigError

    if args.batches is not None and args.batches < 1:
        raise ConfigError(f"--batches must be >= 1, got {args.batches}")
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")


def load_model(args):
    """``(model, config, trained)`` from ``--checkpoint`` or ``--model``/``--config`` with overrides."""
    import torch

    from ..checkpoint import load_model_from_checkpoint
    from ..config import load_config
    from ..errors import ConfigError
    from ..models import build_model, resolve_config

    if args.checkpoint:
        if args.config:
            raise ConfigError("--config goes with --model; a checkpoint carries its own config (change it with "
                              "section.key=value overrides)")
        model, config = load_model_from_checkpoint(args.checkpoint, args.overrides)
        return model, resolve_config(config), True
    config = resolve_config(load_config(args.config, [f"model.name={args.model}", *args.overrides]))
    torch.manual_seed(args.seed)
    return build_model(config.model), config, False


def input_batches(args, model, config, trained: bool) -> list:
    """The batches to analyse: a dataset split or random images/event frames."""
    from ..analysis.inputs import random_batches
    from ..data import build_dataset, build_loader
    from ..models import get_variant

    source = args.data if args.data != "auto" else ("val" if trained else "random")
    if source == "random":
        events = get_variant(config.model.name).family == "dvs"
        return random_batches(model, args.batch_size or 8, args.batches or 1, seed=args.seed, events=events)
    batch_size = args.batch_size or config.data.eval_batch_size or config.data.batch_size
    dataset = build_dataset(config, source)
    if trained:  # the data the checkpoint was trained on, by its class names (when it stores them)
        from ..checkpoint import checkpoint_class_names
        from ..data.checks import check_class_names

        check_class_names(dataset, checkpoint_class_names(args.checkpoint), str(args.checkpoint), config.data.name)
    loader = build_loader(dataset, batch_size, train=False, seed=args.seed)
    batches = []
    for i, batch in enumerate(loader):
        if i >= (args.batches or 10):
            break
        batches.append(batch[0])
    return batches


def default_out_dir(args, trained: bool) -> Path:
    """Beside the checkpoint, in its run folder (``runs/digits/analysis/best_val``: one folder per checkpoint
    and input, so analyses of different runs or inputs never overwrite each other); random weights:
    ``runs/analyze/<model>``."""
    if not trained:
        return Path("runs/analyze") / args.model
    source = args.data if args.data != "auto" else "val"
    return Path(args.checkpoint).parent / "analysis" / f"{Path(args.checkpoint).stem}_{source}"


def default_raster_layer(model) -> str:
    from ..analysis import FiringRateRecorder

    names = list(FiringRateRecorder(model).layers)
    preferred = [n for n in names if n.endswith("attn.q.lif")]
    return (preferred or names)[0]


def run(args) -> int:
    from ..analysis import attention_map, calibrate_batchnorm, measure_energy
    from ..analysis.attention import attention_blocks
    from ..analysis.firing import FiringRateRecorder
    from ..analysis.footprint import static_figures
    from ..errors import ConfigError

    _check_counts(args)
    if args.json:
        check_output_file(args.json, "--json")
    if args.out and Path(args.out).expanduser().is_file():
        raise ConfigError(f"--out {args.out} is a file; name the folder for the CSV files and figures")
    energy_model = energy_model_from_args(args)
    model, config, trained = load_model(args)
    name = config.model.name
    batches = input_batches(args, model, config, trained)
    if not trained and not args.no_calibrate:
        calibrate_batchnorm(model, batches)
    raster_layer = args.raster_layer or default_raster_layer(model)
    lif_names = list(FiringRateRecorder(model).layers)
    if raster_layer not in lif_names:
        from ..registry import did_you_mean

        hint = did_you_mean(raster_layer, lif_names, cutoff=0.3)
        raise ConfigError(f"--raster-layer {raster_layer!r} is not a LIF layer of {name}{hint}; the firing-rate "
                          f"CSV lists them all")
    blocks = attention_blocks(model)
    if blocks and not args.no_figures:
        heads = blocks[0][1].num_heads
        if not 0 <= args.attn_block < len(blocks) or not 0 <= args.attn_head < heads:
            raise ConfigError(f"--attn-block {args.attn_block} --attn-head {args.attn_head} is outside {name}: "
                              f"blocks 0..{len(blocks) - 1}, heads 0..{heads - 1}")
    report = measure_energy(model, batches, energy_model, name=name, keep_spikes=[raster_layer],
                            progress=config.train.progress)

    log.info(report.format_table())
    figures = static_figures(model)
    log.info(f"\nfootprint {figures.footprint_bytes / 2**20:.2f} MiB ({figures.parameters:,} parameters and the "
             f"buffers), connection sparsity {figures.connection_sparsity:.4f} (zero weights of linear and conv "
             f"layers)")
    log.info("\nfiring rate of each spiking layer (spikes per neuron per time step):")
    for layer, rate in report.firing_rates.items():
        steps = " ".join(f"{r:.3f}" for r in report.firing_rates_per_step[layer])
        log.info(f"  {layer:<36} {rate:6.3f}   per step: {steps}")

    out = Path(args.out) if args.out else default_out_dir(args, trained)
    report.write_csv(out / "layers.csv")
    report.write_firing_csv(out / "firing_rates.csv")
    written = [out / "layers.csv", out / "firing_rates.csv"]
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        from ..checkpoint import checkpoint_class_names

        class_names = checkpoint_class_names(args.checkpoint) if trained else None
        document = {**report.to_dict(), "static": figures.to_dict(),
                    "weights": str(args.checkpoint) if trained else "random", "class_names": class_names,
                    "input": args.data if args.data != "auto" else ("val" if trained else "random")}
        Path(args.json).write_text(json.dumps(document, indent=2))
        written.append(Path(args.json))
    if not args.no_figures:
        from ..analysis import plot_attention_map, plot_firing_rates, plot_raster

        written.append(plot_firing_rates(report.firing_rates, out / "firing_rates.png",
                                         report.firing_rates_per_step, title=f"Firing rate per layer, {name}"))
        written.append(plot_raster(report.spikes[raster_layer], out / "raster.png", raster_layer))
        if blocks:
            image = batches[0][:1]
            scores = attention_map(model, image, args.attn_block, args.attn_head)
            frame = image[0] if image.ndim == 4 else image[0].sum(0)  # events: all steps summed
            written.append(plot_attention_map(scores, out / "attention.png", frame,
                                              title=f"Q K^T, block {args.attn_block}, head {args.attn_head}"))
    log.info("\nwrote " + ", ".join(map(str, written)))
    return 0
