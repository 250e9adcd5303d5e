"""The neuron is a layer the model receives: chosen by name or class, with options, and everything that looks
at neurons (firing rates, SOPs, BN folding, export) works through ``SpikingNeuron`` alone."""

from __future__ import annotations

import pytest
import torch

import spikformer
from spikformer.analysis import FiringRateRecorder, count_operations
from spikformer.export import ExportError, example_input, export_nir, inference_model
from spikformer.neurons import LIF, ParametricLIF, SpikingNeuron, base, neuron_names, register_neuron, spike

TINY = dict(embed_dim=32, depth=1, num_heads=2, img_size=16, T=2)


class IntegrateAndFire(SpikingNeuron):
    """What a newcomer writes: a neuron without leak, ``V[t] = V[t-1] + X[t]``, hard reset to 0."""

    def __init__(self, v_threshold: float = 1.0) -> None:
        super().__init__()
        self.v_threshold = v_threshold

    def multistep(self, x: torch.Tensor) -> torch.Tensor:
        v, spikes = torch.zeros_like(x[0]), []
        for t in range(x.shape[0]):
            h = v + x[t]
            s = spike(h - self.v_threshold)
            v = h * (1.0 - s.detach())
            spikes.append(s)
        return torch.stack(spikes)


@pytest.fixture
def registry(monkeypatch):
    """A copy of the neuron registry for the test to register into."""
    monkeypatch.setattr(base, "_NEURONS", base._NEURONS.copy())


def neurons_of(model: torch.nn.Module) -> dict[str, SpikingNeuron]:
    return {name: m for name, m in model.named_modules() if isinstance(m, SpikingNeuron)}


def test_lif_and_plif_are_registered_and_lif_is_the_default():
    assert {"lif", "plif"} <= set(neuron_names())
    model = spikformer.create_model("spikformer_cifar_4_256", **TINY)
    assert model.neuron_name == "lif"
    assert all(type(m) is LIF for m in neurons_of(model).values())


@pytest.mark.parametrize("name", neuron_names())
def test_every_registered_neuron_runs_a_model_forward_and_backward(name):
    model = spikformer.create_model("spikformer_cifar_4_256", neuron=name, **TINY)
    neurons = neurons_of(model)
    assert len(neurons) == 12 and model.neuron_name == name
    x = torch.randn(2, 3, 16, 16) * 2
    with FiringRateRecorder(model) as recorder:
        logits = model(x)
    assert logits.shape == (2, 10) and list(recorder.rates()) == list(neurons)
    logits.square().sum().backward()
    assert model.patch_embed.stages[0].conv.weight.grad.abs().sum() > 0


def test_lif_backend_is_the_lif_s_backend_option():
    model = spikformer.create_model("spikformer_cifar_4_256", lif_backend="torch", **TINY)
    assert {m.backend for m in neurons_of(model).values()} == {"torch"}
    same = spikformer.create_model("spikformer_cifar_4_256", neuron_options={"backend": "torch"}, **TINY)
    assert {m.backend for m in neurons_of(same).values()} == {"torch"}
    with pytest.raises(ValueError, match="disagree"):
        spikformer.create_model("spikformer_cifar_4_256", lif_backend="fused", neuron_options={"backend": "torch"},
                                **TINY)


def test_an_unknown_neuron_or_option_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown neuron 'pliff' \(did you mean 'plif'\?\); available: .*lif"):
        spikformer.create_model("spikformer_cifar_4_256", neuron="pliff", **TINY)
    with pytest.raises(ValueError, match=r"neuron 'lif' has no option 'tua' \(did you mean 'tau'\?\); its "
                                         r"neuron_options are: tau, v_threshold"):
        spikformer.create_model("spikformer_cifar_4_256", neuron_options={"tua": 3.0}, **TINY)
    with pytest.raises(ValueError, match="neuron_options must be a mapping"):
        spikformer.create_model("spikformer_cifar_4_256", neuron_options=["tau", 3.0], **TINY)
    with pytest.raises(ValueError, match="LIF tau must be > 1"):  # values are checked by the neuron itself
        spikformer.create_model("spikformer_cifar_4_256", neuron_options={"tau": 0.5}, **TINY)


def test_a_neuron_written_in_one_class_runs_a_model_by_name_and_by_class(registry):
    register_neuron("if")(IntegrateAndFire)
    by_name = spikformer.create_model("spikformer_cifar_4_256", neuron="if", **TINY)
    by_class = spikformer.create_model("spikformer_cifar_4_256", neuron=IntegrateAndFire, **TINY)
    by_class.load_state_dict(by_name.state_dict())
    assert by_class.neuron_name == "IntegrateAndFire"
    thresholds = {name: m.v_threshold for name, m in neurons_of(by_name).items()}
    assert thresholds.pop("blocks.0.attn.attn_lif") == 0.5 and set(thresholds.values()) == {1.0}
    x = torch.randn(2, 3, 16, 16) * 2
    logits = by_name(x)
    assert torch.equal(logits, by_class(x))
    logits.sum().backward()
    assert by_name.patch_embed.stages[0].conv.weight.grad.abs().sum() > 0  # the surrogate carries gradients


def test_firing_rates_and_operations_count_any_neuron():
    lif = spikformer.create_model("spikformer_cifar_4_256", **TINY).eval()
    custom = spikformer.create_model("spikformer_cifar_4_256", neuron=IntegrateAndFire, **TINY).eval()
    x = torch.randn(2, 3, 16, 16) * 2
    with torch.no_grad(), FiringRateRecorder(custom) as recorder:
        custom(x)
    assert list(recorder.rates()) == list(FiringRateRecorder(lif).layers)
    assert any(rate > 0 for rate in recorder.rates().values())
    layers = count_operations(custom, x)
    assert [layer.name for layer in layers] == [layer.name for layer in count_operations(lif, x)]
    assert any(layer.kind == "AC" and layer.sops > 0 for layer in layers)


def test_a_plif_model_exports_with_its_learnt_time_constants():
    pytest.importorskip("nir")
    model = spikformer.create_model("spikformer_cifar_4_256", neuron="plif", **TINY)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, ParametricLIF):
                module.w.uniform_(-1.0, 1.0)
    model.train()(example_input(model, batch=4))
    model.eval()
    x = example_input(model, batch=3)
    with torch.no_grad():
        assert torch.equal(inference_model(model)(x), model.fuse()(x))  # the unrolled PLIF, bit for bit
    graph = export_nir(model, partial=True, dt=1e-3)
    first = graph.nodes["patch_embed.stages.0.lif"]
    tau = model.patch_embed.stages[0].lif.tau
    assert float(first.tau.flat[0]) == pytest.approx(tau * 1e-3) and tau != pytest.approx(2.0)


def test_export_says_which_neuron_it_cannot_write():
    pytest.importorskip("nir")
    model = spikformer.create_model("spikformer_cifar_4_256", neuron=IntegrateAndFire, **TINY).eval()
    with pytest.raises(ExportError, match="IntegrateAndFire neuron has no inference module"):
        inference_model(model)
    with pytest.raises(ExportError, match="patch_embed.stages.0.lif: the IntegrateAndFire neuron has no NIR"):
        export_nir(model)
