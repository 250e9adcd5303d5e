"""Datasets by name: ``build_dataset(config, split)``.

A builder is ``fn(config: Config, split: "train" | "val") -> Dataset`` whose items are ``(input, label)``
with ``input`` an image ``[C, H, W]`` or event frames ``[T, C, H, W]`` at the model's input size, and which
exposes ``num_classes``. Builders read what they need from the whole config (the model's input size, T).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

from torch.utils.data import Dataset

from ..errors import ConfigError

DatasetBuilder = Callable[..., Dataset]
_DATASETS: dict[str, DatasetBuilder] = {}
SPLITS = ("train", "val")


def register_dataset(name: str) -> Callable[[DatasetBuilder], DatasetBuilder]:
    def decorator(builder: DatasetBuilder) -> DatasetBuilder:
        _DATASETS[name] = builder
        return builder

    return decorator


def dataset_names() -> list[str]:
    return sorted(_DATASETS)


def model_input(config) -> dict:
    """The model's resolved constructor arguments (``img_size``, ``in_chans``, ``T`` ...) for a config."""
    from ..config import model_overrides
    from ..models.registry import resolve_model_kwargs

    return resolve_model_kwargs(config.model.name, **model_overrides(config.model))


def build_dataset(config, split: str) -> Dataset:
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    name = config.data.name
    if name not in _DATASETS:
        close = difflib.get_close_matches(name, _DATASETS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown dataset data.name={name!r}{hint}; available: {', '.join(dataset_names())}")
    return _DATASETS[name](config, split)
