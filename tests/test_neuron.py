"""The multi-step LIF neuron against SpikingJelly, the field's reference implementation (SPEC §1).

Every registered backend must reproduce SpikingJelly's ``LIFNode(tau=2, detach_reset=True, step_mode='m',
surrogate=Sigmoid(alpha=4))`` (SpikingJelly 2.x, the dev extra's, or 0.0.0.0.14): the same spikes bit for bit, the
same membrane potential, the same input gradients to 1e-6 relative in float32. The legacy ``MultiStepLIFNode`` of
0.0.0.0.12, which the original code used, is the oracle of ``test_neuron_legacy_spikingjelly.py``.
"""

from __future__ import annotations

import pytest
import torch

from spikformer.neurons import LIF, LIFParams, backend_available, lif_backends, lif_multistep, lif_reference

sj_neuron = pytest.importorskip("spikingjelly.activation_based.neuron")
sj_surrogate = pytest.importorskip("spikingjelly.activation_based.surrogate")

# The backends that run here (the Triton one needs a CUDA device).
BACKENDS = [name for name in lif_backends() if backend_available(name, "cpu", torch.float32)]
THRESHOLDS = (1.0, 0.5)  # every LIF of the model, and the attention LIF after Q K^T V
# Time first, then 1 to 5 trailing dimensions (tokens [T, B, N, D] and images [T, B, C, H, W] among them).
SHAPES = ((7, 33), (5, 4, 9), (4, 2, 6, 8), (4, 2, 3, 5, 5), (3, 2, 2, 3, 4, 4))


def spikingjelly_lif(v_threshold: float, detach_reset: bool = True):
    return sj_neuron.LIFNode(tau=2.0, v_threshold=v_threshold, detach_reset=detach_reset, step_mode="m",
                             surrogate_function=sj_surrogate.Sigmoid(alpha=4.0), store_v_seq=True)


