"""Spiking Transformers: Spikformer V1 and V2 models, training, spike analysis and export.

The Python API in one import (docs/tutorial.md walks through it)::

    from spikformer import Trainer, load_config
    result = Trainer(load_config("digits", ["train.epochs=1"])).fit()

The public names load on first use (PEP 562), so ``import spikformer.config`` (or any other leaf module)
loads that module alone, not the models and torch kernels behind ``spikformer.create_model``.

``import spikformer`` registers every variant with timm (``timm.create_model("spikformer_cifar_4_384")``), in
either import order, without importing timm itself: if timm is loaded already the names are registered at
once, otherwise the moment it is (see ``_RegisterWithTimm``). Commands and programs that never use timm do not
pay for loading it and torch.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import TYPE_CHECKING, Any

# The one version source: pyproject.toml reads it (setuptools dynamic version), `spikformer --version` prints it.
__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "measure_energy": ".analysis", "measure_firing_rates": ".analysis",
    "load_checkpoint": ".checkpoint", "load_model_from_checkpoint": ".checkpoint", "save_model": ".checkpoint",
    "Config": ".config", "config_from_dict": ".config", "load_config": ".config", "save_config": ".config",
    "config_names": ".config_files", "config_path": ".config_files",
    "build_dataset": ".data", "build_loader": ".data",
    "CheckpointError": ".errors", "ConfigError": ".errors", "DatasetError": ".errors",
    "SpikformerError": ".errors",
    "export_nir": ".export", "export_onnx": ".export",
    "Spikformer": ".models", "build_model": ".models", "create_model": ".models", "list_models": ".models",
    "resolve_config": ".models",
    "from_pretrained": ".models.hub",
    "LIF": ".neurons", "LIFParams": ".neurons", "lif_multistep": ".neurons", "ParametricLIF": ".neurons",
    "SpikingNeuron": ".neurons", "register_neuron": ".neurons",
    "Pretrainer": ".ssl.pretrain",
    "Trainer": ".train", "evaluate": ".train",
}
__all__ = [
    "__version__", "CheckpointError", "Config", "ConfigError", "DatasetError", "LIF", "LIFParams", "ParametricLIF",
    "Pretrainer", "Spikformer", "SpikformerError", "SpikingNeuron", "Trainer", "build_dataset", "build_loader",
    "build_model", "config_from_dict", "config_names", "config_path", "create_model", "evaluate", "export_nir",
    "export_onnx", "from_pretrained", "lif_multistep", "list_models", "load_checkpoint", "load_config",
    "load_model_from_checkpoint", "measure_energy", "measure_firing_rates", "register_neuron", "resolve_config",
    "save_config", "save_model",
]

if TYPE_CHECKING:
    from .analysis import measure_energy, measure_firing_rates
    from .checkpoint import load_checkpoint, load_model_from_checkpoint, save_model
    from .config import Config, config_from_dict, load_config, save_config
    from .config_files import config_names, config_path
    from .data import build_dataset, build_loader
    from .errors import CheckpointError, ConfigError, DatasetError, SpikformerError
    from .export import export_nir, export_onnx
    from .models import Spikformer, build_model, create_model, list_models, resolve_config
    from .models.hub import from_pretrained
    from .neurons import LIF, LIFParams, ParametricLIF, SpikingNeuron, lif_multistep, register_neuron
    from .ssl.pretrain import Pretrainer
    from .train import Trainer, evaluate


class _RegisterWithTimm(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Registers the variants with timm right after timm's own ``__init__`` runs (the first ``import timm``,
    ``from timm.models import ...`` included), by importing ``spikformer.models``: timm offers no plug-in
    entry points, and its registry needs the entry-point functions themselves. Used once, then removed."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)  # one use; and the look-up below must find timm itself
        spec = importlib.util.find_spec("timm")
        if spec is not None and spec.loader is not None:
            self.timm_loader, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec: Any) -> Any:
        return self.timm_loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        module.__loader__ = module.__spec__.loader = self.timm_loader  # timm's module keeps its own loader
        self.timm_loader.exec_module(module)
        importlib.import_module(".models", __name__)  # its import registers every variant


if "timm" in sys.modules:
    importlib.import_module(".models", __name__)
elif not any(isinstance(finder, _RegisterWithTimm) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWithTimm())


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        try:  # a subpackage, e.g. ``spikformer.models`` after a bare ``import spikformer``
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{name}":
                raise  # the subpackage exists but lacks a dependency: say which
            raise AttributeError(f"module 'spikformer' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
