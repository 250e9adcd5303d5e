"""``spikformer energy-table``: the energy table a paper prints, for every registered variant or checkpoint.

Usage:
  spikformer energy-table --markdown                       # every variant at its paper T, random weights
  spikformer energy-table --models _512 --paper-constant   # the V1 paper's convention (see docs/energy.md)
  spikformer energy-table --checkpoint runs/digits/best.safetensors
  spikformer energy-table --models cifar model.embed_dim=32 model.depth=1 model.num_heads=2   # tiny

Random weights (the default) run on random input, one image by default (``--batch-size``): each ImageNet
variant at 224x224 takes a few seconds per image on a CPU. Their firing rates, and so their SOPs and energy,
are those of an untrained network (BatchNorm statistics re-estimated on the input); the ANN energy depends on
the architecture only. Checkpoints run on their dataset's validation split (``--data random`` for noise).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .analyze import add_energy_arguments, energy_model_from_args

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "energy-table", help="params, T, SOPs, energy and ANN energy of every variant (paper-ready table)",
        description="Measure every registered variant (or the given checkpoints) and print the energy table.")
    parser.add_argument("overrides", nargs="*", metavar="model.key=value",
                        help="model options applied to every variant, e.g. model.img_size=64 (random weights)")
    parser.add_argument("--models", default="", metavar="PATTERN", help="only variants whose name contains this")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="PATH",
                        help="a row for this own checkpoint instead of the variants (repeatable)")
    parser.add_argument("--data", default="auto", choices=("auto", "random", "train", "val"),
                        help="input of checkpoint rows (auto: val); variants always use random input")
    parser.add_argument("--batch-size", type=int, default=1, help="images per batch (default 1)")
    parser.add_argument("--batches", type=int, default=1, help="batches to average over (default 1)")
    parser.add_argument("--paper-constant", action="store_true",
                        help="like the V1 paper: add the 512-wide model's first-conv MAC energy (1.596 mJ) to "
                             "every row in place of each model's own MAC energy")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--json", metavar="OUT", help="also write the rows as JSON")
    parser.add_argument("--no-calibrate", action="store_true",
                        help="random weights: keep the initial BatchNorm statistics")
    parser.add_argument("--seed", type=int, default=0)
    add_energy_arguments(parser)
    parser.set_defaults(func=run)


def _model_overrides(texts: list[str]) -> dict:
    from ..config import parse_override
    from ..errors import ConfigError

    overrides = {}
    for text in texts:
        section, key, value = parse_override(text)
        if section != "model":
            raise ConfigError(f"energy-table takes model.key=value overrides only, got {text!r}")
        overrides[key] = value
    return overrides


def _variant_rows(args, energy_model) -> list:
    import torch

    from ..analysis import calibrate_batchnorm, measure_energy
    from ..analysis.inputs import random_batches
    from ..analysis.table import table_row
    from ..console import progress_bar
    from ..errors import ConfigError
    from ..models import VARIANTS, create_model, get_variant

    names = [name for name in VARIANTS if args.models in name]  # registry order: families together
    if not names:
        raise ConfigError(f"no registered variant contains {args.models!r}; `spikformer models` lists them")
    overrides = _model_overrides(args.overrides)
    rows = []
    for name in progress_bar(names, desc="energy table"):
        torch.manual_seed(args.seed)
        try:
            model = create_model(name, **overrides)
        except ValueError as error:
            raise ConfigError(f"{name}: {error}") from None
        events = get_variant(name).family == "dvs"
        batches = random_batches(model, args.batch_size, args.batches, seed=args.seed, events=events)
        if not args.no_calibrate:
            calibrate_batchnorm(model, batches)
        report = measure_energy(model, batches, energy_model, name=name)
        params = sum(p.numel() for p in model.parameters())
        shape = "x".join(map(str, (model.in_chans, model.img_size, model.img_size)))
        rows.append(table_row(report, params, shape, "random", args.paper_constant))
    return rows


def _checkpoint_rows(args, energy_model) -> list:
    from types import SimpleNamespace

    from ..analysis import measure_energy
    from ..analysis.table import table_row
    from ..checkpoint import load_model_from_checkpoint
    from .analyze import input_batches

    rows = []
    for path in args.checkpoint:
        model, config = load_model_from_checkpoint(path, [])
        batch_size = None if args.data in ("auto", "train", "val") else args.batch_size
        request = SimpleNamespace(data=args.data, batch_size=batch_size, batches=args.batches, seed=args.seed,
                                  checkpoint=path)
        batches = input_batches(request, model, config, trained=True)
        report = measure_energy(model, batches, energy_model, name=config.model.name)
        params = sum(p.numel() for p in model.parameters())
        shape = "x".join(map(str, (model.in_chans, model.img_size, model.img_size)))
        rows.append(table_row(report, params, shape, str(path), args.paper_constant))
    return rows


def run(args) -> int:
    from ..analysis.table import format_energy_table
    from ..errors import ConfigError

    if args.batch_size < 1 or args.batches < 1:
        raise ConfigError(f"--batch-size and --batches must be >= 1, got {args.batch_size} and {args.batches}")
    if args.checkpoint and (args.overrides or args.models):
        raise ConfigError("--checkpoint rows use the checkpoints' own configs; drop --models and the overrides")
    energy_model = energy_model_from_args(args)
    rows = _checkpoint_rows(args, energy_model) if args.checkpoint else _variant_rows(args, energy_model)
    log.info(format_energy_table(rows, markdown=args.markdown))
    note = ("energy = E_AC x SOPs + 1.596 mJ (the paper's constant: the 512-wide first conv's MACs at 224x224, T=4)"
            if args.paper_constant else "energy = E_MAC x MACs of MAC layers + E_AC x SOPs")
    log.info(f"\nper sample; {note}; E_MAC={energy_model.e_mac_pj} pJ, E_AC={energy_model.e_ac_pj} pJ; "
             f"ANN = the same network, every layer once as MACs. Paper energy: V1 paper, trained weights.")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps([row.to_dict() for row in rows], indent=2))
    return 0
