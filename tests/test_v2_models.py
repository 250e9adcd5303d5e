"""Spikformer V2: the Spiking Convolutional Stem, the registered V2 family, and V1 compatibility."""

from __future__ import annotations

import pytest
import timm
import torch

import spikformer
from spikformer.config import load_config
from spikformer.errors import ConfigError
from spikformer.layers import SCSOptions, SpikingConvolutionalStem, SpikingPatchSplitting
from spikformer.models import get_variant, list_models, resolve_config

V2_NAMES = list_models("spikformer_v2_")

# The counts docs/v2.md reports (1000 classes, 224x224 RGB input, default SCS).
V2_PARAMETERS = {
    "spikformer_v2_8_384": 17_252_152,
    "spikformer_v2_8_512": 30_464_424,
    "spikformer_v2_8_768": 68_081_800,
    "spikformer_v2_16_896": 169_729_272,
}


def count_parameters(name: str, **overrides) -> int:
    with torch.device("meta"):  # no memory, no initialisation cost
        model = spikformer.create_model(name, **overrides)
    return sum(p.numel() for p in model.parameters())


def test_v2_family_is_registered_with_the_scs_stem():
    assert V2_NAMES == sorted(V2_PARAMETERS)
    for name in V2_NAMES:
        variant = get_variant(name)
        assert variant.stem == "scs"
        assert variant.family == "v2"
    assert [get_variant(n).depth for n in V2_NAMES] == [16, 8, 8, 8]


@pytest.mark.parametrize("name", sorted(V2_PARAMETERS))
def test_v2_parameter_counts_are_the_documented_ones(name):
    assert count_parameters(name) == V2_PARAMETERS[name]


def test_sixteen_layer_v2_has_172m_parameters_within_two_percent():
    count = count_parameters("spikformer_v2_16_896")
    assert abs(count - 172e6) / 172e6 <= 0.02
    assert get_variant("spikformer_v2_16_896").T == 1  # the paper's 81.10% is at one time step


def test_eight_layer_v2_models_run_at_four_time_steps():
    assert {get_variant(n).T for n in V2_NAMES if "_8_" in n} == {4}


@pytest.mark.parametrize("name", V2_NAMES)
def test_scs_gives_a_14x14_token_grid_at_224(name):
    variant = get_variant(name)
    with torch.device("meta"):
        model = spikformer.create_model(name)
        tokens = model.patch_embed(model.time_first(torch.empty(2, 3, 224, 224)))
    assert isinstance(model.patch_embed, SpikingConvolutionalStem)
    assert tuple(tokens.shape) == (variant.T, 2, 14 * 14, variant.embed_dim)


@pytest.mark.parametrize("name", V2_NAMES)
def test_every_scs_unit_is_conv_bn_lif_and_the_grid_matches_sps(name):
    small = dict(embed_dim=32, num_heads=4, depth=1, img_size=64, num_classes=5, T=2)
    v2 = spikformer.create_model(name, **small)
    v1 = spikformer.create_model(name, stem="sps", **small)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        v2_tokens = v2.patch_embed(v2.time_first(x))
        v1_tokens = v1.patch_embed(v1.time_first(x))
        logits = v2(x)
    assert v2_tokens.shape == v1_tokens.shape == (2, 2, 4 * 4, 32)
    assert logits.shape == (2, 5)
    assert len(v2.patch_embed.stages) > len(v1.patch_embed.stages)  # supplementary conv layers
    for unit in v2.patch_embed.stages:
        assert isinstance(unit.conv, torch.nn.Conv2d) and unit.conv.bias is None
        assert isinstance(unit.bn, torch.nn.BatchNorm2d)
        assert isinstance(unit.lif, spikformer.LIF)
    assert set(v2_tokens.unique().tolist()) <= {0.0, 1.0, 2.0}  # spikes plus the RPE's spikes


def test_scs_keeps_the_8x8_grid_of_cifar_inputs_with_patch_4():
    model = spikformer.create_model("spikformer_v2_8_384", embed_dim=32, num_heads=4, depth=1, img_size=32,
                                    patch_size=4, T=1)
    tokens = model.patch_embed(model.time_first(torch.rand(3, 3, 32, 32)))
    assert tokens.shape == (1, 3, 64, 32)


def test_scs_downsamples_by_stride_when_asked():
    stem = SpikingConvolutionalStem(3, 32, 16, options=SCSOptions(downsample="stride"))
    strides = [unit.conv.stride[0] for unit in stem.stages]
    assert strides == [2, 1, 2, 1, 2, 1, 2]
    assert all(isinstance(unit.pool, torch.nn.Identity) for unit in stem.stages)
    assert stem(torch.rand(1, 2, 3, 64, 64)).shape == (1, 2, 16, 32)


def test_scs_layout_is_configurable_through_stem_options():
    model = spikformer.create_model("spikformer_v2_8_384", embed_dim=32, num_heads=4, depth=1, img_size=32,
                                    stem_options={"depths": [1, 3, 1, 2], "kernel_size": 5})
    stem = model.patch_embed
    assert len(stem.stages) == 7
    assert {unit.conv.kernel_size for unit in stem.stages} == {(5, 5)}
    assert [unit.conv.out_channels for unit in stem.stages] == [4, 8, 8, 8, 16, 32, 32]


