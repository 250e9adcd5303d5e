"""Neurons, stems and datasets outside the package are chosen from a config by an import path."""

from __future__ import annotations

import textwrap

import pytest
import torch

from spikformer.config import load_config
from spikformer.data import build_dataset
from spikformer.errors import ConfigError
from spikformer.models import build_model, resolve_config

PLUGIN = """
import torch
from torch import nn
from torch.utils.data import TensorDataset

from spikformer.layers import build_sps
from spikformer.neurons import SpikingNeuron
from spikformer.neurons.surrogate import spike


class IntegrateAndFire(SpikingNeuron):
    def __init__(self, v_threshold: float = 1.0, surrogate_alpha: float = 4.0) -> None:
        super().__init__()
        self.v_threshold, self.surrogate_alpha = v_threshold, surrogate_alpha

    def multistep(self, x):
        v, spikes = torch.zeros_like(x[0]), []
        for t in range(x.shape[0]):
            h = v + x[t]
            s = spike(h - self.v_threshold, self.surrogate_alpha)
            v = h * (1.0 - s.detach())
            spikes.append(s)
        return torch.stack(spikes)


class NotANeuron(nn.Module):
    pass


STEMS_BUILT = []


def counted_sps(in_chans, embed_dim, patch_size, neuron="lif"):
    STEMS_BUILT.append(embed_dim)
    return build_sps(in_chans, embed_dim, patch_size, neuron)


def noise(config, split):
    n = 6 if split == "train" else 4
    data = TensorDataset(torch.rand(n, config.model.in_chans, config.model.img_size, config.model.img_size),
                         torch.arange(n) % 3)
    data.num_classes = 3
    return data
"""

TINY = [
    "model.embed_dim=16",
    "model.num_heads=2",
    "model.depth=1",
    "model.T=2",
    "model.img_size=8",
    "model.patch_size=4",
    "model.num_classes=3",
]


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / "my_spiking_plugin.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    return importlib.import_module("my_spiking_plugin")


@pytest.mark.parametrize("path", ["my_spiking_plugin:IntegrateAndFire", "my_spiking_plugin.IntegrateAndFire"])
def test_a_neuron_outside_the_package_is_chosen_by_its_import_path(plugin, path):
    config = resolve_config(load_config("digits", [*TINY, f"model.neuron={path}"]))
    model = build_model(config.model)
    neurons = [m for m in model.modules() if isinstance(m, plugin.IntegrateAndFire)]
    assert len(neurons) > 5
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 3)


def test_a_stem_and_a_dataset_outside_the_package_are_chosen_by_their_import_paths(plugin):
    config = resolve_config(
        load_config("digits", [*TINY, "model.stem=my_spiking_plugin:counted_sps", "data.name=my_spiking_plugin:noise"])
    )
    build_model(config.model)
    assert plugin.STEMS_BUILT and set(plugin.STEMS_BUILT) == {16}
    assert len(build_dataset(config, "train")) == 6


def test_an_import_path_that_does_not_import_names_the_fix(plugin):
    with pytest.raises(ConfigError, match="neuron 'no_such_module_here:IF' cannot be imported.*PYTHONPATH"):
        resolve_config(load_config("digits", [*TINY, "model.neuron=no_such_module_here:IF"]))
    with pytest.raises(ConfigError, match="not a spikformer.neurons.SpikingNeuron"):
        resolve_config(load_config("digits", [*TINY, "model.neuron=my_spiking_plugin.NotANeuron"]))
    config = resolve_config(load_config("digits", [*TINY, "data.name=my_spiking_plugin:nothing"]))
    with pytest.raises(ConfigError, match="dataset data.name='my_spiking_plugin:nothing' cannot be imported"):
        build_dataset(config, "train")
