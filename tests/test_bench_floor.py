"""benchmarks/bench_model.Floor, the denominator of every "vs floor" ratio: the model's own convolutions,
linear layers and attention products on spike inputs of their real shapes, nothing else. Its inference pass
must cost what an inference pass costs: no autograd records and one output alive at a time (holding all of
them once made it pay page faults the model's pass does not, flattering the model by up to 18%)."""

from __future__ import annotations

import sys
import weakref
from pathlib import Path

import torch
from torch import nn

from spikformer import create_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_model import Floor  # noqa: E402

sys.path.pop(0)


def _floor(dtype=torch.float32) -> tuple[Floor, nn.Module]:
    torch.manual_seed(0)
    model = create_model("spikformer_cifar_2_384", img_size=16)
    return Floor(model, 1, 16, torch.device("cpu"), dtype), model


def test_the_floor_holds_every_conv_linear_and_attention_product_of_the_model():
    floor, model = _floor()
    products = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert [module for module, _, _ in floor.layers] == products
    assert len(floor.qkv) == len(model.blocks)
    outs = floor()
    assert len(outs) == len(products) + len(model.blocks)
    assert all(o.requires_grad for o in outs[1:])  # the training floor's backward reaches every input


def _watch_outputs(floor: Floor) -> list[tuple[int, bool]]:
    """Per product call: how many earlier outputs are still alive, and whether this one records a graph."""
    seen, refs = [], []

    def hook(module, args, out):
        seen.append((sum(ref() is not None for ref in refs), out.requires_grad))
        refs.append(weakref.ref(out))

    for module, _, _ in floor.layers:
        module.register_forward_hook(hook)
    return seen


def test_the_inference_floor_holds_one_output_at_a_time_and_records_no_graph():
    floor, _ = _floor()
    seen = _watch_outputs(floor)
    with torch.inference_mode():
        assert floor.infer() is None
    assert seen == [(0, False)] * len(floor.layers)


def test_the_training_floor_keeps_every_output_for_its_backward_pass():
    floor, _ = _floor()
    seen = _watch_outputs(floor)
    outs = floor()
    assert [alive for alive, _ in seen] == list(range(len(floor.layers)))
    assert len(outs) > len(floor.layers)


def test_the_bfloat16_floor_feeds_bfloat16_spikes_after_the_image():
    floor, _ = _floor(torch.bfloat16)
    assert floor.inputs[0].dtype == torch.float32  # the image, cast by autocast as in the model
    assert {x.dtype for x in floor.inputs[1:]} == {torch.bfloat16}
    assert all(set(x.unique().tolist()) <= {0.0, 1.0} for x in floor.inputs[1:])
