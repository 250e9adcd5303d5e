"""Spiking Transformers: Spikformer V1 and V2 models, training, spike analysis and export.

The Python API in one import (docs/tutorial.md walks through it)::

    from spikformer import Trainer, load_config
    result = Trainer(load_config("digits", ["train.epochs=1"])).fit()
"""

# The one version source: pyproject.toml reads it (setuptools dynamic version), `spikformer --version` prints it.
__version__ = "0.1.0"

from .analysis import measure_energy, measure_firing_rates
from .checkpoint import load_checkpoint, load_model_from_checkpoint, save_model
from .config import Config, config_from_dict, load_config, save_config
from .config_files import config_names, resolve_config
from .data import build_dataset, build_loader
from .errors import CheckpointError, ConfigError, DatasetError, SpikformerError
from .export import export_nir, export_onnx
from .models import Spikformer, build_model, create_model, list_models
from .neuron import LIF, LIFParams, lif_multistep
from .ssl.pretrain import Pretrainer
from .train import Trainer, evaluate

__all__ = [
    "LIF", "CheckpointError", "Config", "ConfigError", "DatasetError", "LIFParams", "Pretrainer", "Spikformer",
    "SpikformerError", "Trainer", "__version__", "build_dataset", "build_loader", "build_model", "config_from_dict",
    "config_names", "create_model", "evaluate", "export_nir", "export_onnx", "lif_multistep", "list_models",
    "load_checkpoint", "load_config", "load_model_from_checkpoint", "measure_energy", "measure_firing_rates",
    "resolve_config", "save_config", "save_model",
]
