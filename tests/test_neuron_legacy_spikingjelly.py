"""The LIF against the neuron the original code ran: SpikingJelly 0.0.0.0.12's ``clock_driven.MultiStepLIFNode``.

SpikingJelly 2.x (the dev extra's) no longer ships ``clock_driven``, so these tests skip in the dev environment;
``.ci/legacy-spikingjelly`` runs them with 0.0.0.0.12 installed into a folder of its own (marker
``legacy_spikingjelly``). Every backend must give its spikes and membrane potential bit for bit and its input
gradients to 1e-6 relative (float32).
"""

from __future__ import annotations

import pytest
import torch

from spikformer.neurons import LIFParams, backend_available, lif_backends, lif_multistep, lif_reference

legacy = pytest.importorskip("spikingjelly.clock_driven.neuron")
pytestmark = pytest.mark.legacy_spikingjelly

BACKENDS = ["auto", *(name for name in lif_backends() if backend_available(name, "cpu", torch.float32))]


def currents(shape, seed: int) -> torch.Tensor:
    """Currents around the threshold, so that neurons fire, stay silent, and integrate over several steps."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 1.5 + 0.7


def spikes_and_input_grad(fn, x: torch.Tensor, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().clone().requires_grad_()
    spikes = fn(x)
    (grad,) = torch.autograd.grad(spikes, x, grad_out)
    return spikes.detach(), grad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("v_threshold", (1.0, 0.5))
@pytest.mark.parametrize("shape", [(6, 2, 16, 12), (4, 16, 64, 32)], ids=["tokens", "images"])
def test_matches_the_legacy_multistep_node_of_the_original_code(backend, v_threshold, shape):
    x, grad_out = currents(shape, seed=2), currents(shape, seed=3)
    params = LIFParams(v_threshold=v_threshold)
    spikes, grad = spikes_and_input_grad(lambda t: lif_multistep(t, params, backend), x, grad_out)
    node = legacy.MultiStepLIFNode(tau=2.0, v_threshold=v_threshold, detach_reset=True, backend="torch")
    legacy_spikes, legacy_grad = spikes_and_input_grad(node, x, grad_out)
    assert torch.equal(spikes, legacy_spikes)
    assert 0 < spikes.mean() < 1
    scale = legacy_grad.abs().max()
    torch.testing.assert_close(grad, legacy_grad, rtol=1e-6, atol=1e-6 * float(scale))
    _, membrane = lif_reference(x, params, return_membrane=True)
    torch.testing.assert_close(membrane, node.v_seq.detach(), rtol=0, atol=0)
