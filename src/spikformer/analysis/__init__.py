"""Spike analysis: firing rates, synaptic operations and energy."""

from .firing import FiringRateRecorder, measure_firing_rates

__all__ = ["FiringRateRecorder", "measure_firing_rates"]
