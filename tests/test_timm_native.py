"""timm's conventions on every registered variant, the way timm's own tests/test_models.py checks its models:
pretrained configs, head replacement, features, keywords, weight loading through timm. Conventions that
cannot apply to a spiking model are pinned as such (docs/timm.md says why)."""

from __future__ import annotations

import logging

import pytest
import timm
import torch
from safetensors.torch import save_file
from test_official_checkpoints import to_official, trained_looking
from timm.data import resolve_model_data_config

from spikformer.checkpoint import save_model
from spikformer.models import get_variant, list_models

ALL = list_models()


def tiny(name: str) -> dict:
    """Width 32, two blocks, a 2x2 token grid at the variant's patch size: seconds for every variant."""
    return dict(embed_dim=32, depth=2, num_heads=4, img_size=2 * get_variant(name).patch_size, T=2)


def inputs(model, batch: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    return torch.randn(batch, model.in_chans, model.img_size, model.img_size, generator=generator)


def weights_like_trained(name: str, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return trained_looking(timm.create_model(name, **{**tiny(name), **overrides}))


# --- the pretrained config (timm's test_model_default_cfgs) ------------------------------------------------

@pytest.mark.parametrize("name", ALL)
def test_every_variant_carries_a_pretrained_config_that_describes_its_input(name):
    variant = get_variant(name)
    model = timm.create_model(name, device="meta")  # the full-size model, without allocating it
    cfg = model.pretrained_cfg
    assert cfg["architecture"] == name and model.default_cfg is model.pretrained_cfg
    assert cfg["input_size"] == (variant.in_chans, variant.img_size, variant.img_size)
    assert len(cfg["mean"]) == len(cfg["std"]) == variant.in_chans
    assert cfg["num_classes"] == variant.num_classes == model.num_classes
    assert {"crop_pct", "interpolation"} <= cfg.keys()
    state = model.state_dict()
    assert cfg["first_conv"] + ".weight" in state and cfg["classifier"] + ".weight" in state
    data = resolve_model_data_config(model)
    assert data["input_size"] == cfg["input_size"] and data["mean"] == cfg["mean"]


def test_the_data_config_is_each_familys_own():
    cifar, imagenet, dvs = (resolve_model_data_config(timm.create_model(n, device="meta"))
                            for n in ("spikformer_cifar_4_384", "spikformer_8_512", "spikformer_dvs_2_256"))
    assert cifar["input_size"] == (3, 32, 32) and cifar["mean"] == (0.4914, 0.4822, 0.4465) and cifar["crop_pct"] == 1
    assert imagenet["input_size"] == (3, 224, 224) and imagenet["crop_pct"] == 0.875
    assert dvs["input_size"] == (2, 128, 128) and dvs["mean"] == (0.0, 0.0) and dvs["std"] == (1.0, 1.0)


# --- forward, backward, classifier (test_model_backward, test_model_default_cfgs) ---------------------------

@pytest.mark.parametrize("name", ALL)
def test_every_parameter_gets_a_gradient_with_a_replaced_head(name):
    model = timm.create_model(name, num_classes=42, **tiny(name)).train()
    outputs = model(inputs(model))
    outputs.mean().backward()
    assert outputs.shape == (2, 42) and not torch.isnan(outputs).any()
    assert all(p.grad is not None for p in model.parameters())


def test_reset_classifier_takes_timms_arguments():
    model = timm.create_model("spikformer_cifar_4_256", **tiny("spikformer_cifar_4_256")).eval()
    x = inputs(model)
    model.reset_classifier(7, global_pool=None)
    assert model(x).shape == (2, 7) and model.get_classifier().out_features == 7
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)  # pooled features, as timm's models without a head
    # Not applicable: the pooling (mean over tokens, then time) is part of the method, so '' (no pooling)
    # or another pooling is refused rather than ignored.
    with pytest.raises(ValueError, match="mean over tokens and time"):
        model.reset_classifier(0, "")


# --- timm's keywords ------------------------------------------------------------------------------------------

def test_device_and_dtype_keywords_build_the_model_there():
    model = timm.create_model("spikformer_8_512", device="meta", dtype=torch.bfloat16)
    assert {(p.device.type, p.dtype) for p in model.parameters()} == {("meta", torch.bfloat16)}


def test_grad_checkpointing_gives_the_same_gradients():
    name = "spikformer_cifar_4_256"
    plain, checkpointed = weights_like_trained(name).train(), weights_like_trained(name).train()
    checkpointed.set_grad_checkpointing(True)
    x = inputs(plain)
    plain(x).square().mean().backward()
    checkpointed(x).square().mean().backward()
    for (key, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=key)


# --- features (test_model_forward_features, forward_intermediates) -----------------------------------------

@pytest.mark.parametrize("name", ALL)
def test_features_only_gives_one_map_per_block_at_the_token_grid(name):
    features = timm.create_model(name, features_only=True, **tiny(name)).eval()
    variant = get_variant(name)
    assert features.feature_info.channels() == [32, 32]
    assert features.feature_info.reduction() == [variant.patch_size] * 2
    maps = features(torch.randn(2, variant.in_chans, 2 * variant.patch_size, 2 * variant.patch_size))
    assert [tuple(m.shape) for m in maps] == [(2, 32, 2, 2)] * 2


def test_features_only_loads_pretrained_weights(tmp_path):
    name = "spikformer_cifar_4_256"
    source = weights_like_trained(name)
    save_file(source.state_dict(), tmp_path / "w.safetensors")
    features = timm.create_model(name, pretrained=True, features_only=True, **tiny(name),
                                 pretrained_cfg_overlay=dict(file=str(tmp_path / "w.safetensors")))
    x = inputs(source)
    expected = source.forward_intermediates(x, intermediates_only=True)
    assert all(torch.equal(a, b) for a, b in zip(features.eval()(x), expected, strict=True))


def test_forward_intermediates_are_the_time_mean_of_each_blocks_output():
    name = "spikformer_cifar_4_256"
    model = weights_like_trained(name, depth=3)
    x = inputs(model)
    final, maps = model.forward_intermediates(x)
    torch.testing.assert_close(final, model.forward_features(x))
    assert [tuple(m.shape) for m in maps] == [(2, 32, 2, 2)] * 3
    tokens = model.forward_intermediates(x, indices=[0, 2], output_fmt="NLC", intermediates_only=True)
    assert [tuple(t.shape) for t in tokens] == [(2, 4, 32)] * 2
    torch.testing.assert_close(tokens[1], final.mean(0))  # the last block's tokens, averaged over T
    assert len(model.forward_intermediates(x, indices=1, stop_early=True, intermediates_only=True)) == 1


# --- weights, the timm way ----------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["plain", "own_checkpoint", "official"])
def test_pretrained_true_with_a_local_file_loads_it_exactly(tmp_path, layout):
    name = "spikformer_dvs_2_256" if layout == "official" else "spikformer_cifar_4_256"
    source = weights_like_trained(name)
    path = tmp_path / ("weights.pth" if layout == "official" else "weights.safetensors")
    if layout == "plain":
        save_file(source.state_dict(), path)
    elif layout == "own_checkpoint":
        save_model(path, source)  # keys under model., as best.safetensors of a run writes them today
    else:
        torch.save(to_official(source, "dvs"), path)
    loaded = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **tiny(name))
    x = inputs(source)
    assert torch.equal(loaded.eval()(x), source(x))