def test_scs_with_one_unit_per_stage_is_v1s_sps_key_for_key():
    sps = SpikingPatchSplitting(3, 32, 16)
    scs = SpikingConvolutionalStem(3, 32, 16, options=SCSOptions(depths=(1, 1, 1, 1)))
    scs.load_state_dict(sps.state_dict())  # strict: the same names and shapes
    sps.eval(), scs.eval()
    x = torch.rand(2, 2, 3, 64, 64)
    assert torch.equal(sps(x), scs(x))


def test_v1_and_v2_stems_are_one_class_that_takes_a_mask():
    v1 = spikformer.create_model("spikformer_8_512", embed_dim=32, num_heads=4, depth=0, img_size=32)
    v2 = spikformer.create_model("spikformer_v2_8_512", embed_dim=32, num_heads=4, depth=0, img_size=32)
    assert type(v1.patch_embed) is type(v2.patch_embed) is SpikingConvolutionalStem
    assert v1.patch_embed.options == SCSOptions(depths=(1, 1, 1, 1))
    x = v2.time_first(torch.rand(2, 3, 32, 32))
    mask = torch.zeros(2, 2, 2, dtype=torch.bool)
    mask[:, 0, 0] = True  # the top-left patch of each image
    tokens = v2.patch_embed(x, mask=mask)  # [T, B, N, D]
    assert (tokens[:, :, 0] == 0).all() and tokens[:, :, 1:].sum() > 0


def test_a_v2_model_with_the_sps_stem_is_exactly_v1():
    small = dict(embed_dim=32, num_heads=4, depth=2, img_size=32, num_classes=7, T=2)
    v1 = spikformer.create_model("spikformer_8_512", **small).eval()
    v2 = spikformer.create_model("spikformer_v2_8_512", stem="sps", **small).eval()
    v2.load_state_dict(v1.state_dict())  # strict
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(v1(x), v2(x))


@pytest.mark.parametrize("name", V2_NAMES)
def test_v2_names_build_through_timm_with_the_same_overrides(name):
    model = timm.create_model(name, embed_dim=32, num_heads=4, depth=1, img_size=32, num_classes=3)
    assert isinstance(model, spikformer.Spikformer)
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 3)


@pytest.mark.parametrize("options, message", [
    ({"depth": [1, 1, 1, 1]}, "did you mean 'depths'"),
    ({"depths": [1, 1, 1]}, "one entry per stage"),
    ({"widths": [0.25, 0.5, 1.0, 0.5]}, "last width must be 1.0"),
    ({"kernel_size": 4}, "odd"),
    ({"downsample": "avgpool"}, "downsample must be one of"),
    ({"widths": [0.5, 1.0], "depths": [1, 1]}, "needs 4 down-sampling stages"),
])
def test_bad_scs_layouts_are_config_errors_that_name_the_problem(options, message):
    overrides = [f"model.stem_options={options}"]
    with pytest.raises(ConfigError, match=message):
        resolve_config(load_config(None, ["model.name=spikformer_v2_8_384", *overrides]))


def test_options_of_one_stem_given_to_another_are_a_config_error():
    with pytest.raises(ConfigError, match="stem 'sps': got an unexpected keyword argument 'depths'"):
        resolve_config(load_config(None, ["model.name=spikformer_8_384", "model.stem_options={depths: [1, 1, 1, 1]}"]))


def test_stem_can_be_chosen_in_the_config():
    config = load_config(None, ["model.name=spikformer_v2_8_384", "model.stem=sps"])
    assert spikformer.models.build_model(config.model).stem_name == "sps"
    with pytest.raises(ConfigError, match="unknown stem 'spx'"):
        resolve_config(load_config(None, ["model.name=spikformer_v2_8_384", "model.stem=spx"]))


@pytest.mark.parametrize("path, target", [
    ("configs/imagenet_v2_8_384.yaml", "80.38%"), ("configs/imagenet_v2_8_512.yaml", "80.38%"),
    ("configs/imagenet_v2_8_768.yaml", "80.38%"), ("configs/imagenet_v2_16_pretrain.yaml", "81.10%"),
    ("configs/imagenet_v2_16_finetune.yaml", "81.10%"),
])
def test_imagenet_v2_configs_load_and_state_the_paper_accuracy_they_target(path, target):
    config = load_config(path)
    assert config.model.name.startswith("spikformer_v2_")
    assert target in open(path).read().split("\nmodel:")[0]  # said in the header comment


def test_imagenet_v2_recipe_pretrains_at_t1_and_finetunes_that_encoder_with_layer_decay():
    pretrain = load_config("configs/imagenet_v2_16_pretrain.yaml")
    finetune = load_config("configs/imagenet_v2_16_finetune.yaml")
    assert pretrain.ssl.T == 1 and pretrain.optim.layer_decay is None
    assert finetune.model.pretrained == f"{pretrain.train.out_dir}/encoder.safetensors"
    assert finetune.model.name == pretrain.model.name
    assert finetune.optim.layer_decay == 0.75 and finetune.model.drop_path_rate > 0
