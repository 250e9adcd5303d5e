"""The CPU kernel for the spiking self-attention products: ``(Q K^T) V * scale`` per head of ``[T, B, N, D]``
spike tensors, read in place (no head split or merge copies, no casts). Its values are the unfused path's bit
for bit (integer sums, then the same float32 product with the scale); its gradients are the same products
summed in another order, so they agree to float rounding (and bfloat16's, under autocast)."""

from __future__ import annotations

import copy

import pytest
import torch

from spikformer.fast import attention
from spikformer.fast.attention import fast_spike_products as scaled_spike_attention
from spikformer.fast.kernels import cpu
from spikformer.fast.modules import FastSpikingSelfAttention as SpikingSelfAttention
from spikformer.layers import spike_attention, split_heads

needs_kernel = pytest.mark.skipif(not cpu.spike_attention_vectorised(),
                                  reason="the kernel runs with AVX-512 only (elsewhere PyTorch's is faster)")


def spikes(shape, density, seed, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) < density).to(dtype)


def unfused(q, k, v, num_heads, scale):
    T, B, N, D = q.shape
    out = spike_attention(*(split_heads(t, num_heads) for t in (q, k, v)))
    return (out * scale).transpose(2, 3).reshape(T, B, N, D)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("heads,dim,tokens", [(12, 384, 64), (8, 512, 196), (2, 48, 30), (3, 60, 21)],
                         ids=["d32", "d64", "d24", "d20"])
@pytest.mark.parametrize("density", [0.05, 0.5, 1.0])
@pytest.mark.parametrize("scale", [0.125, 0.3])
def test_the_kernel_gives_the_unfused_products_bit_for_bit(dtype, heads, dim, tokens, density, scale):
    # dense spikes push the sums to N * d (beyond bfloat16's integers); 0.3 is no power of two, so the
    # scale must be applied as one float32 product, as the unfused path applies it
    q, k, v = (spikes((2, 3, tokens, dim), density, seed, dtype) for seed in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        assert attention._attention_kernel_applies(q, k, v, heads)
        got = scaled_spike_attention(q, k, v, heads, scale)
        expected = unfused(q, k, v, heads, scale)
    assert got.dtype == expected.dtype == torch.float32 and got.shape == expected.shape
    assert torch.equal(got, expected)


@needs_kernel
@pytest.mark.parametrize("amp", [False, True], ids=["float32", "bf16_autocast"])
def test_the_kernels_gradients_are_the_unfused_ones_to_rounding(amp):
    torch.manual_seed(0)
    ssa = SpikingSelfAttention(96, 3, qkv_bias=False, scale=0.125).train()
    x = (torch.rand(4, 3, 40, 96) < 0.3).float() * 2
    results = []
    for kernel in (False, True):
        module, xi = copy.deepcopy(ssa), x.clone().requires_grad_()
        original = attention._attention_kernel_applies
        attention._attention_kernel_applies = original if kernel else (lambda *args: False)
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                out = module(xi)
            out.float().pow(2).sum().backward()
        finally:
            attention._attention_kernel_applies = original
        results.append((out, xi.grad, {n: p.grad for n, p in module.named_parameters()}))
    (out_a, grad_a, params_a), (out_b, grad_b, params_b) = results
    assert torch.equal(out_a, out_b)  # the spikes after the attention neuron and the projection
    tolerance = dict(rtol=2e-2, atol=2e-2) if amp else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_b, grad_a, **tolerance)
    for name in params_a:
        scale = params_a[name].abs().max().clamp_min(1e-12)
        torch.testing.assert_close(params_b[name] / scale, params_a[name] / scale, **tolerance)


@needs_kernel
def test_the_kernel_returns_only_the_gradients_asked_for_and_handles_nonbinary_values_exactly():
    q, k, v = (spikes((1, 2, 17, 8), 0.4, seed) * 3 for seed in range(3))  # small integers: sums still exact
    k.requires_grad_()
    out = scaled_spike_attention(q, k, v, 2, 0.25)
    assert torch.equal(out, unfused(q, k, v, 2, 0.25))
    out.sum().backward()
    k_ref = k.detach().clone().requires_grad_()
    unfused(q, k_ref, v, 2, 0.25).sum().backward()
    torch.testing.assert_close(k.grad, k_ref.grad)
    assert q.grad is None and v.grad is None


def test_the_unfused_path_runs_where_the_kernel_would_differ():
    q, k, v = (spikes((1, 2, 8, 32), 0.3, seed) for seed in range(3))
    assert not attention._attention_kernel_applies(q, k, v, 2)  # N <= d: the unfused path takes (Q K^T) V
    q, k, v = (spikes((1, 2, 40, 32), 0.3, seed, torch.bfloat16) for seed in range(3))
    assert not attention._attention_kernel_applies(q, k, v, 2)  # bfloat16 without autocast returns bfloat16
    assert not attention._attention_kernel_applies(q.double(), k.double(), v.double(), 2)
    assert not attention._attention_kernel_applies(q.float().transpose(2, 3), k.float(), v.float(), 2)


@needs_kernel
@pytest.mark.parametrize("threads", [1, 3])
def test_the_kernel_splits_samples_over_threads_without_changing_a_bit(threads):
    q, k, v = (spikes((2, 5, 64, 64), 0.2, seed).requires_grad_() for seed in range(3))
    grad = torch.randn(2, 5, 64, 64)
    before = torch.get_num_threads()
    results = []
    try:
        for n in (1, threads):
            torch.set_num_threads(n)
            qi, ki, vi = (t.detach().clone().requires_grad_() for t in (q, k, v))
            out = scaled_spike_attention(qi, ki, vi, 4, 0.125)
            out.backward(grad)
            results.append((out, qi.grad, ki.grad, vi.grad))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(*results))
