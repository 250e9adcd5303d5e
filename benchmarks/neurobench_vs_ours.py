"""NeuroBench's operation counts next to ours, per layer kind, on the same model and inputs (docs/energy.md).

Usage: PYTHONPATH=src python benchmarks/neurobench_vs_ours.py [--model spikformer_cifar_4_384] [--images 4]
       [--img-size 32] [--seed 0]

Needs ``pip install neurobench`` (2.3.0 was measured). Random weights, BatchNorm statistics re-estimated on
``--images`` standard-normal images (seed ``--seed``) so that the neurons fire, then both tools count one
forward pass of those images: ours with ``spikformer.analysis.count_operations``, NeuroBench per layer with
its own ``single_layer_MACs`` (``neurobench_layer_operations``) and in total with its ``Benchmark`` through
``spikformer.analysis.neurobench.SpikformerModel``. Prints a Markdown table, per sample.
"""

from __future__ import annotations

import argparse
import re

import torch
from neurobench.benchmarks import Benchmark
from torch.utils.data import DataLoader, TensorDataset

import spikformer
from spikformer.analysis import calibrate_batchnorm, count_operations
from spikformer.analysis.energy import si
from spikformer.analysis.neurobench import SpikformerModel, neurobench_layer_operations, spikformer_metrics

# (pattern on the layer name, the kind's row label), first match wins
KINDS = [
    (r"patch_embed\.stages\.0\.conv$", "first conv (pixels)"),
    (r"patch_embed\.stages\.\d+\.conv$", "stem convs (spikes; zero-padded borders)"),
    (r"patch_embed\.rpe\.conv$", "RPE conv (spikes; zero-padded borders)"),
    (r"attn\.[qkv]\.linear$", "Q, K, V (input: the integer residual stream)"),
    (r"@", "SSA products (spikes x spikes)"),
    (r"attn\.proj\.linear$", "projection (input: spikes)"),
    (r"mlp\.fc1\.linear$", "MLP fc1 (input: the integer residual stream)"),
    (r"mlp\.fc2\.linear$", "MLP fc2 (input: spikes)"),
    (r"^head$", "head (time-averaged features)"),
]


def kind_of(name: str) -> str:
    for pattern, label in KINDS:
        if re.search(pattern, name):
            return label
    return name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="spikformer_cifar_4_384")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    model = spikformer.create_model(args.model, img_size=args.img_size)
    images = torch.randn(args.images, model.in_chans, args.img_size, args.img_size)
    calibrate_batchnorm(model, [images])
    model.eval()

    rows: dict[str, dict[str, float]] = {label: {} for _, label in KINDS}
    for layer in count_operations(model, images):
        row = rows[kind_of(layer.name)]
        row["ours_kind"] = layer.kind
        row["ours"] = row.get("ours", 0.0) + (layer.flops * layer.steps if layer.kind == "MAC" else layer.sops)
    for layer in neurobench_layer_operations(model, images):
        row = rows[kind_of(layer.name)]
        row["nb_macs"] = row.get("nb_macs", 0.0) + layer.macs
        row["nb_acs"] = row.get("nb_acs", 0.0) + layer.acs
    loader = DataLoader(TensorDataset(images, torch.zeros(len(images), dtype=torch.long)), batch_size=len(images))
    results = Benchmark(SpikformerModel(model), loader, [], [], spikformer_metrics()).run(quiet=True)

    print(
        f"{args.model}, {args.img_size}x{args.img_size}, T={model.T}, random weights (seed {args.seed}), "
        f"{args.images} images; operations per sample\n"
    )
    print("| layer kind | ours | ours: ops | NeuroBench MACs | NeuroBench ACs | ours / NeuroBench |")
    print("|---|---|---:|---:|---:|---:|")
    total_ours = total_nb = 0.0
    for label, row in rows.items():
        if not row:
            continue
        nb = row.get("nb_macs", 0.0) + row.get("nb_acs", 0.0)
        ratio = f"{row['ours'] / nb:.3f}" if nb else "not counted"
        print(
            f"| {label} | {row['ours_kind']} | {si(row['ours'])} | {si(row.get('nb_macs', 0.0))} | "
            f"{si(row.get('nb_acs', 0.0))} | {ratio} |"
        )
        total_ours += row["ours"]
        total_nb += nb
    synops = results["SynapticOperations"]
    print(
        f"| total | | {si(total_ours)} | {si(synops['Effective_MACs'])} | {si(synops['Effective_ACs'])} | "
        f"{total_ours / total_nb:.3f} |"
    )
    print(
        f"\nNeuroBench Benchmark: Effective_MACs {synops['Effective_MACs']:.0f}, Effective_ACs "
        f"{synops['Effective_ACs']:.0f}, Dense {synops['Dense']:.0f}, AttentionSynapticOperations "
        f"{results['AttentionSynapticOperations']:.0f}, ActivationSparsity {results['ActivationSparsity']:.4f}, "
        f"Footprint {results['Footprint']} B, ConnectionSparsity {results['ConnectionSparsity']}, "
        f"ParameterCount {results['ParameterCount']}"
    )


if __name__ == "__main__":
    main()
