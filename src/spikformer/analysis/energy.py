"""Theoretical energy of a spiking network per SPEC §3, and the same network counted as an ANN.

``E = E_MAC * sum(MAC layers: steps * FLOPs) + E_AC * sum(AC layers: SOPs)`` per sample, with the papers'
45 nm constants ``E_MAC = 4.6 pJ`` and ``E_AC = 0.9 pJ`` (``EnergyModel`` changes them for other hardware).
The first conv sees real pixels and is a MAC layer, run at every one of the ``T`` steps; every layer fed
spikes is an AC layer (see ``ops.py`` for how FLOPs, firing rates and SOPs are counted). The ANN-equivalent
energy is ``E_MAC * sum(FLOPs)``: every layer once, all multiply-accumulates, including SSA's products.
Not counted (as in the papers): BatchNorm (folded into the conv/linear before it), biases, max-pooling
(comparisons), residual additions, the neuron updates, and the mean over tokens and time before the head.

Usage: ``report = measure_energy(model, loader, max_batches=4); print(report.format_table())``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .firing import FiringRateRecorder, iterate_inputs
from .ops import LayerOps, OpCounter

PJ_TO_MJ = 1e-9


@dataclass(frozen=True)
class EnergyModel:
    """Energy per operation in picojoules (45 nm CMOS figures used by both papers)."""

    e_mac_pj: float = 4.6
    e_ac_pj: float = 0.9

    def __post_init__(self) -> None:
        for name in ("e_mac_pj", "e_ac_pj"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0 (picojoules), got {value!r}")


# --- the V1 paper's ImageNet table (SPEC §3) --------------------------------------------------------------

PAPER_T = 4
# The 512-wide model's first conv at 224x224: 3 -> 64 channels, 3x3 kernel, stride 1 (86,704,128 MACs).
PAPER_FIRST_CONV_MACS = 224 * 224 * 64 * 3 * 3 * 3
# (SOPs, energy in mJ) as printed; every row is 0.9 pJ x SOPs + the 512-wide first conv's MAC energy.
PAPER_IMAGENET_TABLE: dict[str, tuple[float, float]] = {
    "spikformer_8_384": (6.82e9, 7.734),
    "spikformer_6_512": (8.69e9, 9.417),
    "spikformer_8_512": (11.09e9, 11.577),
    "spikformer_10_512": (13.67e9, 13.899),
    "spikformer_8_768": (22.09e9, 21.477),
}
PAPER_ANN_ENERGY_MJ = 38.34  # "Transformer-8-512", the ANN counterpart of spikformer_8_512


def paper_first_conv_energy_mj(energy_model: EnergyModel = EnergyModel()) -> float:
    """The constant the paper adds to every row: ``E_MAC * 86.7M MACs * T=4`` = 1.595 mJ."""
    return energy_model.e_mac_pj * PAPER_FIRST_CONV_MACS * PAPER_T * PJ_TO_MJ


def paper_energy_mj(sops: float, energy_model: EnergyModel = EnergyModel()) -> float:
    """A row of the paper's table: ``E_AC * SOPs`` plus the 512-wide first conv's constant."""
    return energy_model.e_ac_pj * sops * PJ_TO_MJ + paper_first_conv_energy_mj(energy_model)


# --- per-layer energy -------------------------------------------------------------------------------------


@dataclass
class LayerEnergy:
    """One row of the energy table, per sample: ``flops`` per time step, ``sops`` over all time steps."""

    name: str
    kind: str  # "MAC" | "AC"
    shape: tuple[int, ...]
    flops: float
    steps: int
    firing_rate: float | None
    sops: float
    energy_mj: float

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "firing_rate": self.firing_rate, "flops": self.flops,
                "sops": self.sops, "energy_mj": self.energy_mj, "shape": list(self.shape), "steps": self.steps}


def layer_energy(ops: LayerOps, energy_model: EnergyModel = EnergyModel()) -> LayerEnergy:
    """Energy of one layer: ``E_MAC * steps * FLOPs`` for a MAC layer, ``E_AC * SOPs`` for an AC layer."""
    if ops.kind == "MAC":
        energy = energy_model.e_mac_pj * ops.steps * ops.flops * PJ_TO_MJ
    else:
        energy = energy_model.e_ac_pj * ops.sops * PJ_TO_MJ
    return LayerEnergy(ops.name, ops.kind, ops.shape, ops.flops, ops.steps, ops.firing_rate, ops.sops, energy)


@dataclass
class EnergyReport:
    """Operations and energy of a model per sample, plus the firing rates of its LIF layers.

    ``firing_rates`` / ``firing_rates_per_step`` are the LIF outputs' rates; ``spikes`` holds the first sample's
    spikes ``[T, ...]`` of the LIF layers asked for (for a raster plot).
    """

    model: str
    T: int
    layers: list[LayerEnergy]
    energy_model: EnergyModel = field(default_factory=EnergyModel)
    samples: int = 0
    firing_rates: dict[str, float] = field(default_factory=dict)
    firing_rates_per_step: dict[str, list[float]] = field(default_factory=dict)
    lif_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    spikes: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def flops(self) -> float:
        """Multiply-accumulates of one time step (the head, which runs once, counted once)."""
        return sum(layer.flops for layer in self.layers)

    @property
    def sops(self) -> float:
        return sum(layer.sops for layer in self.layers)

    @property
    def mac_energy_mj(self) -> float:
        return sum(layer.energy_mj for layer in self.layers if layer.kind == "MAC")

    @property
    def ac_energy_mj(self) -> float:
        return sum(layer.energy_mj for layer in self.layers if layer.kind == "AC")

    @property
    def energy_mj(self) -> float:
        return self.mac_energy_mj + self.ac_energy_mj

    @property
    def ann_energy_mj(self) -> float:
        """The same network as an ANN: every layer once, all MACs."""
        return self.energy_model.e_mac_pj * self.flops * PJ_TO_MJ

    def paper_energy_mj(self) -> float:
        """The paper's way: the AC energy plus the 512-wide first conv's constant in place of every MAC layer."""
        return self.ac_energy_mj + paper_first_conv_energy_mj(self.energy_model)

    def total(self) -> dict[str, float]:
        energy = self.energy_mj
        return {"flops": self.flops, "sops": self.sops, "energy_mj": energy, "ann_energy_mj": self.ann_energy_mj,
                "mac_energy_mj": self.mac_energy_mj, "ac_energy_mj": self.ac_energy_mj,
                "ann_to_snn_ratio": self.ann_energy_mj / energy if energy > 0 else math.inf}

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of ``spikformer analyze --json``."""
        return {"model": self.model, "T": self.T, "samples": self.samples,
                "energy_model": {"e_mac_pj": self.energy_model.e_mac_pj, "e_ac_pj": self.energy_model.e_ac_pj},
                "layers": [layer.to_dict() for layer in self.layers], "total": self.total(),
                "firing_rates": self.firing_rates, "firing_rates_per_step": self.firing_rates_per_step}

    def write_csv(self, path: str | Path) -> None:
        """One row per layer (name, kind, shape, steps, firing_rate, flops, sops, energy_mj) and a total row."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["name", "kind", "shape", "steps", "firing_rate", "flops", "sops", "energy_mj"])
            for row in self.layers:
                rate = "" if row.firing_rate is None else f"{row.firing_rate:.6g}"
                writer.writerow([row.name, row.kind, "x".join(map(str, row.shape)), row.steps, rate,
                                 f"{row.flops:.0f}", f"{row.sops:.1f}", f"{row.energy_mj:.6g}"])
            writer.writerow(["total", "", "", "", "", f"{self.flops:.0f}", f"{self.sops:.1f}",
                             f"{self.energy_mj:.6g}"])

    def write_firing_csv(self, path: str | Path) -> None:
        """One row per LIF layer: name, shape, mean rate, then the rate at each time step."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        T = max((len(v) for v in self.firing_rates_per_step.values()), default=0)
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["name", "shape", "firing_rate", *(f"t{t}" for t in range(T))])
            for name, rate in self.firing_rates.items():
                shape = "x".join(map(str, self.lif_shapes.get(name, ())[2:]))
                writer.writerow([name, shape, f"{rate:.6g}",
                                 *(f"{r:.6g}" for r in self.firing_rates_per_step.get(name, []))])

    def format_table(self) -> str:
        """A fixed-width table of every layer and the totals, for the terminal."""
        width = max([len("layer"), *(len(row.name) for row in self.layers)])
        header = (f"{'layer':<{width}}  {'kind':<4} {'shape':<14} {'rate':>7} {'FLOPs/step':>11} {'SOPs':>10} "
                  f"{'energy mJ':>11}")
        lines = [header, "-" * len(header)]
        for row in self.layers:
            rate = "-" if row.firing_rate is None else f"{row.firing_rate:.3f}"
            shape = "x".join(map(str, row.shape))
            lines.append(f"{row.name:<{width}}  {row.kind:<4} {shape:<14} {rate:>7} {si(row.flops):>11} "
                         f"{si(row.sops):>10} {row.energy_mj:>11.4g}")
        lines.append("-" * len(header))
        lines.append(f"{'total':<{width}}  {'':<4} {'':<14} {'':>7} {si(self.flops):>11} {si(self.sops):>10} "
                     f"{self.energy_mj:>11.4g}")
        lines.append(self.summary())
        return "\n".join(lines)

    def summary(self) -> str:
        energy = self.energy_mj
        ratio = f"{self.ann_energy_mj / energy:.1f}x" if energy > 0 else "inf"
        return (f"{self.model}, T={self.T}, per sample: {si(self.sops)} SOPs, energy {energy:.4g} mJ "
                f"(MAC {self.mac_energy_mj:.4g} + AC {self.ac_energy_mj:.4g}); as an ANN {self.ann_energy_mj:.4g} mJ "
                f"({ratio}); E_MAC={self.energy_model.e_mac_pj} pJ, E_AC={self.energy_model.e_ac_pj} pJ")


