"""Lean training memory with unchanged gradients: spikes saved for backward at 1 bit each, per-block
checkpointing; both give gradients and running statistics bit-identical to the plain step."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import spikformer
from spikformer.config import TrainConfig, load_config
from spikformer.fast import memory
from spikformer.fast.modules import FastSpikingConvStage

TINY = dict(embed_dim=32, depth=2, num_heads=2, img_size=16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed", "odd_size"])
def test_binary_tensors_pack_to_one_bit_and_come_back_bit_for_bit(dtype, layout):
    shape = (4, 8, 16, 9) if layout != "odd_size" else (5, 7, 11, 13)  # odd: a partial last byte
    spikes = (torch.rand(shape) < 0.3).to(dtype)
    if layout == "channels_last":
        spikes = spikes.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":
        spikes = spikes.transpose(1, 3)
    packed = memory.pack(spikes)
    assert isinstance(packed, memory.PackedSpikes)
    assert packed.bits.numel() == (spikes.numel() + 7) // 8  # 1 bit per spike
    restored = memory.unpack(packed)
    assert restored.dtype == dtype and restored.stride() == spikes.stride()
    assert torch.equal(restored, spikes)


def test_the_pure_torch_packer_used_off_the_cpu_agrees_with_the_kernel():
    spikes = (torch.rand(5, 1001) < 0.5).float()
    flat = spikes.view(-1)
    bits = memory._pack_bits_torch(flat)
    from spikformer.fast.kernels import cpu

    assert torch.equal(bits, cpu.pack_spikes(flat))
    out = torch.empty_like(flat)
    memory._unpack_bits_torch(bits, out)
    assert torch.equal(out, flat)
    assert memory._pack_bits_torch(flat * 2) is None


@pytest.mark.parametrize("values", ["pre-activation", "two", "negative_zero", "small", "expanded"])
def test_anything_but_a_dense_binary_tensor_is_kept_as_it_is(values):
    x = (torch.rand(64, 128) < 0.5).float()
    if values == "pre-activation":
        x = torch.randn(64, 128)
    elif values == "two":
        x[-1, -1] = 2.0  # an integer sum, not a spike: the last element decides
    elif values == "negative_zero":
        x[3, 5] = -0.0  # would come back as +0.0
    elif values == "small":
        x = x[:2, :8].contiguous()
    elif values == "expanded":
        x = x[:1].expand(64, 128)
    assert memory.pack(x) is x


def tiny_model(**overrides) -> nn.Module:
    return spikformer.create_model("spikformer_cifar_4_256", **{**TINY, **overrides})


def train_step(model: nn.Module, x: torch.Tensor, amp: bool = False) -> tuple[torch.Tensor, dict]:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        out = model(x)
    out.float().square().sum().backward()
    return out.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def assert_same_step(a: nn.Module, b: nn.Module, x: torch.Tensor, amp: bool = False) -> None:
    torch.manual_seed(1)
    out_a, grads_a = train_step(a, x, amp)
    torch.manual_seed(1)
    out_b, grads_b = train_step(b, x, amp)
    assert torch.equal(out_a, out_b)
    for name in grads_a:
        assert torch.equal(grads_a[name], grads_b[name]), name
    for (name, buf_a), (_, buf_b) in zip(a.named_buffers(), b.named_buffers()):
        assert torch.equal(buf_a, buf_b), name  # running statistics updated once, identically


@pytest.mark.parametrize("amp", [False, True], ids=["float32", "bf16_autocast"])
def test_packed_spikes_leave_outputs_gradients_and_statistics_bit_identical(amp):
    plain = tiny_model()
    plain.pack_saved_spikes = False
    packed = copy.deepcopy(plain)
    packed.pack_saved_spikes = True
    assert_same_step(plain, packed, torch.randn(2, 3, 16, 16) * 2, amp)


def test_most_saved_bytes_of_a_training_step_are_packed():
    model = tiny_model()
    raw = kept = 0

    def counting_pack(t):
        nonlocal raw, kept
        packed = memory.pack(t)
        size = t.numel() * t.element_size()
        raw += size
        kept += packed.bits.numel() if isinstance(packed, memory.PackedSpikes) else size
        return packed

    with torch.autograd.graph.saved_tensors_hooks(counting_pack, memory.unpack):
        model.pack_saved_spikes = False  # the hooks above do the packing, counting as they go
        model(torch.randn(4, 3, 16, 16) * 2).sum().backward()
    # spikes are about a third of what a step saves; pre-activations and integer sums stay as they are
    assert kept < 0.75 * raw, (kept, raw)


@pytest.mark.parametrize("drop_path_rate", [0.0, 0.3])
def test_checkpointed_blocks_give_bit_identical_gradients_and_update_statistics_once(drop_path_rate):
    plain = tiny_model(drop_path_rate=drop_path_rate)
    checkpointed = copy.deepcopy(plain)
    checkpointed.set_grad_checkpointing(True)
    assert checkpointed.grad_checkpointing and not plain.grad_checkpointing
    assert_same_step(plain, checkpointed, torch.randn(2, 3, 16, 16) * 2)


def test_checkpointing_is_off_in_eval_and_a_train_config_key():
    model = tiny_model().eval()
    model.set_grad_checkpointing(True)
    with torch.no_grad():
        model(torch.randn(1, 3, 16, 16))  # no recomputation machinery without gradients
    assert TrainConfig().checkpointing is False
    assert load_config(None, ["train.checkpointing=true"]).train.checkpointing is True


def pooled_with_saved(pool: nn.Module, x: torch.Tensor, grad_out: torch.Tensor):
    """``(output, input gradient, tensors saved for backward)`` of one pooling step."""
    x = x.clone().requires_grad_()
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = pool(x)
    out.backward(grad_out)
    return out, x.grad, saved


def assert_same_bits(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride()
    assert torch.equal(a.isnan(), b.isnan())  # a NaN where PyTorch has one (its payload is PyTorch's business)
    ints = {torch.float32: torch.int32, torch.bfloat16: torch.int16}[a.dtype]
    a, b = a.nan_to_num(0.5), b.nan_to_num(0.5)
    assert torch.equal(a.contiguous().view(ints), b.contiguous().view(ints))  # signed zeros included


# (kernel size, stride, padding)
POOL_GEOMETRIES = {"k3s2p1": (3, 2, 1), "k2s2": (2, 2, 0), "k3s1p1": (3, 1, 1), "k5s3p2": (5, 3, 2)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("values", ["spikes", "any"])
@pytest.mark.parametrize("geometry", POOL_GEOMETRIES.values(), ids=POOL_GEOMETRIES.keys())
def test_spike_max_pool_gives_the_built_in_outputs_and_gradients_bit_for_bit(dtype, layout, values, geometry):
    # spike maps tie in almost every window (the first maximum must win, as in PyTorch); other maps carry
    # NaNs, -inf windows and signed zeros; overlapping windows add several gradients into one element, in
    # PyTorch's order and rounding
    torch.manual_seed(0)
    shape = (6, 24, 13, 11)
    if values == "spikes":
        x = (torch.rand(shape) < 0.3).to(dtype)
    else:
        x = torch.randn(shape).to(dtype)
        x[:, :, ::3, ::2] = 0.0
        x[:, ::5, 1::4] = -0.0
        x[0, 1, 2, 3] = x[1, 7, 0, 0] = float("nan")
        x[2, 3, 4:9, 4:9] = float("-inf")
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    builtin, ours = nn.MaxPool2d(*geometry), memory.SpikeMaxPool2d(*geometry)
    expected = builtin(x)
    grad_out = torch.randn(expected.shape).to(dtype).contiguous(memory_format=torch.channels_last)
    out_a, grad_a, saved_a = pooled_with_saved(builtin, x, grad_out)
    out_b, grad_b, saved_b = pooled_with_saved(ours, x, grad_out)
    assert_same_bits(out_a, out_b)
    assert_same_bits(grad_a, grad_b)
    with torch.no_grad():
        assert_same_bits(ours(x), expected)  # inference: the values alone
    assert any(t.dtype == torch.int64 for t in saved_a)  # the built-in keeps an int64 index per output
    if layout == "channels_last":  # the C kernel: one byte per output, the maximum's place in its window
        assert [(t.dtype, t.numel()) for t in saved_b] == [(torch.uint8, expected.numel())]
    else:  # the argmax found again in backward: only the input, which packs to 1 bit after a LIF
        assert [t.dtype for t in saved_b] == [dtype]


@pytest.mark.parametrize("options", [dict(kernel_size=3, padding=2), dict(kernel_size=5, stride=2)])
def test_spike_max_pool_refuses_what_the_built_in_refuses_with_its_message(options):
    x = torch.rand(2, 8, 4, 4).contiguous(memory_format=torch.channels_last).requires_grad_()
    with pytest.raises(RuntimeError) as builtin:
        nn.MaxPool2d(**options)(x)
    with pytest.raises(RuntimeError) as ours:
        memory.SpikeMaxPool2d(**options)(x)
    assert str(ours.value) == str(builtin.value)


@pytest.mark.parametrize("threads", [1, 3])
def test_spike_max_pool_kernel_splits_images_over_threads_without_changing_a_bit(threads):
    x = (torch.rand(7, 16, 20, 20) < 0.2).contiguous(memory_format=torch.channels_last)
    grad_out = torch.randn(7, 16, 10, 10)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        _, grad, _ = pooled_with_saved(memory.SpikeMaxPool2d(3, 2, 1), x.float(), grad_out)
    finally:
        torch.set_num_threads(before)
    _, expected, _ = pooled_with_saved(nn.MaxPool2d(3, 2, 1), x.float(), grad_out)
    assert_same_bits(grad, expected)


def test_the_stem_pools_with_recomputed_indices():
    model = tiny_model()
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    assert pools and all(isinstance(m, memory.SpikeMaxPool2d) for m in pools)


def without_conv_recomputation(model: nn.Module) -> nn.Module:
    plain = copy.deepcopy(model)
    for unit in plain.modules():
        if isinstance(unit, spikformer.layers.SpikingConvStage):
            unit.recompute_conv = False
    return plain


@pytest.mark.parametrize("amp", [False, True], ids=["float32", "bf16_autocast"])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["blocks_stored", "blocks_checkpointed"])
def test_stem_units_recomputing_their_conv_output_give_bit_identical_gradients(amp, checkpointing):
    model = tiny_model()
    model.set_grad_checkpointing(checkpointing)
    units = [m for m in model.modules() if isinstance(m, spikformer.layers.SpikingConvStage)]
    assert [u.recompute_conv for u in units][:2] == [True, True]  # the cheap first convs
    assert_same_step(without_conv_recomputation(model), model, torch.randn(2, 3, 16, 16) * 2, amp)


def test_a_unit_recomputing_its_conv_stores_its_input_spikes_instead_of_the_conv_output():
    unit = FastSpikingConvStage(16, 64).train()
    unit.recompute_conv = True
    spikes = (torch.rand(2, 4, 16, 8, 8) < 0.3).float()  # [T, B, C, H, W]

    def saved_numels(module):
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
            module(spikes.requires_grad_()).sum().backward()
        return sizes

    conv_output = 2 * 4 * 64 * 8 * 8
    assert conv_output in saved_numels(without_conv_recomputation(unit))
    kept = saved_numels(unit)
    assert conv_output not in kept and spikes.numel() in kept


def test_a_hook_on_the_conv_or_the_neuron_still_sees_every_training_call():
    # the recomputing path calls neither module, so it steps aside while a forward hook watches one
    unit = FastSpikingConvStage(16, 64).train()
    unit.recompute_conv = True
    calls = []
    for module in (unit.conv, unit.lif):
        module.register_forward_hook(lambda m, args, out: calls.append(type(m).__name__))
    unit((torch.rand(2, 4, 16, 8, 8) < 0.3).float()).sum().backward()
    assert calls == ["Conv2d", "LIF"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_small_integer_tensors_are_kept_as_int8_and_come_back_bit_for_bit(dtype):
    counts = torch.randint(-3, 11, (4, 2, 64, 48)).to(dtype).transpose(2, 3)  # a strided view, as saved
    packed = memory.pack_small_integers(counts)
    assert isinstance(packed, memory.SmallIntegers) and packed.values.dtype == torch.int8
    back = memory.unpack_small_integers(packed)
    assert torch.equal(back, counts) and back.stride() == counts.stride() and back.dtype == dtype
    spikes = (counts > 4).to(dtype)
    assert isinstance(memory.pack_small_integers(spikes), memory.PackedSpikes)  # 1 bit beats 8


@pytest.mark.parametrize("bad", ["fraction", "too_big", "negative_zero", "nan"])
def test_tensors_that_int8_cannot_hold_exactly_are_kept_as_they_are(bad):
    x = torch.randint(0, 5, (64, 128)).float()
    x[-1, -1] = {"fraction": 0.5, "too_big": 128.0, "negative_zero": -0.0, "nan": float("nan")}[bad]
    assert memory.pack_small_integers(x) is x
