"""The DVS128 Gesture variant of the V1 paper (SPEC §5): the DVS model with 8 heads and a 1-D max-pool after Q
and K (97.9% -> 98.3%), registered as ``spikformer_dvs_2_256_qkpool``."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from spikformer import create_model
from spikformer.config import load_config
from spikformer.layers import SpikingSelfAttention, token_max_pool
from spikformer.models import build_model, get_variant

TINY = {"embed_dim": 32, "depth": 1, "num_heads": 2, "img_size": 32, "T": 2}


def test_the_variant_is_the_dvs_model_with_8_heads_and_the_paper_parameter_count():
    variant = get_variant("spikformer_dvs_2_256_qkpool")
    assert (variant.num_heads, variant.num_classes, variant.qk_pool, variant.T) == (8, 11, 3, 16)
    with torch.device("meta"):
        ours, via_timm = create_model("spikformer_dvs_2_256_qkpool"), timm.create_model("spikformer_dvs_2_256_qkpool")
    # a max-pool has no parameters: the count of the DVS model with 11 classes (SPEC §2)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in via_timm.parameters()) == 2_566_923
    assert all(block.attn.qk_pool == 3 for block in ours.blocks)


def test_token_max_pool_is_maxpool1d_over_the_tokens_of_the_conv1d_layout():
    spikes = (torch.rand(2, 3, 10, 4) < 0.3).float()  # [T, B, N, D]
    T, B, N, D = spikes.shape
    reference = nn.MaxPool1d(3, stride=1, padding=1)(spikes.reshape(T * B, N, D).transpose(1, 2))  # [T*B, D, N]
    pooled = token_max_pool(spikes, 3)
    assert torch.equal(pooled, reference.transpose(1, 2).reshape(T, B, N, D))
    assert set(pooled.unique().tolist()) <= {0.0, 1.0} and (pooled >= spikes).all()  # still spikes, only more


def test_q_and_k_are_pooled_and_v_is_not(monkeypatch):
    torch.manual_seed(0)
    pooled = SpikingSelfAttention(16, 2, qkv_bias=False, scale=0.25, qk_pool=3)
    plain = SpikingSelfAttention(16, 2, qkv_bias=False, scale=0.25)
    plain.load_state_dict(pooled.state_dict())
    import spikformer.layers as layers

    seen, original = [], layers.scaled_spike_attention

    def recording(q, k, v, num_heads, scale, **options):
        seen.append((q, k, v))
        return original(q, k, v, num_heads, scale, **options)

    monkeypatch.setattr(layers, "scaled_spike_attention", recording)
    x = torch.randint(0, 3, (2, 2, 9, 16)).float()
    pooled(x), plain(x)
    (q1, k1, v1), (q0, k0, v0) = seen
    assert torch.equal(v1, v0) and not torch.equal(q1, q0) and not torch.equal(k1, k0)
    assert torch.equal(q1, token_max_pool(plain.q(x), 3))


def test_the_variant_trains_a_step_and_an_even_width_is_refused():
    model = create_model("spikformer_dvs_2_256_qkpool", **TINY)
    logits = model(torch.rand(2, 2, 2, 32, 32))  # [B, T, 2, H, W]
    assert logits.shape == (2, 11)
    logits.logsumexp(1).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    with pytest.raises(ValueError, match="odd pooling width"):
        SpikingSelfAttention(16, 2, qkv_bias=False, scale=0.25, qk_pool=2)


def test_the_gesture_config_selects_the_variant():
    config = load_config("configs/dvs128gesture_2_256.yaml")
    with torch.device("meta"):
        model = build_model(config.model)
    assert config.model.name == "spikformer_dvs_2_256_qkpool" and model.blocks[0].attn.qk_pool == 3
    assert model.blocks[0].attn.num_heads == 8 and model.num_classes == 11
