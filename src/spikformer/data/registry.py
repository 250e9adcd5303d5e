"""Datasets by name: ``build_dataset(config, split, inputs=None)``.

A builder is ``fn(config: Config, split: "train" | "val") -> Dataset`` whose items are ``(input, label)``
with ``input`` an image ``[C, H, W]`` or event frames ``[T, C, H, W]`` at the model's input size, and which
exposes ``num_classes``. The model's input is an ``InputSpec`` (``model_input(config)``): it comes from a
resolved config (``spikformer.models.resolve_config``, which every run calls) or is passed in; data/ never
asks the model registry.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from torch.utils.data import Dataset

from ..errors import ConfigError
from ..registry import Registry

DatasetBuilder = Callable[..., Dataset]
_DATASETS: Registry[DatasetBuilder] = Registry("dataset", error=ConfigError, importable=True)
SPLITS = ("train", "val")


@dataclass(frozen=True)
class InputSpec:
    """What a dataset needs of the model: square input size, channels, time steps (event frames per sample)
    and, when the model fixes it, the number of classes (None: the dataset's own)."""

    img_size: int
    in_chans: int
    T: int
    num_classes: int | None = None

    def __getitem__(self, key: str):  # builders read model_input(config)["img_size"]
        return getattr(self, key)


def register_dataset(name: str) -> Callable[[DatasetBuilder], DatasetBuilder]:
    return _DATASETS.register(name)


def dataset_names() -> list[str]:
    return _DATASETS.names()


def model_input(config) -> InputSpec:
    """The model's input description from a resolved ``config.model``."""
    model = config.model
    unset = [key for key in ("img_size", "in_chans", "T") if getattr(model, key) is None]
    if unset:
        raise ConfigError(f"model.{unset[0]} is not resolved: datasets take the model's input from a resolved "
                          f"config; call spikformer.models.resolve_config(config) first (every run does), or pass "
                          f"build_dataset(..., inputs=InputSpec(img_size=..., in_chans=..., T=...))")
    return InputSpec(model.img_size, model.in_chans, model.T, model.num_classes)


def build_dataset(config, split: str, inputs: InputSpec | None = None) -> Dataset:
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    builder = _DATASETS.get(config.data.name, where="data.name")
    if inputs is not None:  # the builders read the input from the config: hand them a copy that holds it
        model = dataclasses.replace(config.model, img_size=inputs.img_size, in_chans=inputs.in_chans, T=inputs.T,
                                    num_classes=inputs.num_classes if inputs.num_classes is not None
                                    else config.model.num_classes)
        config = dataclasses.replace(config, model=model)
    return builder(config, split)
