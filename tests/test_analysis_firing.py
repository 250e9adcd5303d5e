"""Firing-rate recording: every LIF is covered, rates are exact, and no hook exists outside a recorder."""

import pytest
import torch
from torch import nn

import spikformer
from spikformer.analysis import FiringRateRecorder, lif_role, measure_firing_rates
from spikformer.neurons import LIF


def tiny_model(**overrides):
    kwargs = dict(embed_dim=32, depth=1, num_heads=2, num_classes=4)
    kwargs.update(overrides)
    return spikformer.create_model("spikformer_cifar_4_256", **kwargs).eval()


def lif_hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules() if isinstance(m, LIF))


def test_recorder_attaches_hooks_only_inside_its_block():
    model = tiny_model()
    recorder = FiringRateRecorder(model)
    assert lif_hook_count(model) == 0
    with recorder:
        assert lif_hook_count(model) == len(recorder.layers) == 12
    assert lif_hook_count(model) == 0


def test_recorder_removes_its_hooks_when_the_forward_pass_fails():
    model = tiny_model()
    with pytest.raises(ValueError), FiringRateRecorder(model):
        model(torch.randn(1, 3, 30, 30))  # not a multiple of the patch size
    assert lif_hook_count(model) == 0


def test_every_spiking_layer_of_spikformer_is_reported_with_its_role():
    model = tiny_model()
    with FiringRateRecorder(model) as recorder:
        model(torch.randn(2, 3, 32, 32))
    rates = recorder.rates()
    roles = {name: lif_role(name) for name in rates}
    assert list(rates) == [
        "patch_embed.stages.0.lif", "patch_embed.stages.1.lif", "patch_embed.stages.2.lif",
        "patch_embed.stages.3.lif", "patch_embed.rpe.lif", "blocks.0.attn.q.lif", "blocks.0.attn.k.lif",
        "blocks.0.attn.v.lif", "blocks.0.attn.attn_lif", "blocks.0.attn.proj.lif", "blocks.0.mlp.fc1.lif",
        "blocks.0.mlp.fc2.lif",
    ]
    assert [roles[n] for n in rates] == ["stem"] * 4 + ["RPE", "Q", "K", "V", "attention", "projection",
                                                         "MLP fc1", "MLP fc2"]
    assert all(0.0 <= r <= 1.0 for r in rates.values())
    assert all(len(steps) == 4 for steps in recorder.per_step().values())


class OneLIF(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lif = LIF()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lif(x)


def test_rates_per_time_step_match_the_hand_computed_lif_dynamics():
    # A constant input of 1.5 charges to H = 0.75 (no spike), then 0.75 + (1.5 - 0.75) / 2 = 1.125 (spike,
    # reset to 0), and so on: spikes at t = 1 and 3. Half the neurons get 1.5, half get 0.
    x = torch.zeros(4, 1, 10)
    x[:, :, :5] = 1.5
    model = OneLIF()
    with FiringRateRecorder(model) as recorder:
        model(x)
    assert recorder.per_step()["lif"] == [0.0, 0.5, 0.0, 0.5]
    assert recorder.rates()["lif"] == 0.25


def test_rates_average_over_every_sample_of_every_batch():
    model = OneLIF()
    always = torch.full((4, 3, 10), 5.0)  # H = 2.5 >= 1 at every step: rate 1
    never = torch.zeros(4, 1, 10)
    with FiringRateRecorder(model, keep=["lif"]) as recorder:
        model(always)
        model(never)
    assert recorder.rates()["lif"] == pytest.approx(3 / 4)  # 3 of the 4 samples fire at every step
    assert recorder.kept["lif"].shape == (4, 10)  # first sample of the first batch, [T, neurons]
    assert recorder.kept["lif"].sum() == 40


def test_recorder_rejects_an_unknown_layer_to_keep_and_names_the_real_ones():
    with pytest.raises(ValueError, match="blocks.0.attn.q.lif"):
        FiringRateRecorder(tiny_model(), keep=["blocks.0.q.lif"])


def test_measure_firing_rates_takes_labelled_batches_and_a_batch_limit():
    model = tiny_model()
    batches = [(torch.randn(2, 3, 32, 32), torch.zeros(2)) for _ in range(3)]
    rates = measure_firing_rates(model, batches, max_batches=1)
    with FiringRateRecorder(model) as recorder:
        model(batches[0][0])
    assert rates == recorder.rates()
