"""Checkpoints of the original research code load into our models and reproduce their outputs exactly.

Each test writes an official-layout file from scratch: it takes one of our models, renames and reshapes its
state dict into the key dialect of the original code (SPEC §2), adds the unused modules the original carries
(``norm1``/``norm2`` LayerNorms, and for DVS ``pos_embed`` and ``norm``), wraps it as the original scripts
did, and saves it with ``torch.save``. Loading it into a freshly initialised model must give the source
model's outputs bit for bit. (Refusing unsafe pickles and explaining corrupt files: test_checkpoint_safety.py.)
"""

from __future__ import annotations

import argparse
import re

import pytest
import torch
from safetensors.torch import save_file

import spikformer
from spikformer.checkpoint import save_model
from spikformer.errors import CheckpointError
from spikformer.models.official import checkpoint_filter_fn

# The three dialects: how the original code stores the attention and MLP linear maps.
DIALECTS = {
    "cifar": {"name": "spikformer_cifar_4_256", "suffix": "linear", "attn_dims": 0, "mlp_dims": 0},
    "imagenet": {"name": "spikformer_8_512", "suffix": "conv", "attn_dims": 1, "mlp_dims": 2},  # Conv1d, Conv2d
    "dvs": {"name": "spikformer_dvs_2_256", "suffix": "conv", "attn_dims": 1, "mlp_dims": 1},  # Conv1d for both
}


def small_model(name: str, seed: int) -> spikformer.Spikformer:
    torch.manual_seed(seed)
    patch = spikformer.models.get_variant(name).patch_size
    return spikformer.create_model(name, embed_dim=32, depth=2, num_heads=4, img_size=2 * patch, T=2)


def trained_looking(model: spikformer.Spikformer) -> spikformer.Spikformer:
    """Give every BatchNorm non-trivial statistics and affine parameters, so that a wrongly mapped key shows."""
    generator = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_(0, 0.3, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0, 0.5, generator=generator)
                module.num_batches_tracked.fill_(1000)
    return model.eval()


