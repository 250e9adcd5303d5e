"""Spike analysis: firing rates, synaptic operations, energy, and figures (see docs/energy.md).

``firing`` records LIF firing rates; ``ops`` counts FLOPs and SOPs per layer; ``energy`` turns them into
the papers' theoretical energy; ``attention_map`` and the ``plot_*`` functions (PNG files, the ``analysis``
extra) draw what the network does.
"""

from .attention import attention_map
from .batchnorm import calibrate_batchnorm
from .energy import (
    PAPER_ANN_ENERGY_MJ,
    PAPER_FIRST_CONV_MACS,
    PAPER_IMAGENET_TABLE,
    EnergyModel,
    EnergyReport,
    LayerEnergy,
    energy_report,
    measure_energy,
    paper_energy_mj,
    paper_first_conv_energy_mj,
)
from .figures import plot_attention_map, plot_firing_rates, plot_raster
from .firing import FiringRateRecorder, lif_role, measure_firing_rates
from .ops import LayerOps, OpCounter, count_operations

__all__ = [
    "PAPER_ANN_ENERGY_MJ", "PAPER_FIRST_CONV_MACS", "PAPER_IMAGENET_TABLE", "EnergyModel", "EnergyReport",
    "FiringRateRecorder", "LayerEnergy", "LayerOps", "OpCounter", "attention_map", "calibrate_batchnorm",
    "count_operations", "energy_report", "lif_role", "measure_energy", "measure_firing_rates", "paper_energy_mj",
    "paper_first_conv_energy_mj", "plot_attention_map", "plot_firing_rates", "plot_raster",
]
