"""bfloat16 end to end: spikes and integer sums stay in bfloat16, the kernels read and write it directly and
compute in float32, so every spike is the float32 oracle's on the same bfloat16 pre-activations."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import spikformer
from spikformer.fast.attention import spike_attention
from spikformer.fast.kernels import cpu
from spikformer.layers import LinearBNLIF, SpikingConvStage
from spikformer.neurons import LIFParams, lif_multistep, lif_reference
from spikformer.neurons.batchnorm import batch_norm_lif

pytestmark = pytest.mark.skipif(not cpu.available(torch.bfloat16), reason="needs the CPU kernel")
HALF = [torch.bfloat16, torch.float16]


def pre_activations(shape, dtype, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * 1.5 + 0.6).to(dtype)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("backend", ["c", "fused", "torch"])
def test_half_precision_lif_fires_exactly_as_float32_on_the_same_values(dtype, backend):
    x = pre_activations((4, 3, 517), dtype)
    spikes = lif_multistep(x, LIFParams(), backend)
    assert spikes.dtype == dtype
    assert torch.equal(spikes.float(), lif_reference(x.float(), LIFParams()))


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_half_precision_lif_gradient_is_the_float32_gradient_rounded_once(dtype):
    x = pre_activations((4, 2048), dtype)
    grad_out = torch.randn(x.shape).to(dtype)
    xc = x.clone().requires_grad_()
    lif_multistep(xc, LIFParams(), "c").backward(grad_out)
    x32 = x.float().requires_grad_()
    lif_reference(x32, LIFParams()).backward(grad_out.float())
    assert xc.grad.dtype == dtype
    # the kernel keeps the backward recursion in float32 and rounds each gradient once, on the way out
    torch.testing.assert_close(xc.grad.float(), x32.grad.to(dtype).float(), rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("kind", ["tokens", "channels_last", "nchw"])
def test_batch_norm_lif_in_bfloat16_matches_the_float32_oracle_on_the_same_pre_activations(kind):
    if kind == "tokens":
        norm, y = nn.BatchNorm1d(24), pre_activations((4, 3, 37, 24), torch.bfloat16) * 3 + 1
    else:
        norm, y = nn.BatchNorm2d(8), pre_activations((4 * 3, 8, 9, 7), torch.bfloat16) * 3 + 1
        if kind == "channels_last":
            y = y.contiguous(memory_format=torch.channels_last)
        y = y.unflatten(0, (4, 3))
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5), norm.bias.uniform_(-0.3, 0.3)
    oracle_norm = type(norm)(norm.num_features)
    oracle_norm.load_state_dict(norm.state_dict())
    grad = torch.randn(y.shape).to(torch.bfloat16)

    y16 = y.detach().clone().requires_grad_()
    spikes = batch_norm_lif(y16, norm, LIFParams(), "c")
    spikes.backward(grad)
    y32 = y.detach().float().requires_grad_()
    expected = batch_norm_lif(y32, oracle_norm, LIFParams(), "torch")
    expected.backward(grad.float())

    assert spikes.dtype == torch.bfloat16 and spikes.stride() == y.stride()  # written in place of a copy
    assert torch.equal(spikes.float(), expected)
    assert torch.equal(norm.running_mean, oracle_norm.running_mean)  # statistics accumulated wider than bf16
    assert torch.equal(norm.running_var, oracle_norm.running_var)
    assert y16.grad.dtype == torch.bfloat16
    scale = float(y32.grad.abs().max())
    torch.testing.assert_close(y16.grad.float(), y32.grad, rtol=2e-2, atol=2e-2 * scale)
    torch.testing.assert_close(norm.weight.grad, oracle_norm.weight.grad, rtol=2e-2, atol=2e-2)


def test_batch_statistics_of_bfloat16_equal_those_of_its_float32_copy():
    y = pre_activations((64, 48), torch.bfloat16) * 5 + 50
    mean16, var16 = cpu.bn_stats(y)
    mean32, var32 = cpu.bn_stats(y.float())
    assert mean16.dtype == torch.float64
    assert torch.equal(mean16, mean32) and torch.equal(var16, var32)


def test_bfloat16_inference_normalises_inside_the_kernel_like_the_float32_oracle():
    stage = SpikingConvStage(3, 8).eval()
    with torch.no_grad():
        stage.bn.running_mean.uniform_(-0.2, 0.2), stage.bn.running_var.uniform_(0.5, 2.0)
    y = (torch.randn(4 * 2, 8, 6, 6) * 2).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    y = y.unflatten(0, (4, 2))
    with torch.no_grad():
        fast = batch_norm_lif(y, stage.bn, LIFParams(), "c")
        oracle = batch_norm_lif(y.float(), stage.bn, LIFParams(), "torch")
    assert fast.dtype == torch.bfloat16
    assert torch.equal(fast.float(), oracle)


class _CopyCounter(TorchDispatchMode):
    """Counts dtype conversions of tensors of at least ``min_numel`` elements, by (from, to)."""

    def __init__(self, min_numel: int) -> None:
        super().__init__()
        self.min_numel, self.casts = min_numel, Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten._to_copy.default and args[0].numel() >= self.min_numel:
            if isinstance(out, torch.Tensor) and out.dtype != args[0].dtype:
                self.casts[(args[0].dtype, out.dtype)] += 1
        return out


def test_spike_attention_under_autocast_casts_one_operand_and_stays_exact():
    q, k, v = ((torch.rand(2, 3, 4, 64, 32) < 0.9).to(torch.bfloat16).requires_grad_() for _ in range(3))
    exact = spike_attention(q.float(), k.float(), v.float())
    assert exact.max() > 256  # beyond bfloat16's integers: the outer product must not round to it
    counter = _CopyCounter(min_numel=q.numel())
    with counter, torch.autocast("cpu", dtype=torch.bfloat16):
        out = spike_attention(q, k, v)
    assert out.dtype == torch.float32 and torch.equal(out, exact)
    assert sum(counter.casts.values()) == 1, counter.casts  # only Q, for the product whose sums reach N*d
    out.sum().backward()
    assert k.grad.dtype == torch.bfloat16 and torch.isfinite(k.grad.float()).all()


def test_a_bfloat16_autocast_step_keeps_spikes_and_integer_sums_in_bfloat16():
    model = spikformer.create_model("spikformer_cifar_4_256", embed_dim=32, depth=1, num_heads=2, img_size=16)
    dtypes = {}
    for name, module in model.named_modules():
        if isinstance(module, LinearBNLIF | SpikingConvStage):
            module.register_forward_hook(lambda m, i, o, name=name: dtypes.__setitem__(name, o.dtype))
    x = torch.randn(2, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = model.forward_features(x)
    assert set(dtypes.values()) == {torch.bfloat16}, dtypes
    assert features.dtype == torch.bfloat16  # the residual stream: small integers, exact in bfloat16
    assert torch.equal(features, features.round())


class _WeightCasts(TorchDispatchMode):
    """Counts, per parameter, its conversions to bfloat16."""

    def __init__(self, params: list[torch.Tensor]) -> None:
        super().__init__()
        self.ptrs, self.casts = {p.data_ptr() for p in params}, Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default and kwargs.get("dtype") == torch.bfloat16:
            if args[0].data_ptr() in self.ptrs:
                self.casts[args[0].data_ptr()] += 1
        return func(*args, **kwargs)


def test_each_weight_is_cast_to_bfloat16_once_per_step():
    model = spikformer.create_model("spikformer_cifar_4_256", embed_dim=32, depth=2, num_heads=2, img_size=16)
    matrices = [p for name, p in model.named_parameters() if name.endswith("weight") and p.ndim > 1]
    counter = _WeightCasts(matrices)
    with counter, torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randn(2, 3, 16, 16)).float().sum().backward()
    assert set(counter.casts) == {p.data_ptr() for p in matrices}  # every conv and linear runs in bfloat16...
    assert set(counter.casts.values()) == {1}  # ...its weight cast once (autocast's cache), not once per use