def test_num_classes_on_load_replaces_the_head_and_keeps_the_backbone(tmp_path):
    name = "spikformer_cifar_4_256"
    source = weights_like_trained(name)
    save_file(source.state_dict(), tmp_path / "w.safetensors")
    loaded = timm.create_model(name, pretrained=True, num_classes=5, **tiny(name),
                               pretrained_cfg_overlay=dict(file=str(tmp_path / "w.safetensors")))
    assert loaded.num_classes == 5 and loaded.head.out_features == 5
    x = inputs(source)
    torch.testing.assert_close(loaded.eval().forward_features(x), source.forward_features(x), rtol=0, atol=0)


def test_in_chans_on_load_adapts_the_first_conv_as_timm_does(tmp_path):
    name = "spikformer_cifar_4_256"
    save_file(weights_like_trained(name).state_dict(), tmp_path / "w.safetensors")
    gray = timm.create_model(name, pretrained=True, in_chans=1, **tiny(name),
                             pretrained_cfg_overlay=dict(file=str(tmp_path / "w.safetensors")))
    assert gray.patch_embed.stages[0].conv.weight.shape[1] == 1
    assert gray(torch.rand(1, 1, 8, 8)).shape == (1, 10)


def test_a_files_head_of_the_requested_size_is_kept(tmp_path, caplog):
    name = "spikformer_cifar_4_256"
    source = weights_like_trained(name, num_classes=3)
    save_file(source.state_dict(), tmp_path / "w.safetensors")
    with caplog.at_level(logging.INFO):
        loaded = timm.create_model(name, pretrained=True, num_classes=3, **tiny(name),
                                   pretrained_cfg_overlay=dict(file=str(tmp_path / "w.safetensors")))
    x = inputs(source)
    assert torch.equal(loaded.eval()(x), source(x))  # the trained 3-class head, not a fresh one
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("file_classes, wanted", [(10, 5), (0, 5)])
def test_a_dropped_classifier_is_said_in_one_line(tmp_path, caplog, file_classes, wanted):
    name = "spikformer_cifar_4_256"
    save_file(weights_like_trained(name, num_classes=file_classes).state_dict(), tmp_path / "w.safetensors")
    with caplog.at_level(logging.INFO):
        timm.create_model(name, pretrained=True, num_classes=wanted, **tiny(name),
                          pretrained_cfg_overlay=dict(file=str(tmp_path / "w.safetensors")))
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(said) == 1 and "\n" not in said[0], said
    assert f"{wanted} classes" in said[0] and "initialised" in said[0]
    assert (f"{file_classes} classes" if file_classes else "no classifier") in said[0]


