"""Operation and energy accounting (SPEC §3) on hand-countable networks, against torch's FLOP counter, and
against the V1 paper's figures."""

import math

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import spikformer
from spikformer.analysis import (
    PAPER_ANN_ENERGY_MJ,
    PAPER_IMAGENET_TABLE,
    EnergyModel,
    OpCounter,
    calibrate_batchnorm,
    count_operations,
    energy_report,
    measure_energy,
    paper_energy_mj,
    paper_first_conv_energy_mj,
)
from spikformer.analysis.ops import _coincidences
from spikformer.layers import SpikingConvStage, SpikingSelfAttention

E_MAC, E_AC = 4.6e-9, 0.9e-9  # pJ in mJ


def tiny_model(**overrides):
    kwargs = dict(embed_dim=32, depth=1, num_heads=2, num_classes=4)
    kwargs.update(overrides)
    return spikformer.create_model("spikformer_cifar_4_256", **kwargs).eval()


class Tokens(nn.Module):
    """A linear layer on time-first tokens ``[T, B, N, D]``."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d_in, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class TimeFolded(nn.Module):
    """A conv applied at every time step of ``[T, B, C, H, W]`` (as the stem folds time into the batch)."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.flatten(0, 1))


def test_linear_layer_sops_are_input_spikes_times_fan_out():
    x = torch.zeros(2, 1, 3, 6)  # T=2, B=1, N=3 tokens of 6 channels
    x[0, 0, 0, [1, 4]] = 1
    x[1, 0, 2, 5] = 1  # 3 spikes in all, each reaching 5 output neurons
    (layer,) = count_operations(Tokens(6, 5), x)
    assert (layer.name, layer.kind, layer.shape, layer.steps) == ("fc", "AC", (3, 5), 2)
    assert layer.flops == 3 * 6 * 5  # per time step
    assert layer.firing_rate == pytest.approx(3 / (2 * 3 * 6))
    assert layer.sops == pytest.approx(3 * 5)


def test_sops_are_per_sample_and_integer_inputs_count_as_that_many_spikes():
    x = torch.zeros(1, 2, 1, 4)  # two samples
    x[0, 0, 0, 0] = 2  # a residual-stream value of 2: two spikes arriving together
    x[0, 1, 0, 1] = 1
    (layer,) = count_operations(Tokens(4, 3), x)
    assert layer.kind == "AC"
    assert layer.sops == pytest.approx((2 + 1) * 3 / 2)


def test_conv_sops_of_an_interior_spike_are_kernel_size_times_out_channels():
    stage = SpikingConvStage(1, 4)  # 3x3 conv, padding 1
    x = torch.zeros(1, 1, 1, 5, 5)  # [T, B, C, H, W]
    x[0, 0, 0, 2, 2] = 1
    conv = count_operations(stage, x)[0]
    assert conv.flops == 5 * 5 * 4 * 9
    assert conv.sops == pytest.approx(9 * 4)


def test_conv_sops_of_a_spike_on_the_zero_padded_border_count_only_the_outputs_it_reaches():
    # A corner spike of a 3x3 conv with padding 1 lies in the window of 2 x 2 outputs, each with 4 channels.
    stage = SpikingConvStage(1, 4)
    x = torch.zeros(1, 1, 1, 5, 5)
    x[0, 0, 0, 0, 0] = 1
    x[0, 0, 0, 0, 2] = 2  # on the top edge: 2 x 3 outputs, a count of 2 as two spikes
    conv = count_operations(stage, x)[0]
    assert conv.sops == (4 + 2 * 6) * 4
    assert conv.firing_rate == pytest.approx(3 / 25)  # the mean input value, border or not


@pytest.mark.parametrize("stride, groups", [(1, 1), (2, 1), (2, 2)])
def test_conv_sops_equal_the_nonzero_products_of_the_convolution(stride, groups):
    # Each accumulate is one (input spike, weight) pair that reaches an output: summing a convolution of the
    # spikes with all-ones weights over its outputs counts them, padded borders, stride and groups included.
    conv = nn.Conv2d(4, 6, 3, stride, 1, groups=groups, bias=False)
    x = (torch.rand(2, 3, 4, 7, 7, generator=torch.Generator().manual_seed(0)) < 0.3).float()  # [T, B, ...]
    ones = nn.Conv2d(4, 6, 3, stride, 1, groups=groups, bias=False)
    nn.init.ones_(ones.weight)
    with torch.no_grad():
        expected = float(ones(x.flatten(0, 1)).sum()) / 3  # per sample
    (layer,) = count_operations(TimeFolded(conv), x)
    assert layer.kind == "AC" and layer.sops == pytest.approx(expected)