def random_input(shape, dtype=torch.float32, seed=0) -> torch.Tensor:
    """Currents around the threshold, so that neurons fire, stay silent, and integrate over several steps."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator) * 1.5 + 0.7).to(dtype)


def input_grad(fn, x: torch.Tensor, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().clone().requires_grad_()
    spikes = fn(x)
    (grad,) = torch.autograd.grad(spikes, x, grad_out)
    return spikes.detach(), grad


def assert_relative_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-6) -> None:
    """Element-wise within ``rel`` of the largest expected magnitude (sums of surrogate terms can cancel)."""
    scale = expected.abs().max().clamp_min(1e-30)
    torch.testing.assert_close(actual, expected, rtol=rel, atol=rel * float(scale))


def test_registry_holds_the_torch_oracle_and_a_fast_backend():
    assert "torch" in BACKENDS and len(BACKENDS) >= 2


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("v_threshold", THRESHOLDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_spikes_and_input_gradients_match_spikingjelly(backend, v_threshold, shape):
    x = random_input(shape)
    grad_out = random_input(shape, seed=1)
    params = LIFParams(v_threshold=v_threshold)
    spikes, grad = input_grad(lambda t: lif_multistep(t, params, backend), x, grad_out)
    sj_spikes, sj_grad = input_grad(spikingjelly_lif(v_threshold), x, grad_out)
    assert torch.equal(spikes, sj_spikes)
    assert 0 < spikes.mean() < 1  # the comparison covers both firing and silent neurons
    assert_relative_close(grad, sj_grad)


@pytest.mark.parametrize("v_threshold", THRESHOLDS)
@pytest.mark.parametrize("shape", SHAPES[:3], ids=lambda s: "x".join(map(str, s)))
def test_membrane_potential_after_reset_matches_spikingjelly(v_threshold, shape):
    x = random_input(shape, seed=4)
    spikes, membrane = lif_reference(x, LIFParams(v_threshold=v_threshold), return_membrane=True)
    node = spikingjelly_lif(v_threshold)
    with torch.no_grad():
        node(x)
    torch.testing.assert_close(membrane, node.v_seq, rtol=0, atol=0)
    # A neuron that fired sits exactly at V_reset = 0; one that did not is below the threshold.
    assert torch.all(membrane[spikes.bool()] == 0)
    assert torch.all(membrane[~spikes.bool()] < v_threshold)


def test_membrane_follows_the_charge_fire_reset_equations_by_hand():
    # One neuron, tau=2: H = V + (X - V)/2, spike when H >= 1, then V = 0.
    x = torch.tensor([1.5, 1.5, 0.0, 4.0])
    spikes, membrane = lif_reference(x.view(4, 1), LIFParams(), return_membrane=True)
    assert spikes.flatten().tolist() == [0.0, 1.0, 0.0, 1.0]  # H = 0.75, 1.125, 0, 2.0
    assert membrane.flatten().tolist() == [0.75, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_matches_spikingjelly(backend):
    shape = (5, 3, 40)
    x = random_input(shape, torch.float64, seed=5)
    grad_out = random_input(shape, torch.float64, seed=6)
    spikes, grad = input_grad(lambda t: lif_multistep(t, LIFParams(), backend), x, grad_out)
    sj_spikes, sj_grad = input_grad(spikingjelly_lif(1.0), x, grad_out)
    assert spikes.dtype == torch.float64
    assert torch.equal(spikes, sj_spikes)
    assert_relative_close(grad, sj_grad, rel=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_gives_binary_spikes_of_the_input_dtype(backend, dtype):
    x = random_input((4, 3, 50), dtype, seed=7).requires_grad_()
    spikes = lif_multistep(x, LIFParams(), backend)
    assert spikes.dtype == dtype and spikes.shape == x.shape
    assert set(spikes.unique().tolist()) == {0.0, 1.0}
    spikes.sum().backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()
    # The same arithmetic in the same dtype: every backend agrees with the oracle exactly.
    assert torch.equal(spikes.detach(), lif_multistep(x.detach(), LIFParams(), "torch"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_forward_starts_from_rest(backend):
    lif = LIF(backend=backend)
    x = random_input((4, 2, 30), seed=8)
    first = lif(x)
    lif(torch.full_like(x, 10.0))  # a call that leaves every neuron freshly charged and fired
    assert torch.equal(lif(x), first)
    # A single step from rest: H = X / tau, so only inputs >= 2 fire.
    step = lif(x[:1])
    assert torch.equal(step, (x[:1] / 2 >= 1).float())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("v_threshold", THRESHOLDS)
def test_gradient_without_detached_reset_matches_autograd_of_the_oracle(backend, v_threshold):
    shape = (6, 3, 20)
    x, grad_out = random_input(shape, seed=9), random_input(shape, seed=10)
    params = LIFParams(v_threshold=v_threshold, detach_reset=False)
    spikes, grad = input_grad(lambda t: lif_multistep(t, params, backend), x, grad_out)
    ref_spikes, ref_grad = input_grad(lambda t: lif_reference(t, params), x, grad_out)
    assert torch.equal(spikes, ref_spikes)
    assert_relative_close(grad, ref_grad)
    # The reset path contributes gradient: it differs from the detached version.
    _, detached = input_grad(lambda t: lif_multistep(t, LIFParams(v_threshold=v_threshold), backend), x, grad_out)
    assert not torch.allclose(grad, detached)
    # ... and it is SpikingJelly's as well.
    _, sj_grad = input_grad(spikingjelly_lif(v_threshold, detach_reset=False), x, grad_out)
    assert_relative_close(grad, sj_grad)


def test_surrogate_gradient_is_the_sigmoid_derivative_with_alpha_4():
    # One step from rest: H = X / 2, dS/dX = sg'(4 (H - 1)) * 4 / 2.
    x = torch.linspace(-1.0, 5.0, 25, dtype=torch.float64).view(1, -1).requires_grad_()
    lif_reference(x).sum().backward()
    sg = torch.sigmoid(4.0 * (x.detach() / 2 - 1))
    torch.testing.assert_close(x.grad, 4.0 * sg * (1 - sg) / 2)


def test_unknown_backend_names_the_available_ones():
    with pytest.raises(ValueError, match="available: .*torch"):
        lif_multistep(torch.zeros(2, 3), LIFParams(), backend="nope")


def test_invalid_constants_are_rejected():
    with pytest.raises(ValueError, match="tau"):
        LIFParams(tau=1.0)
    with pytest.raises(ValueError, match="surrogate_alpha"):
        LIFParams(surrogate_alpha=0.0)