def test_a_one_channel_file_loads_as_one_channel_without_timms_warning(tmp_path, caplog):
    name = "spikformer_cifar_4_256"
    source = weights_like_trained(name, in_chans=1)
    save_file(source.state_dict(), tmp_path / "w.safetensors")
    with caplog.at_level(logging.INFO):
        gray = timm.create_model(name, pretrained=True, in_chans=1, **tiny(name),
                                 pretrained_cfg_overlay=dict(file=str(tmp_path / "w.safetensors")))
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(gray.eval()(x), source(x))


@pytest.mark.parametrize("layout", ["own_checkpoint", "official"])
def test_checkpoint_path_loads_own_and_official_files(tmp_path, layout):
    name = "spikformer_cifar_4_256"
    source = weights_like_trained(name)
    path = tmp_path / "weights.pth"
    if layout == "own_checkpoint":
        path = tmp_path / "best.safetensors"
        save_model(path, source)
    else:
        torch.save({"state_dict": to_official(source, "cifar")}, path)
    loaded = timm.create_model(name, checkpoint_path=str(path), **tiny(name))
    x = inputs(source)
    assert torch.equal(loaded.eval()(x), source(x))


def test_no_hosted_weights_is_said_with_the_ways_to_give_some():
    with pytest.raises(ValueError, match="no pretrained weights are hosted.*pretrained_cfg_overlay"):
        timm.create_model("spikformer_cifar_4_256", pretrained=True)


# --- conventions that do not apply ---------------------------------------------------------------------------

@pytest.mark.xfail(strict=True, raises=Exception,
                   reason="TorchScript cannot compile the LIF's custom autograd Functions and C/Triton kernels; "
                          "deploy through `spikformer export` (ONNX/NIR) instead (docs/timm.md)")
def test_torchscript_compiles_the_model():
    torch.jit.script(timm.create_model("spikformer_cifar_4_256", **tiny("spikformer_cifar_4_256")).eval())


@pytest.mark.parametrize("name", ["spikformer_cifar_4_256", "spikformer_dvs_2_256_qkpool", "spikformer_v2_8_384"])
def test_fx_feature_extraction_gives_the_models_outputs_and_surrogate_gradients(name):
    """timm's fx feature extraction (torchvision's create_feature_extractor with timm's leaf modules): the
    traced graph taps each unit and computes what the model computes, forward and backward."""
    from timm.models import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    torch.manual_seed(0)
    model = timm.create_model(name, **tiny(name)).train()
    tracing = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())
    train_nodes, _ = get_graph_node_names(model, tracer_kwargs=tracing)
    assert "blocks.0.attn.q" in train_nodes and "patch_embed.stages.0" in train_nodes  # every unit is a tap
    traced = create_feature_extractor(model, return_nodes={train_nodes[-1]: "out", "blocks.0": "block0"},
                                      tracer_kwargs=tracing)
    x = inputs(model)
    expected = model(x)
    expected.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    out = traced(x)
    torch.testing.assert_close(out["out"], expected, rtol=0, atol=0)
    assert out["block0"].shape[:2] == (model.T, 2)  # a block's output: [T, B, N, D]
    out["out"].square().mean().backward()
    for n, p in traced.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], msg=n)
