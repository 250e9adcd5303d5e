"""Parametric LIF (Fang et al. 2021) against SpikingJelly's ``ParametricLIFNode``, and in a whole model.

The neuron must reproduce ``ParametricLIFNode(decay_input=True, surrogate=Sigmoid(alpha=4), step_mode='m')``
with a hard reset: the same spikes bit for bit, the same membrane potential, the same gradients of the input
and of the time-constant parameter ``w`` (``1/tau = sigmoid(w)``).
"""

from __future__ import annotations

import math

import pytest
import torch

import spikformer
from spikformer.neurons import LIF, ParametricLIF, SpikingNeuron, plif_reference

sj_neuron = pytest.importorskip("spikingjelly.activation_based.neuron")
sj_surrogate = pytest.importorskip("spikingjelly.activation_based.surrogate")

# (init_tau, v_threshold, v_reset, detach_reset): the model's neurons, the attention neuron, a slower
# neuron, and the reset path left in the graph
CASES = [(2.0, 1.0, 0.0, True), (2.0, 0.5, 0.0, True), (3.0, 1.0, 0.0, True), (2.0, 1.0, 0.0, False),
         (1.5, 1.0, -0.3, True)]
TINY = dict(embed_dim=32, depth=1, num_heads=2, img_size=16, T=2)


def random_input(shape, seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator) * 1.5 + 0.7


def spikingjelly_plif(init_tau, v_threshold, v_reset, detach_reset):
    return sj_neuron.ParametricLIFNode(init_tau=init_tau, v_threshold=v_threshold, v_reset=v_reset,
                                       detach_reset=detach_reset, step_mode="m", store_v_seq=True,
                                       surrogate_function=sj_surrogate.Sigmoid(alpha=4.0))


def run(node, x: torch.Tensor, grad_out: torch.Tensor):
    """Spikes, input gradient and ``w``'s gradient of one forward/backward pass."""
    x = x.detach().clone().requires_grad_()
    spikes = node(x)
    spikes.backward(grad_out)
    return spikes.detach(), x.grad, node.w.grad


def assert_relative_close(actual, expected, rel):
    scale = expected.abs().max().clamp_min(1e-30)
    torch.testing.assert_close(actual, expected, rtol=rel, atol=rel * float(scale))


@pytest.mark.parametrize("init_tau, v_threshold, v_reset, detach_reset", CASES)
@pytest.mark.parametrize("shape", [(6, 40), (4, 2, 8, 16)], ids=lambda s: "x".join(map(str, s)))
def test_spikes_and_gradients_match_spikingjelly(init_tau, v_threshold, v_reset, detach_reset, shape):
    ours = ParametricLIF(init_tau, v_threshold, v_reset, detach_reset)
    reference = spikingjelly_plif(init_tau, v_threshold, v_reset, detach_reset)
    x, grad_out = random_input(shape), random_input(shape, seed=1)
    spikes, grad_x, grad_w = run(ours, x, grad_out)
    sj_spikes, sj_grad_x, sj_grad_w = run(reference, x, grad_out)
    assert torch.equal(spikes, sj_spikes)
    assert 0 < spikes.mean() < 1  # both firing and silent neurons are compared
    assert_relative_close(grad_x, sj_grad_x, 1e-6)
    assert grad_w.shape == sj_grad_w.shape == () and grad_w != 0
    assert_relative_close(grad_w, sj_grad_w, 1e-5)  # one sum over every neuron and step: summation order


def test_a_learnt_time_constant_matches_spikingjelly_too():
    ours, reference = ParametricLIF(), spikingjelly_plif(2.0, 1.0, 0.0, True)
    with torch.no_grad():
        ours.w.fill_(0.7)  # tau = 1 + exp(-0.7) ~ 1.5, as after some training
        reference.w.fill_(0.7)
    x, grad_out = random_input((5, 3, 30), seed=2), random_input((5, 3, 30), seed=3)
    spikes, grad_x, grad_w = run(ours, x, grad_out)
    sj_spikes, sj_grad_x, sj_grad_w = run(reference, x, grad_out)
    assert torch.equal(spikes, sj_spikes)
    assert_relative_close(grad_x, sj_grad_x, 1e-6)
    assert_relative_close(grad_w, sj_grad_w, 1e-5)
    assert ours.tau == pytest.approx(1 + math.exp(-0.7))


