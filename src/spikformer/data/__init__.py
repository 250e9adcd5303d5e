"""Datasets by name and loaders that resume exactly."""

from . import cifar, cifar10dvs, digits, digits_dvs, dvsgesture, folder  # noqa: F401  (register the datasets)
from .loader import ResumableSampler, build_loader
from .registry import InputSpec, build_dataset, dataset_names, model_input, register_dataset

__all__ = ["InputSpec", "ResumableSampler", "build_dataset", "build_loader", "dataset_names", "model_input",
           "register_dataset"]
