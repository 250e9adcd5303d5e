"""NeuroBench's own Benchmark and metrics measure a Spikformer through ``spikformer.analysis.neurobench``:
activation sparsity from the spiking neurons, the SSA products reported beside its synaptic operations, its
per-layer counts equal to ours where the two conventions agree, and its footprint and connection sparsity
equal to ``spikformer analyze``'s."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import spikformer
from spikformer.analysis import calibrate_batchnorm, count_operations
from spikformer.analysis.footprint import static_figures
from spikformer.neurons import SpikingNeuron

pytest.importorskip("neurobench")
from neurobench.benchmarks import Benchmark  # noqa: E402
from neurobench.metrics.static import ConnectionSparsity, Footprint, ParameterCount  # noqa: E402
from neurobench.metrics.workload import ActivationSparsity, SynapticOperations  # noqa: E402
from neurobench.models import TorchModel  # noqa: E402

from spikformer.analysis.neurobench import (  # noqa: E402
    AttentionSynapticOperations,
    SpikformerModel,
    neurobench_layer_operations,
    spikformer_metrics,
)


@pytest.fixture(scope="module")
def model_and_images():
    torch.manual_seed(0)
    model = spikformer.create_model(
        "spikformer_cifar_4_256", embed_dim=32, depth=1, num_heads=2, num_classes=4, T=2, img_size=16
    )
    images = torch.randn(4, 3, 16, 16)
    calibrate_batchnorm(model, [images])
    return model.eval(), images


def run_benchmark(model, images, metrics=None):
    loader = DataLoader(TensorDataset(images, torch.zeros(len(images), dtype=torch.long)), batch_size=2)
    return Benchmark(model, loader, [], [], metrics or spikformer_metrics()).run(quiet=True)


def spike_counts(model, images) -> tuple[int, int]:
    """Non-zero outputs and outputs of every spiking neuron layer."""
    counts = [0, 0]

    def hook(module, inputs, output):
        counts[0] += int(torch.count_nonzero(output))
        counts[1] += output.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, SpikingNeuron)]
    with torch.no_grad():
        model(images)
    for handle in handles:
        handle.remove()
    return counts[0], counts[1]


def test_activation_sparsity_is_the_share_of_silent_neuron_outputs(model_and_images):
    model, images = model_and_images
    results = run_benchmark(SpikformerModel(model), images)
    spikes, outputs = spike_counts(model, images)
    assert 0.5 < results["ActivationSparsity"] < 1
    assert results["ActivationSparsity"] == pytest.approx(1 - spikes / outputs)
    # NeuroBench's plain TorchModel finds no activation module in a Spikformer and reads 0.0:
    plain = run_benchmark(TorchModel(model), images, [[], [ActivationSparsity]])
    assert plain["ActivationSparsity"] == 0.0


def test_attention_products_are_reported_beside_neurobench_s_synaptic_operations(model_and_images):
    model, images = model_and_images
    results = run_benchmark(SpikformerModel(model), images)
    ours = count_operations(model, images)
    products = sum(layer.sops for layer in ours if "@" in layer.name)
    assert products > 0
    assert results["AttentionSynapticOperations"] == pytest.approx(products)


def test_per_layer_counts_add_up_to_neurobench_s_synaptic_operations(model_and_images):
    model, images = model_and_images
    results = run_benchmark(SpikformerModel(model), images[:2], [[], [SynapticOperations]])
    layers = neurobench_layer_operations(model, images[:2])
    total = results["SynapticOperations"]
    assert sum(layer.acs for layer in layers) == pytest.approx(total["Effective_ACs"])
    assert sum(layer.macs for layer in layers) == pytest.approx(total["Effective_MACs"])


def test_neurobench_and_our_counter_agree_on_every_layer_fed_zero_one_spikes(model_and_images):
    model, images = model_and_images
    theirs = {layer.name: layer for layer in neurobench_layer_operations(model, images)}
    ours = {layer.name: layer for layer in count_operations(model, images)}
    binary = [name for name, layer in theirs.items() if layer.macs == 0]
    # the stem's convs after the first (padded borders included), the projection, fc2
    assert {
        "patch_embed.stages.1.conv",
        "patch_embed.rpe.conv",
        "blocks.0.attn.proj.linear",
        "blocks.0.mlp.fc2.linear",
    } <= set(binary)
    for name in binary:
        assert ours[name].kind == "AC"
        assert ours[name].sops == pytest.approx(theirs[name].acs, rel=1e-9), name


def test_integer_residual_stream_counts_its_value_in_ours_and_once_as_a_mac_in_neurobench(model_and_images):
    model, images = model_and_images
    theirs = {layer.name: layer for layer in neurobench_layer_operations(model, images)}
    ours = {layer.name: layer for layer in count_operations(model, images)}
    q = "blocks.0.attn.q.linear"  # fed x + RPE(x), values 0, 1, 2
    assert theirs[q].macs > 0 and theirs[q].acs == 0 and ours[q].kind == "AC"
    assert ours[q].sops > theirs[q].macs  # a 2 is two accumulates for us, one non-zero input for NeuroBench


def test_footprint_and_connection_sparsity_equal_neurobench_s(model_and_images):
    model, images = model_and_images
    model = spikformer.create_model(
        "spikformer_cifar_4_256", embed_dim=32, depth=1, num_heads=2, num_classes=4, img_size=16
    )
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:
                p[p.abs() < 0.01] = 0  # prune: some connections are zero
    results = run_benchmark(SpikformerModel(model), images[:2], [[Footprint, ConnectionSparsity, ParameterCount], []])
    figures = static_figures(model)
    assert figures.footprint_bytes == results["Footprint"]
    assert figures.parameters == results["ParameterCount"]
    assert 0.01 < figures.connection_sparsity < 0.5
    assert round(figures.connection_sparsity, 4) == results["ConnectionSparsity"]


def test_attention_metric_names_the_wrapper_it_needs(model_and_images):
    model, images = model_and_images
    with pytest.raises(TypeError, match="SpikformerModel"):
        AttentionSynapticOperations()(TorchModel(model), None, (images, None))
