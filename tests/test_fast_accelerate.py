"""``spikformer.fast.accelerate``: the fast path applied from outside a plain model, which stays the oracle."""

from __future__ import annotations

import ast
from pathlib import Path

import torch

import spikformer
from spikformer import fast
from spikformer.fast.memory import SpikeMaxPool2d
from spikformer.fast.modules import FastSpikformer, FastSpikingConvStage, FastSpikingSelfAttention
from spikformer.layers import SpikingSelfAttention
from spikformer.models import Spikformer

SRC = Path(spikformer.__file__).parent
TINY = dict(img_size=16, embed_dim=32, depth=1, num_heads=2, num_classes=10)


def plain_model() -> Spikformer:
    torch.manual_seed(0)
    return Spikformer(patch_size=4, **TINY)


def test_the_model_files_import_nothing_from_the_fast_path():
    model_files = [SRC / "layers.py", *(SRC / "neurons").glob("*.py"), *(SRC / "models").glob("*.py")]
    allowed = {SRC / "models" / "zoo.py"}  # create_model applies the fast path to what it builds
    # the LIF's backends still call the compiled kernels by name (neurons/lif_backends.py, neurons/batchnorm.py)
    allowed |= {SRC / "neurons" / "lif_backends.py", SRC / "neurons" / "batchnorm.py"}
    for path in set(model_files) - allowed:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [alias.name for alias in node.names]
                assert not any(n == "fast" or n.startswith("fast.") or "kernels" in n for n in names), path.name


def test_a_plain_model_has_no_fast_modules_and_create_model_returns_an_accelerated_one():
    plain = plain_model()
    assert not any(type(m).__name__.startswith("Fast") or isinstance(m, SpikeMaxPool2d) for m in plain.modules())
    built = spikformer.create_model("spikformer_cifar_4_256", **TINY)
    assert isinstance(built, FastSpikformer)
    assert all(isinstance(m, FastSpikingSelfAttention) for m in built.modules() if isinstance(m, SpikingSelfAttention))


def test_accelerate_keeps_every_parameter_buffer_and_state_dict_key():
    model = plain_model()
    before = {name: t for name, t in model.state_dict(keep_vars=True).items()}
    assert fast.accelerate(model) is model
    after = model.state_dict(keep_vars=True)
    assert list(after) == list(before) and all(after[name] is before[name] for name in before)
    assert any(isinstance(m, FastSpikingConvStage) for m in model.modules())


def test_the_accelerated_model_computes_the_plain_models_logits_and_gradients():
    plain = plain_model().train()
    accelerated = fast.accelerate(plain_model().train())
    x = torch.rand(2, 3, 16, 16)
    out_plain, out_fast = plain(x), accelerated(x)
    torch.testing.assert_close(out_fast, out_plain, rtol=1e-5, atol=1e-5)
    out_plain.square().sum().backward()
    out_fast.square().sum().backward()
    for (name, a), b in zip(plain.named_parameters(), accelerated.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_with_every_switch_off_the_accelerated_model_is_the_plain_one_bit_for_bit():
    plain = plain_model().eval()
    accelerated = fast.accelerate(plain_model().eval(), policy=fast.FastPolicy.off())
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(accelerated(x), plain(x))


def test_a_users_subclass_is_left_as_it_is():
    class MyAttention(SpikingSelfAttention):
        pass

    module = torch.nn.Sequential(MyAttention(16, 2, qkv_bias=False, scale=0.25))
    fast.accelerate(module)
    assert type(module[0]) is MyAttention
