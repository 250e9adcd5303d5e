"""The analysis tools on the DVS128 Gesture variant (``qk_pool``): SOP counts and attention maps use the
max-pooled Q and K that SSA's spike product actually receives; the Q and K neurons' firing rates stay those
of their own outputs."""

from __future__ import annotations

import pytest
import torch
from test_analysis_energy import Fixed  # a preset spike tensor standing in for Q, K or V
from torch import nn

import spikformer
import spikformer.fast.modules as fast_modules
import spikformer.layers as layers
from spikformer.analysis import FiringRateRecorder, attention_map, calibrate_batchnorm, count_operations
from spikformer.layers import SpikingSelfAttention, token_max_pool

TINY = {"embed_dim": 32, "depth": 1, "num_heads": 2, "img_size": 128, "T": 2}  # N = 8 x 8 tokens > d = 16


def hand_made_pooled_ssa() -> SpikingSelfAttention:
    # One head, N=3 tokens, d=4 channels, pool width 3 (a token and its two neighbours).
    # Q: token 0, channel 0 -> pooled: tokens 0 and 1, channel 0.
    # K: token 2, channel 0 -> pooled: tokens 1 and 2, channel 0.
    # V: token 1 all 4 channels, token 2 channel 0 (V is not pooled).
    q, k, v = torch.zeros(3, 1, 1, 3, 4)  # each [T=1, B=1, N=3, D=4]
    q[0, 0, 0, 0] = 1
    k[0, 0, 2, 0] = 1
    v[0, 0, 1, :] = 1
    v[0, 0, 2, 0] = 1
    ssa = SpikingSelfAttention(4, num_heads=1, qkv_bias=False, scale=0.125, qk_pool=3)
    ssa.q, ssa.k, ssa.v = Fixed(q), Fixed(k), Fixed(v)
    return ssa.eval()


def test_ssa_sops_of_the_pooled_variant_count_the_pooled_operands_by_hand():
    # Pooled Q K^T: query tokens {0, 1} x key tokens {1, 2}, one channel each: 4 coincidences (unpooled: 0,
    # since the only query spike is on token 0 and the only key spike on token 2).
    # (Q K^T) V: each of the 2 query rows adds V's rows 1 (4 spikes) and 2 (1 spike): 2 * 5 = 10 accumulates.
    ops = {o.name: o for o in count_operations(hand_made_pooled_ssa(), torch.zeros(1, 1, 3, 4))}
    assert ops["q@kT"].sops == 4 and ops["(qkT)@v"].sops == 10
    assert ops["q@kT"].firing_rate == pytest.approx(4 / (3 * 3 * 4))  # coincidences per multiply pair
    assert ops["q@kT"].kind == ops["(qkT)@v"].kind == "AC"  # the pooled operands are still 0/1 spikes


def test_the_pooled_attention_map_of_the_hand_made_block():
    model = nn.Sequential(hand_made_pooled_ssa())
    scores = attention_map(model, torch.zeros(1, 1, 3, 4))
    expected = torch.tensor([[0.0, 1, 1], [0, 1, 1], [0, 0, 0]])  # rows: query tokens 0..2, columns: keys
    assert torch.equal(scores, expected.unsqueeze(0))


def calibrated_gesture_model() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = spikformer.create_model("spikformer_dvs_2_256_qkpool", **TINY)
    frames = torch.bernoulli(torch.full((2, 2, 2, 128, 128), 0.2))  # [B, T, 2, H, W] binary event frames
    calibrate_batchnorm(model, [frames])  # random weights: re-estimate BN so that Q and K fire at all
    return model, frames


@pytest.fixture
def operands(monkeypatch):
    """The (q, k, v) every SSA forward hands to the spike product, as the forward computes them."""
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    def recorder(original):
        def recording(q, k, v, num_heads, scale, **options):
            seen.append(tuple(layers.split_heads(t, num_heads) for t in (q, k, v)))
            return original(q, k, v, num_heads, scale, **options)
        return recording

    monkeypatch.setattr(layers, "scaled_spike_attention", recorder(layers.scaled_spike_attention))
    # the accelerated model's SSA (spikformer.fast) multiplies through the fast path's function instead
    monkeypatch.setattr(fast_modules, "fast_spike_products", recorder(fast_modules.fast_spike_products))
    return seen


def test_gesture_model_sops_equal_the_coincidences_of_what_the_forward_multiplies(operands):
    model, frames = calibrated_gesture_model()
    operands.clear()  # keep only the counted forward
    ssa = model.blocks[0].attn
    neuron_k: list[torch.Tensor] = []
    handle = ssa.k.register_forward_hook(lambda module, args, out: neuron_k.append(out))
    ops = {o.name: o for o in count_operations(model, frames)}
    handle.remove()
    (q, k, v), = operands  # [T, B, h, N, d]; N = 64 > d = 16: the model evaluates Q (K^T V)
    per_sample = frames.shape[0]
    kv_sops = float((k.transpose(-2, -1) @ v).sum()) / per_sample
    assert ops["blocks.0.attn.kT@v"].sops == pytest.approx(kv_sops)
    assert ops["blocks.0.attn.q@(kTv)"].sops == pytest.approx(float((q @ (k.transpose(-2, -1) @ v)).sum()) / per_sample)
    # the K neurons' own (unpooled) spikes would give fewer: the count really follows the pool
    unpooled = float((ssa.split_heads(neuron_k[0]).transpose(-2, -1) @ v).sum()) / per_sample
    assert 0 < unpooled < kv_sops


def test_gesture_model_attention_map_equals_the_forwards_q_times_k_transpose(operands):
    model, frames = calibrated_gesture_model()
    operands.clear()  # keep only attention_map's forward
    scores = attention_map(model, frames, block=0, head=1)
    (q, k, _), = operands  # the one forward attention_map made, on the first sample
    assert torch.equal(scores, q[:, 0, 1] @ k[:, 0, 1].transpose(-2, -1))
    assert scores.sum() > 0


def test_q_and_k_firing_rates_stay_those_of_the_neurons_not_of_the_pooled_operands():
    model, frames = calibrated_gesture_model()
    ssa = model.blocks[0].attn
    outputs: dict[str, torch.Tensor] = {}
    handles = [getattr(ssa, p).register_forward_hook(lambda m, a, out, p=p: outputs.__setitem__(p, out))
               for p in "qk"]
    with torch.no_grad(), FiringRateRecorder(model) as recorder:
        model(frames)
    for handle in handles:
        handle.remove()
    rates = recorder.rates()
    for part in "qk":
        spikes = outputs[part]
        assert rates[f"blocks.0.attn.{part}.lif"] == pytest.approx(float(spikes.mean()))
        assert float(token_max_pool(spikes, 3).mean()) > float(spikes.mean())  # the pooled operand fires more
