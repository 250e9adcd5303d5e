"""NIR graphs from ``export_nir`` at its defaults run in other tools' importers (snnTorch's ``import_from_nir``,
SpikingJelly 2.x's ``nir_exchange.import_from_nir``) after ``nir.write``/``nir.read``, and fire the model's
spikes exactly, for every registered variant."""

from __future__ import annotations

import functools
from importlib import metadata

import numpy as np
import pytest
import torch

import spikformer
from spikformer.export import NIR_DT, ExportError, export_nir, import_nir, inference_model

nir = pytest.importorskip("nir")

VARIANTS = spikformer.list_models()


@functools.cache
def tiny_variant(name: str) -> torch.nn.Module:
    """``name`` at test size, with BatchNorm statistics of its own activity so that neurons fire (built once per
    variant: the tests only read it, export and ``inference_model`` work on copies)."""
    model = spikformer.create_model(name, embed_dim=16, depth=1, num_heads=2, T=3, img_size=32)
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # running statistics := this batch's: eval behaves like training
    model.train()
    with torch.no_grad():
        model(model_input(model, batch=4))
    return model.eval()


def model_input(model: torch.nn.Module, batch: int) -> torch.Tensor:
    """Images ``[B, C, H, W]`` for image models, 0/1 event frames ``[B, T, 2, H, W]`` for event models."""
    generator = torch.Generator().manual_seed(1)
    size = (model.in_chans, model.img_size, model.img_size)
    if model.in_chans == 2:
        return (torch.rand(batch, model.T, *size, generator=generator) < 0.3).float()
    return torch.randn(batch, *size, generator=generator)


def stem_spikes(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the model's stem emits, ``[T, B, D, h, w]``: the tokens as the map the NIR graph writes."""
    net = inference_model(model)
    with torch.no_grad():
        tokens = net.patch_embed(net.time_first(x))  # [T, B, N, D]
    T, B, N, D = tokens.shape
    side = int(N**0.5)
    return tokens.transpose(-1, -2).reshape(T, B, D, side, side)


def step_inputs(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The graph's input at each of the ``T`` steps: the image every step, or frame ``t``."""
    return [x[:, t] for t in range(model.T)] if x.ndim == 5 else [x] * model.T


def written_and_read(model: torch.nn.Module, tmp_path) -> nir.NIRGraph:
    export_nir(model, tmp_path / "model.nir", partial=True)
    return nir.read(str(tmp_path / "model.nir"))


def run_steps(module: torch.nn.Module, inputs: list[torch.Tensor]) -> torch.Tensor:
    """Run an importer's module (``forward(x, state) -> (y, state)``, nirtorch's convention) step by step."""
    state, outputs = None, []
    with torch.no_grad():
        for x in inputs:
            y, state = module(x, state)
            outputs.append(y)
    return torch.stack(outputs)


@pytest.mark.parametrize("name", VARIANTS)
def test_snntorch_import_fires_the_model_s_spikes(name, tmp_path):
    pytest.importorskip("snntorch")
    from snntorch.import_nir import import_from_nir

    model = tiny_variant(name)
    x = model_input(model, batch=2)
    expected = stem_spikes(model, x)
    got = run_steps(import_from_nir(written_and_read(model, tmp_path)), step_inputs(model, x))
    assert expected.sum() > 0
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def spikingjelly_2():
    pytest.importorskip("spikingjelly")
    try:
        from spikingjelly.activation_based.nir_exchange import import_from_nir
    except ImportError:
        pytest.skip(f"SpikingJelly {metadata.version('spikingjelly')} has no NIR importer (2.x has)")
    return import_from_nir


@pytest.mark.parametrize("name", VARIANTS)
def test_spikingjelly_2_import_fires_the_model_s_spikes(name, tmp_path):
    import_from_nir = spikingjelly_2()
    model = tiny_variant(name)
    x = model_input(model, batch=2)
    expected = stem_spikes(model, x)
    got = run_steps(import_from_nir(written_and_read(model, tmp_path)), step_inputs(model, x))
    assert expected.sum() > 0
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", VARIANTS)
def test_import_nir_reads_the_graph_back_into_our_modules_with_the_model_s_spikes(name, tmp_path):
    model = tiny_variant(name)
    x = model_input(model, batch=2)
    export_nir(model, tmp_path / "model.nir", partial=True)
    network = import_nir(tmp_path / "model.nir")  # dt from the file's metadata
    with torch.no_grad():
        got = network(torch.stack(step_inputs(model, x)))
    torch.testing.assert_close(got, stem_spikes(model, x), rtol=0, atol=0)


def test_import_nir_runs_pooling_flatten_and_affine_heads_like_torch():
    weight = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
    nodes = {
        "input": nir.Input({"input": np.array([4, 2, 2])}),
        "pool": nir.AvgPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
        "flat": nir.Flatten({"input": np.array([4, 1, 1])}, start_dim=0),
        "head": nir.Affine(weight=weight, bias=np.ones(3, dtype=np.float32)),
        "output": nir.Output({"output": np.array([3])}),
    }
    edges = [("input", "pool"), ("pool", "flat"), ("flat", "head"), ("head", "output")]
    x = torch.rand(2, 5, 4, 2, 2)  # [T, B, C, H, W]
    with torch.no_grad():
        got = import_nir(nir.NIRGraph(nodes=nodes, edges=edges))(x)
    expected = x.mean((-1, -2)) @ torch.from_numpy(weight).T + 1
    torch.testing.assert_close(got, expected)


def test_import_nir_names_a_node_it_cannot_read():
    nodes = {
        "input": nir.Input({"input": np.array([3])}),
        "delay": nir.Delay(delay=np.ones(3, dtype=np.float32)),
        "output": nir.Output({"output": np.array([3])}),
    }
    graph = nir.NIRGraph(nodes=nodes, edges=[("input", "delay"), ("delay", "output")])
    with pytest.raises(ExportError, match="NIR node delay is a Delay"):
        import_nir(graph)


@pytest.mark.parametrize("name", VARIANTS)
def test_nir_graph_stops_at_the_first_attention_with_one_edge_into_the_output(name):
    graph = export_nir(tiny_variant(name), partial=True)
    assert graph.metadata["truncated_at"] == "blocks.0.attn"
    assert graph.metadata["unsupported"].startswith("blocks.0.attn: spiking self-attention multiplies")
    assert [source for source, target in graph.edges if target == "output"] == ["output_sum"]


def test_nir_metadata_reads_back_as_the_strings_written(tmp_path):
    model = tiny_variant("spikformer_cifar_4_256")
    graph = export_nir(model, tmp_path / "model.nir", partial=True)
    back = nir.read(str(tmp_path / "model.nir"))
    assert back.metadata == graph.metadata
    assert all(isinstance(value, str) for value in back.metadata.values())
    assert float(back.metadata["dt"]) == NIR_DT == 1e-4 and back.metadata["T"] == "3"
    assert "tau*dt" in back.metadata["dt_convention"]


def test_nir_lif_time_constants_are_model_steps_times_dt():
    graph = export_nir(tiny_variant("spikformer_cifar_4_256"), partial=True, dt=1e-3)
    lif = graph.nodes["patch_embed.stages.0.lif"]
    np.testing.assert_allclose(np.unique(lif.tau), [2e-3])  # tau = 2 steps of 1 ms
    assert graph.metadata["dt"] == "0.001"