def test_a_layer_fed_real_values_is_a_mac_layer_run_at_every_time_step():
    stage = SpikingConvStage(3, 8)
    ops = count_operations(stage, torch.randn(4, 2, 3, 6, 6))  # T=4, B=2
    (conv,) = ops
    assert (conv.kind, conv.steps, conv.firing_rate, conv.sops) == ("MAC", 4, None, 0.0)
    report = energy_report(ops, "stage", 4)
    assert report.energy_mj == pytest.approx(E_MAC * 4 * 6 * 6 * 8 * 27)


class Fixed(nn.Module):
    """Returns a preset spike tensor whatever its input: stands in for Q, K or V."""

    def __init__(self, spikes: torch.Tensor) -> None:
        super().__init__()
        self.spikes = spikes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spikes


def hand_made_ssa() -> SpikingSelfAttention:
    # One head, N=2 tokens, d=4 channels. Q: token 0 channel 0. K: tokens 0 and 1, channel 0.
    # V: token 0 all channels, token 1 channel 0.
    q, k, v = torch.zeros(3, 1, 1, 2, 4)
    q[0, 0, 0, 0] = 1
    k[0, 0, :, 0] = 1
    v[0, 0, 0, :] = 1
    v[0, 0, 1, 0] = 1
    ssa = SpikingSelfAttention(4, num_heads=1, qkv_bias=False, scale=0.125)
    ssa.q, ssa.k, ssa.v = Fixed(q), Fixed(k), Fixed(v)
    return ssa.eval()


def test_ssa_products_count_each_coincidence_of_spikes_once():
    # Q K^T = [[1, 1], [0, 0]]: 2 coincidences. (Q K^T) V = [[2, 1, 1, 1], [0, ...]]: 5 accumulates.
    # N=2 <= d=4, so the model evaluates (Q K^T) V and the counter follows it.
    ops = {o.name: o for o in count_operations(hand_made_ssa(), torch.zeros(1, 1, 2, 4))}
    assert ops["q@kT"].sops == 2 and ops["q@kT"].flops == 2 * 2 * 4
    assert ops["(qkT)@v"].sops == 5 and ops["(qkT)@v"].flops == 2 * 2 * 4
    assert ops["q@kT"].firing_rate == pytest.approx(2 / 16)  # coincidences per multiply pair
    assert ops["q@kT"].kind == ops["(qkT)@v"].kind == "AC"


def test_ssa_products_in_the_linear_order_count_k_transpose_v_first():
    # K^T V = outer products of token 0 (1 x 4 spikes) and token 1 (1 x 1): 5 coincidences; Q (K^T V): 5.
    ops = {o.name: o for o in count_operations(hand_made_ssa(), torch.zeros(1, 1, 2, 4), "kv_first")}
    assert ops["kT@v"].sops == 5 and ops["q@(kTv)"].sops == 5
    assert ops["kT@v"].flops == 2 * 4 * 4


@pytest.mark.parametrize("kv_first", [True, False])
def test_coincidence_counts_equal_the_explicit_products(kv_first):
    q, k, v = (torch.bernoulli(torch.full((2, 3, 2, 7, 5), 0.3)) for _ in range(3))  # [T, B, h, N, d]
    first, second = _coincidences(q, k, v, kv_first)
    explicit_first = (k.transpose(-2, -1) @ v).sum() if kv_first else (q @ k.transpose(-2, -1)).sum()
    assert first == explicit_first
    assert second == (q @ k.transpose(-2, -1) @ v).sum()


@pytest.mark.parametrize("img_size", [32, 16])  # N=64 > d=16 (Q (K^T V)) and N=16 <= d=16 ((Q K^T) V)
def test_counted_flops_equal_torch_flop_counter_on_a_spikformer(img_size):
    model = tiny_model(img_size=img_size)
    x = torch.randn(3, 3, img_size, img_size)
    ops = count_operations(model, x)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    executed = sum(o.flops * o.steps for o in ops) * x.shape[0]  # multiply-accumulates
    assert counter.get_total_flops() == 2 * executed
    kinds = {o.name: o.kind for o in ops}
    assert kinds["patch_embed.stages.0.conv"] == "MAC" and kinds["head"] == "MAC"
    assert [k for n, k in kinds.items() if n not in ("patch_embed.stages.0.conv", "head")] == ["AC"] * 12


def test_counter_hooks_exist_only_inside_its_block():
    model = tiny_model()

    def hooks() -> int:
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

    with OpCounter(model):
        assert hooks() > 0
    assert hooks() == 0