@pytest.mark.parametrize("init_tau, v_threshold, v_reset, detach_reset", CASES[:3])
def test_membrane_potential_after_reset_matches_spikingjelly(init_tau, v_threshold, v_reset, detach_reset):
    x = random_input((6, 2, 20), seed=4)
    ours = ParametricLIF(init_tau, v_threshold, v_reset, detach_reset)
    spikes, membrane = plif_reference(x, ours.w, v_threshold, v_reset, detach_reset, return_membrane=True)
    reference = spikingjelly_plif(init_tau, v_threshold, v_reset, detach_reset)
    with torch.no_grad():
        reference(x)
    torch.testing.assert_close(membrane, reference.v_seq, rtol=0, atol=0)
    assert torch.all(membrane[spikes.bool()] == v_reset)


def test_w_starts_where_spikingjelly_puts_it_and_tau_2_is_exactly_lif():
    assert float(ParametricLIF(init_tau=3.0).w.detach()) == pytest.approx(-math.log(2.0))
    assert float(ParametricLIF().w.detach()) == 0.0  # sigmoid(0) = 1/2 = 1/tau
    x, grad_out = random_input((6, 3, 50), seed=5), random_input((6, 3, 50), seed=6)
    spikes, grad_x, _ = run(ParametricLIF(), x, grad_out)
    lif_x = x.clone().requires_grad_()
    lif_spikes = LIF(backend="torch")(lif_x)
    lif_spikes.backward(grad_out)
    assert torch.equal(spikes, lif_spikes.detach())  # x * 0.5 and x / 2 round alike
    torch.testing.assert_close(grad_x, lif_x.grad, rtol=0, atol=0)


def test_invalid_constants_are_rejected():
    with pytest.raises(ValueError, match="init_tau must be > 1"):
        ParametricLIF(init_tau=1.0)
    with pytest.raises(ValueError, match="surrogate_alpha"):
        ParametricLIF(surrogate_alpha=0.0)


# --- in a model -------------------------------------------------------------------------------------


def neuron_layers(model: torch.nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, SpikingNeuron)]


@pytest.mark.parametrize("name", ["spikformer_cifar_4_256", "spikformer_v2_8_384"])
def test_a_plif_model_has_one_parameter_more_per_neuron_layer(name):
    lif = spikformer.create_model(name, **TINY)
    plif = spikformer.create_model(name, neuron="plif", **TINY)
    layers = neuron_layers(plif)
    assert layers == neuron_layers(lif) and len(layers) >= 12
    assert all(isinstance(module, ParametricLIF) for module in plif.modules() if isinstance(module, SpikingNeuron))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(plif) == count(lif) + len(layers)
    extra = set(plif.state_dict()) - set(lif.state_dict())
    assert extra == {f"{layer}.w" for layer in layers}


def test_a_plif_model_trains_a_step_and_every_time_constant_learns():
    torch.manual_seed(0)
    # one head over 64 tokens and 4 steps: enough coincident Q, K, V spikes that the attention neuron fires at
    # initialisation, so the projection after it sees spikes (a silent one gives its w no gradient, LIF or not)
    model = spikformer.create_model("spikformer_cifar_4_256", neuron="plif", embed_dim=32, depth=1, num_heads=1,
                                    img_size=32, T=4).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = {name: float(p.detach()) for name, p in model.named_parameters() if name.endswith(".w")}
    assert len(before) == 12
    logits = model(torch.randn(4, 3, 32, 32) * 2)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    for name in before:
        grad = model.get_parameter(name).grad
        assert grad is not None and grad != 0, f"{name} has no gradient"
    optimizer.step()
    assert all(float(model.get_parameter(name).detach()) != value for name, value in before.items())


def test_neuron_options_reach_every_neuron_and_the_attention_neuron_keeps_its_threshold():
    model = spikformer.create_model("spikformer_cifar_4_256", neuron="plif", neuron_options={"init_tau": 3.0},
                                    **TINY)
    taus = {name: module.tau for name, module in model.named_modules() if isinstance(module, ParametricLIF)}
    assert all(tau == pytest.approx(3.0) for tau in taus.values())
    thresholds = {name: m.v_threshold for name, m in model.named_modules() if isinstance(m, SpikingNeuron)}
    assert thresholds.pop("blocks.0.attn.attn_lif") == 0.5
    assert set(thresholds.values()) == {1.0}


def test_a_fused_plif_model_keeps_its_eval_outputs():
    model = spikformer.create_model("spikformer_cifar_4_256", neuron="plif", **TINY)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, ParametricLIF):
                module.w.uniform_(-1.0, 1.0)  # a different time constant in every layer
    model.train()(torch.randn(4, 3, 16, 16))
    model.eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)
        fused = model.fuse()(x)
    torch.testing.assert_close(fused, expected, rtol=1e-4, atol=1e-5)


def test_lif_backend_does_not_apply_to_plif():
    with pytest.raises(ValueError, match="no backend option"):
        spikformer.create_model("spikformer_cifar_4_256", neuron="plif", lif_backend="torch", **TINY)
