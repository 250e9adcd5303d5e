"""Spiking Transformers: Spikformer V1 and V2 models, training, spike analysis and export."""

from .checkpoint import load_checkpoint, save_model
from .models import Spikformer, create_model, list_models
from .neurons import LIF, LIFParams, ParametricLIF, SpikingNeuron, lif_multistep, register_neuron

__version__ = "0.1.0"
__all__ = ["LIF", "LIFParams", "ParametricLIF", "Spikformer", "SpikingNeuron", "create_model", "lif_multistep",
           "list_models", "load_checkpoint", "register_neuron", "save_model"]