def test_spikformer_8_512_first_conv_and_ann_energy_match_the_paper():
    with torch.device("meta"):  # shapes only: no weights, no pixels
        model = spikformer.create_model("spikformer_8_512")
    report = energy_report(count_operations(model, torch.empty(1, 3, 224, 224, device="meta")), "spikformer_8_512", 4)
    first = report.layers[0]
    assert (first.name, first.kind, first.flops) == ("patch_embed.stages.0.conv", "MAC", 224 * 224 * 64 * 27)
    assert first.energy_mj == pytest.approx(1.596, rel=0.02)
    assert first.energy_mj == pytest.approx(paper_first_conv_energy_mj())
    # Every conv/linear once, plus SSA's products in the order the model computes them (Q (K^T V)).
    assert report.ann_energy_mj == pytest.approx(PAPER_ANN_ENERGY_MJ, rel=0.02)


def test_the_paper_table_is_its_sops_at_0_9_pj_plus_the_512_wide_first_conv_constant():
    assert paper_first_conv_energy_mj() == pytest.approx(1.5954, abs=1e-4)
    for name, (sops, energy) in PAPER_IMAGENET_TABLE.items():
        assert paper_energy_mj(sops) == pytest.approx(energy, abs=0.002), name


def test_paper_constant_replaces_a_narrow_models_own_first_conv_energy():
    with torch.device("meta"):
        model = spikformer.create_model("spikformer_8_384", img_size=32, depth=1)  # small input: fast
    report = energy_report(count_operations(model, torch.empty(1, 3, 32, 32, device="meta")), "spikformer_8_384", 4)
    own_first_conv = report.layers[0].energy_mj
    assert own_first_conv == pytest.approx(E_MAC * 32 * 32 * 48 * 27 * 4)  # 384 / 8 = 48 channels
    assert report.paper_energy_mj() == pytest.approx(report.ac_energy_mj + 1.5954, abs=1e-4)


def test_report_totals_add_up_and_the_energy_constants_are_configurable():
    model = tiny_model()
    batches = [torch.randn(4, 3, 32, 32)]
    calibrate_batchnorm(model, batches)
    base = measure_energy(model, batches)
    doubled = measure_energy(model, batches, EnergyModel(e_mac_pj=4.6, e_ac_pj=1.8))
    assert base.sops > 0
    assert base.energy_mj == pytest.approx(sum(layer.energy_mj for layer in base.layers))
    assert base.ac_energy_mj == pytest.approx(E_AC * base.sops)
    assert base.ann_energy_mj == pytest.approx(E_MAC * sum(layer.flops for layer in base.layers))
    assert doubled.ac_energy_mj == pytest.approx(2 * base.ac_energy_mj)
    assert doubled.mac_energy_mj == pytest.approx(base.mac_energy_mj)
    for layer in base.layers:
        if layer.kind == "AC":
            full_fan_out = layer.firing_rate * layer.steps * layer.flops
            if layer.name.endswith(".conv"):  # padded borders reach fewer outputs
                assert 0 < layer.sops < full_fan_out
            else:
                assert layer.sops == pytest.approx(full_fan_out)
    assert set(base.firing_rates) == set(base.firing_rates_per_step) and len(base.firing_rates) == 12


def test_energy_constants_must_be_non_negative_numbers():
    with pytest.raises(ValueError, match="e_ac_pj"):
        EnergyModel(e_ac_pj=-1.0)
    with pytest.raises(ValueError, match="e_mac_pj"):
        EnergyModel(e_mac_pj=math.nan)


def test_measure_energy_refuses_an_empty_input():
    with pytest.raises(ValueError, match="no input batches"):
        measure_energy(tiny_model(), [])


def test_batchnorm_calibration_restores_momentum_and_leaves_eval_mode():
    model = tiny_model()
    bn = model.patch_embed.stages[0].bn
    assert calibrate_batchnorm(model, [torch.randn(4, 3, 32, 32) + 3.0]) == 11  # 5 stem + 4 SSA + 2 MLP
    assert bn.momentum == 0.1 and not model.training
    assert float(bn.running_mean.abs().max()) > 0  # re-estimated on inputs shifted by +3


def test_binary_event_frames_make_the_first_conv_an_ac_layer():
    from spikformer.analysis.inputs import random_batches

    model = spikformer.create_model("spikformer_dvs_2_256", embed_dim=16, num_heads=2, img_size=32, T=2,
                                    num_classes=3).eval()
    (frames,) = random_batches(model, batch_size=2, num_batches=1, events=True)  # [B, T, 2, H, W] of 0/1
    first = count_operations(model, frames)[0]
    assert (first.name, first.kind, first.steps) == ("patch_embed.stages.0.conv", "AC", 2)
    assert first.firing_rate == pytest.approx(float(frames.mean()))