def si(value: float) -> str:
    """``86704128 -> '86.70M'``."""
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.2f}{suffix}"
    return f"{value:.3g}"


def energy_report(ops: list[LayerOps], model: str, T: int, energy_model: EnergyModel = EnergyModel()
                  ) -> EnergyReport:
    """Turn counted operations into an energy report (no firing rates of LIF layers)."""
    return EnergyReport(model, T, [layer_energy(o, energy_model) for o in ops], energy_model)


@torch.no_grad()
def measure_energy(model: nn.Module, batches: Iterable, energy_model: EnergyModel = EnergyModel(),
                   max_batches: int | None = None, device: torch.device | str = "cpu", name: str | None = None,
                   keep_spikes: Iterable[str] = (), attention_order: str = "as_computed",
                   progress: bool = False) -> EnergyReport:
    """Run ``model`` (in eval mode) over ``batches`` of ``(inputs, labels)`` or inputs and return the
    per-sample operations, energy and LIF firing rates averaged over every sample seen."""
    model.eval()
    recorder = FiringRateRecorder(model, keep=keep_spikes)
    counter = OpCounter(model, attention_order)
    with recorder, counter:
        for inputs in iterate_inputs(batches, max_batches, progress, desc="energy"):
            model(inputs.to(device))
    if counter.samples == 0:
        raise ValueError("measure_energy got no input batches; pass a non-empty loader or list of tensors")
    report = energy_report(counter.layers(), name or type(model).__name__, counter.T, energy_model)
    report.samples = counter.samples
    report.firing_rates = recorder.rates()
    report.firing_rates_per_step = recorder.per_step()
    report.lif_shapes = dict(recorder.shapes)
    report.spikes = dict(recorder.kept)
    return report