def to_official(model: spikformer.Spikformer, dialect: str) -> dict[str, torch.Tensor]:
    """Our state dict in the original code's names and shapes (SPEC §2 key list), with its unused modules."""
    spec = DIALECTS[dialect]
    official: dict[str, torch.Tensor] = {}
    generator = torch.Generator().manual_seed(7)
    for key, value in model.state_dict().items():
        value = value.clone()
        if m := re.fullmatch(r"patch_embed\.stages\.(\d)\.(conv|bn)\.(.+)", key):
            index = "" if m[1] == "0" else m[1]
            new = f"patch_embed.proj_{m[2]}{index}.{m[3]}"
        elif m := re.fullmatch(r"patch_embed\.rpe\.(conv|bn)\.(.+)", key):
            new = f"patch_embed.rpe_{m[1]}.{m[2]}"
        elif m := re.fullmatch(r"blocks\.(\d+)\.(attn|mlp)\.(q|k|v|proj|fc1|fc2)\.(linear|bn)\.(.+)", key):
            block, part, layer, kind, leaf = m.groups()
            kind = spec["suffix"] if kind == "linear" else "bn"
            new = f"block.{block}.{part}.{layer}_{kind}.{leaf}"
            if kind != "bn" and leaf == "weight":
                extra = spec["attn_dims"] if part == "attn" else spec["mlp_dims"]
                value = value.reshape(*value.shape, *([1] * extra))
        else:
            assert key.startswith("head."), f"unmapped key {key}"
            new = key
        official[new] = value
    dim = model.embed_dim
    for i in range(len(model.blocks)):  # created by the original blocks, never used by their forward pass
        for norm in ("norm1", "norm2"):
            official[f"block.{i}.{norm}.weight"] = torch.randn(dim, generator=generator)
            official[f"block.{i}.{norm}.bias"] = torch.randn(dim, generator=generator)
    if dialect == "dvs":
        tokens = (model.img_size // model.patch_size) ** 2
        official["pos_embed"] = torch.randn(1, tokens, dim, generator=generator)
        official["norm.weight"] = torch.randn(dim, generator=generator)
        official["norm.bias"] = torch.randn(dim, generator=generator)
    return official


def timm_saver_checkpoint(state_dict: dict[str, torch.Tensor], model: torch.nn.Module) -> dict:
    """What the original ``train.py`` (timm's CheckpointSaver) writes: weights plus run bookkeeping."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)
    model(torch.zeros(2, model.in_chans, model.img_size, model.img_size)).sum().backward()
    optimizer.step()
    args = argparse.Namespace(model="spikformer", lr=5e-4, weight_decay=0.06, epochs=300, mixup=0.5,
                              mean=(0.4914, 0.4822, 0.4465), aa="rand-m9-n1-mstd0.4-inc1", resume="",
                              dist_bn="reduce", amp=True, sched="cosine", output="", data_dir=None)
    return {"epoch": 299, "arch": "spikformer", "state_dict": state_dict, "optimizer": optimizer.state_dict(),
            "version": 2, "args": args, "metric": 95.19}


WRAPPINGS = {
    "raw": lambda sd, model: sd,
    "state_dict": lambda sd, model: {"state_dict": sd},
    "model": lambda sd, model: {"model": sd, "epoch": 3},
    "module_prefix": lambda sd, model: {f"module.{k}": v for k, v in sd.items()},
    "module_prefix_in_state_dict": lambda sd, model: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
    "timm_saver": timm_saver_checkpoint,
}


def inputs_for(model: spikformer.Spikformer) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    return torch.randn(3, model.in_chans, model.img_size, model.img_size, generator=generator)


@pytest.mark.parametrize("wrapping", WRAPPINGS)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_official_checkpoint_reproduces_the_source_model_exactly(tmp_path, dialect, wrapping):
    name = DIALECTS[dialect]["name"]
    source = trained_looking(small_model(name, seed=0))
    path = tmp_path / "official.pth"
    torch.save(WRAPPINGS[wrapping](to_official(source, dialect), small_model(name, seed=5)), path)

    target = small_model(name, seed=1).eval()
    x = inputs_for(source)
    with torch.no_grad():
        assert not torch.equal(target(x), source(x))
        spikformer.load_checkpoint(target, path)
        torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)
    assert all(torch.equal(a, b) for a, b in zip(target.state_dict().values(), source.state_dict().values()))


@pytest.mark.parametrize("dialect", DIALECTS)
def test_official_weights_have_the_original_layer_shapes(dialect):
    # Guards the test's own converter: the shapes are those of SPEC §2, not whatever our model uses.
    model = small_model(DIALECTS[dialect]["name"], seed=0)
    official = to_official(model, dialect)
    suffix = DIALECTS[dialect]["suffix"]
    expected_attn = {"cifar": [32, 32], "imagenet": [32, 32, 1], "dvs": [32, 32, 1]}[dialect]
    expected_fc1 = {"cifar": [128, 32], "imagenet": [128, 32, 1, 1], "dvs": [128, 32, 1]}[dialect]
    assert list(official[f"block.0.attn.q_{suffix}.weight"].shape) == expected_attn
    assert list(official[f"block.1.mlp.fc1_{suffix}.weight"].shape) == expected_fc1
    assert list(official["patch_embed.proj_conv.weight"].shape) == [4, model.in_chans, 3, 3]
    assert list(official["patch_embed.proj_conv3.weight"].shape) == [32, 16, 3, 3]
    assert "patch_embed.rpe_bn.num_batches_tracked" in official
    assert (f"block.0.attn.q_{suffix}.bias" in official) == (dialect == "cifar")  # Q/K/V bias only in CIFAR
    assert f"block.0.attn.proj_{suffix}.bias" in official


@pytest.mark.parametrize("dialect", DIALECTS)
def test_loader_drops_unused_layernorms(dialect):
    model = small_model(DIALECTS[dialect]["name"], seed=0)
    official = to_official(model, dialect)
    assert "block.1.norm2.weight" in official
    converted = checkpoint_filter_fn(official)
    assert not any(re.search(r"(^|\.)(norm[12]?|pos_embed)(\.|$)", key) for key in converted)
    assert converted.keys() == model.state_dict().keys()


def test_strict_mismatch_names_missing_and_unexpected_keys(tmp_path):
    model = small_model("spikformer_cifar_4_256", seed=0)
    official = to_official(model, "cifar")
    del official["block.1.mlp.fc2_bn.running_var"]
    official["block.0.attn.extra_linear.weight"] = torch.zeros(32, 32)
    path = tmp_path / "broken.pth"
    torch.save({"state_dict": official}, path)
    with pytest.raises(CheckpointError) as error:
        spikformer.load_checkpoint(small_model("spikformer_cifar_4_256", seed=1), path)
    message = str(error.value)
    assert "missing keys: blocks.1.mlp.fc2.bn.running_var" in message
    assert "unexpected keys: block.0.attn.extra_linear.weight" in message
    assert "strict=False" in message
    # strict=False loads the part that fits.
    target = small_model("spikformer_cifar_4_256", seed=1)
    spikformer.load_checkpoint(target, path, strict=False)
    assert torch.equal(target.head.weight, model.head.weight)


def test_shape_mismatch_is_reported_even_when_not_strict(tmp_path):
    path = tmp_path / "ten_classes.pth"
    torch.save(to_official(small_model("spikformer_cifar_4_256", seed=0), "cifar"), path)
    five_classes = spikformer.create_model("spikformer_cifar_4_256", embed_dim=32, depth=2, num_heads=4,
                                           img_size=8, T=2, num_classes=5)
    for strict in (True, False):
        with pytest.raises(CheckpointError, match=r"head.weight: checkpoint \[10, 32\] vs model \[5, 32\]"):
            spikformer.load_checkpoint(five_classes, path, strict=strict)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_own_checkpoint_round_trips_exactly(tmp_path, dialect):
    name = DIALECTS[dialect]["name"]
    source = trained_looking(small_model(name, seed=0))
    save_model(tmp_path / "own.safetensors", source, config=None)
    target = small_model(name, seed=1).eval()
    spikformer.load_checkpoint(target, tmp_path / "own.safetensors")
    x = inputs_for(source)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)


def test_plain_safetensors_weight_file_loads(tmp_path):
    source = trained_looking(small_model("spikformer_8_512", seed=0))
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "weights.safetensors")
    target = small_model("spikformer_8_512", seed=1).eval()
    spikformer.load_checkpoint(target, tmp_path / "weights.safetensors")
    x = inputs_for(source)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)
