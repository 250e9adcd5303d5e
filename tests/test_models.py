"""The model zoo (SPEC §2): every registered name builds, runs, learns gradients, and counts like the paper.

Registry-driven: a variant is tested the moment it is registered. Big models are built on the meta device, so
counting 66M parameters costs no memory and no time; forward/backward runs on tiny overrides of each name.
"""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import spikformer
from spikformer import create_model, list_models
from spikformer.models import get_variant
from spikformer.neurons import LIF

ALL_MODELS = list_models()

# SPEC §2: the papers' parameter counts, from the original code without its unused modules.
PARAMETERS = {
    "spikformer_cifar_4_256": {10: 4_155_178, 100: 4_178_308},
    "spikformer_cifar_2_384": {10: 5_765_050, 100: 5_799_700},
    "spikformer_cifar_4_384": {10: 9_324_730, 100: 9_359_380},
    "spikformer_8_384": {1000: 16_816_024},
    "spikformer_6_512": {1000: 23_373_352},
    "spikformer_8_512": {1000: 29_689_384},
    "spikformer_10_512": {1000: 36_005_416},
    "spikformer_8_768": {1000: 66_338_632},
    "spikformer_dvs_2_256": {10: 2_566_666, 11: 2_566_923},
}
PARAMETER_CASES = [(name, classes, count) for name, counts in PARAMETERS.items() for classes, count in counts.items()]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def tiny_overrides(name: str, **extra) -> dict:
    """A small model of ``name``'s family: 2x2 tokens, width 32, one block."""
    patch = get_variant(name).patch_size
    return {"embed_dim": 32, "depth": 1, "num_heads": 2, "img_size": 2 * patch, "T": 2, **extra}


def tiny(name: str, **extra) -> spikformer.Spikformer:
    return create_model(name, **tiny_overrides(name, **extra))


def images_for(model: spikformer.Spikformer, batch: int = 2, **kwargs) -> torch.Tensor:
    return torch.randn(batch, model.in_chans, model.img_size, model.img_size, **kwargs)


class StepCounter:
    """Records the time dimension of the first LIF layer's input (the number of steps the model ran)."""

    def __init__(self, model: nn.Module) -> None:
        lif = next(m for m in model.modules() if isinstance(m, LIF))
        self.steps: list[int] = []
        self.handle = lif.register_forward_pre_hook(lambda module, args: self.steps.append(args[0].shape[0]))


# --- the registry ----------------------------------------------------------------------------------


def test_every_v1_variant_of_the_paper_is_registered():
    assert set(PARAMETERS) <= set(ALL_MODELS)


@pytest.mark.parametrize("name, num_classes, expected", PARAMETER_CASES)
def test_parameter_count_equals_the_paper_table(name, num_classes, expected):
    with torch.device("meta"):
        ours = create_model(name, num_classes=num_classes)
        via_timm = timm.create_model(name, num_classes=num_classes)
    assert count_parameters(ours) == expected
    assert count_parameters(via_timm) == expected


@pytest.mark.parametrize("name", ALL_MODELS)
def test_timm_and_spikformer_build_the_same_model(name):
    # Same seed, same structure, same initial weights: the timm entry point is a thin alias.
    torch.manual_seed(1)
    ours = tiny(name)
    torch.manual_seed(1)
    via_timm = timm.create_model(name, **tiny_overrides(name))
    assert type(via_timm) is type(ours)
    a, b = ours.state_dict(), via_timm.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_tiny_model_runs_forward_and_backward(name):
    model = tiny(name)
    x = images_for(model)
    logits = model(x)
    assert logits.shape == (2, get_variant(name).num_classes)
    logits.logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_size_override_works_on_every_name(name):
    patch = get_variant(name).patch_size
    overrides = {"T": 3, "num_classes": 7, "img_size": 4 * patch, "in_chans": 5, "embed_dim": 48, "depth": 2,
                 "num_heads": 3, "mlp_ratio": 2.0, "drop_path_rate": 0.1}
    model = create_model(name, **overrides)
    assert (model.T, model.num_classes, model.img_size, model.in_chans) == (3, 7, 4 * patch, 5)
    assert model.embed_dim == model.num_features == 48 and len(model.blocks) == 2
    block = model.blocks[0]
    assert block.attn.num_heads == 3
    assert block.mlp.fc1.linear.out_features == 96
    assert [b.drop_path.drop_prob for b in model.blocks] == pytest.approx([0.0, 0.1])  # linear in depth
    counter = StepCounter(model)
    features = model.forward_features(torch.randn(2, 5, 4 * patch, 4 * patch))
    assert features.shape == (3, 2, 16, 48)  # [T, B, N, D]
    assert counter.steps == [3]
    assert model(torch.randn(2, 5, 4 * patch, 4 * patch)).shape == (2, 7)
    assert timm.create_model(name, **overrides).T == 3


def test_tiny_imagenet_family_model_by_overrides():
    model = create_model("spikformer_8_512", embed_dim=64, depth=1, img_size=64)
    assert count_parameters(model) < 1_000_000
    assert model.patch_size == 16 and model.blocks[0].attn.scale == 0.125
    assert model.forward_features(torch.randn(1, 3, 64, 64)).shape == (4, 1, 16, 64)  # 4x4 tokens, T=4
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_families_keep_their_structure():
    cifar, imagenet, dvs = (get_variant(n) for n in ("spikformer_cifar_4_384", "spikformer_8_512",
                                                      "spikformer_dvs_2_256"))
    assert (cifar.img_size, cifar.patch_size, cifar.qkv_bias, cifar.attn_scale) == (32, 4, True, 0.125)
    assert (imagenet.img_size, imagenet.patch_size, imagenet.qkv_bias, imagenet.attn_scale) == (224, 16, False, 0.125)
    assert (dvs.img_size, dvs.patch_size, dvs.in_chans, dvs.qkv_bias, dvs.attn_scale) == (128, 16, 2, False, 0.25)
    # A max-pool follows the last two SPS stages for patch 4, all four for patch 16.
    pools = [[isinstance(s.pool, nn.MaxPool2d) for s in create_model(n, embed_dim=32, depth=0).patch_embed.stages]
             for n in ("spikformer_cifar_4_256", "spikformer_8_512")]
    assert pools == [[False, False, True, True], [True, True, True, True]]


def test_model_has_no_unused_layernorms():
    model = create_model("spikformer_dvs_2_256", embed_dim=32, depth=2, num_heads=2, img_size=32)
    names = [name for name, _ in model.named_modules()]
    assert not any(isinstance(m, nn.LayerNorm) for m in model.modules())
    assert not any(part in ("norm1", "norm2", "norm") for name in names for part in name.split("."))
    assert not any("pos_embed" in name for name, _ in model.named_parameters())


def test_pretrained_weights_and_unknown_names_are_explained():
    with pytest.raises(ValueError, match="no pretrained weights are hosted.*from_pretrained"):
        create_model("spikformer_cifar_4_256", pretrained=True)
    with pytest.raises(ValueError, match="did you mean 'spikformer_8_512'"):
        create_model("spikformer_8_521")
    with pytest.raises(TypeError, match="did you mean 'embed_dim'"):  # as for any unexpected keyword (timm's contract)
        create_model("spikformer_8_512", embed_dims=64)


# --- inputs ----------------------------------------------------------------------------------------


def test_static_images_are_repeated_over_t_steps():
    model = tiny("spikformer_cifar_4_256", T=3).eval()
    image = images_for(model)
    counter = StepCounter(model)
    repeated = model(image)
    frames = model(image.unsqueeze(1).expand(-1, 3, -1, -1, -1))  # the same frame at each of 3 steps
    assert counter.steps == [3, 3]
    torch.testing.assert_close(repeated, frames, rtol=0, atol=0)


@pytest.mark.parametrize("steps", [1, 5])
def test_event_frames_run_for_their_own_number_of_steps(steps):
    model = tiny("spikformer_dvs_2_256", T=16).eval()
    frames = torch.rand(3, steps, 2, 32, 32).round()  # [B, T', polarity, H, W]
    counter = StepCounter(model)
    logits = model(frames)
    assert counter.steps == [steps] and logits.shape == (3, 10)
    # Batch and time are not mixed up: a sample's output does not depend on the other samples (eval mode).
    torch.testing.assert_close(model(frames[1:2]), logits[1:2], rtol=1e-5, atol=1e-6)


def test_a_forward_always_starts_from_rest():
    model = tiny("spikformer_cifar_4_256")
    x = images_for(model)
    for mode in (model.train, model.eval):
        mode()
        first = model(x)
        model(torch.randn_like(x) * 5)  # would leave charged membranes behind in a stateful implementation
        torch.testing.assert_close(model(x), first, rtol=0, atol=0)


def test_float64_model_runs_in_float64():
    model = tiny("spikformer_8_384").double()
    logits = model(images_for(model, dtype=torch.float64))
    assert logits.dtype == torch.float64
    logits.sum().backward()
    assert model.head.weight.grad.dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_autocast_half_precision_forward_and_backward(dtype):
    model = tiny("spikformer_cifar_4_256")
    with torch.autocast("cpu", dtype=dtype):
        logits = model(images_for(model))
    assert logits.dtype == dtype and torch.isfinite(logits).all()
    logits.float().logsumexp(1).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_integer_images_are_accepted():
    model = tiny("spikformer_cifar_4_256").eval()
    pixels = torch.randint(0, 3, (2, 3, 8, 8))
    torch.testing.assert_close(model(pixels), model(pixels.float()))


@pytest.mark.parametrize(
    "shape, received",
    [
        ((2, 1, 8, 8), "expected 3 input channels, got 1"),
        ((2, 3, 4, 3, 8, 8), "6 dimensions"),  # wrong rank
        ((3, 8, 8), "3 dimensions"),  # an image without the batch dimension
        ((2, 3, 10, 8), "input size 10x8 is not a positive multiple of the patch size 4"),
        ((2, 4, 1, 8, 8), "expected 3 input channels, got 1"),  # event frames with one polarity
        ((2, 0, 3, 8, 8), "at least one time step"),  # zero event frames
    ],
)
def test_wrong_input_raises_value_error_naming_expected_and_received_shapes(shape, received):
    model = tiny("spikformer_cifar_4_256")
    with pytest.raises(ValueError) as error:
        model(torch.zeros(shape))
    message = str(error.value)
    assert "[B, 3, H, W]" in message and str(list(shape)) in message and received in message


@pytest.mark.parametrize("bad", [{"T": 0}, {"T": -1}, {"embed_dim": 30}, {"num_heads": 5}, {"img_size": 30},
                                 {"drop_path_rate": 1.0}, {"depth": -1}])
def test_invalid_constructor_arguments_raise_value_error(bad):
    key = next(iter(bad))
    with pytest.raises(ValueError, match=key if key != "num_heads" else "num_heads 5"):
        create_model("spikformer_cifar_4_256", **{"embed_dim": 32, "num_heads": 2, **bad})


# --- spiking self-attention ------------------------------------------------------------------------


def capture(module: nn.Module, store: dict, key: str, inputs: bool = False):
    if inputs:
        return module.register_forward_pre_hook(lambda m, args: store.__setitem__(key, args[0].detach()))
    return module.register_forward_hook(lambda m, args, out: store.__setitem__(key, out.detach()))


# 4 heads: 16 tokens > 8 channels per head, so the model uses Q (K^T V); 1 head: 32 channels, (Q K^T) V.
@pytest.mark.parametrize("heads", [4, 1])
@pytest.mark.parametrize("name", ["spikformer_cifar_4_256", "spikformer_8_512", "spikformer_dvs_2_256"])
def test_ssa_has_no_softmax(name, heads):
    """The attention LIF receives exactly ``(Q K^T) V * scale`` of the binary Q, K, V spikes, per head."""
    model = create_model(name, embed_dim=32, depth=1, num_heads=heads, img_size=4 * get_variant(name).patch_size)
    attn = model.blocks[0].attn
    seen: dict[str, torch.Tensor] = {}
    handles = [capture(attn.q, seen, "q"), capture(attn.k, seen, "k"), capture(attn.v, seen, "v"),
               capture(attn.attn_lif, seen, "lif_in", inputs=True), capture(attn.attn_lif, seen, "lif_out")]
    model(images_for(model))
    for handle in handles:
        handle.remove()

    T, B, N, D = seen["q"].shape
    q, k, v = (seen[key].view(T, B, N, heads, D // heads).transpose(2, 3) for key in "qkv")  # [T, B, h, N, d]
    for spikes in (q, k, v):
        assert set(spikes.unique().tolist()) <= {0.0, 1.0}
    scores = q @ k.transpose(-2, -1)  # [T, B, h, N, N]: integer overlaps, never normalised
    assert scores.max() > 1
    expected = (scores @ v * get_variant(name).attn_scale).transpose(2, 3).reshape(T, B, N, D)
    torch.testing.assert_close(seen["lif_in"], expected, rtol=0, atol=0)
    # The attention LIF has threshold 0.5; one step from rest fires where scaled sum / tau >= 0.5.
    assert attn.attn_lif.params.v_threshold == 0.5
    torch.testing.assert_close(seen["lif_out"][0], (expected[0] / 2 >= 0.5).float(), rtol=0, atol=0)


def test_ssa_computes_the_same_integers_in_either_product_order():
    # Q (K^T V) is the cheap order when N > d; with 0/1 operands it equals (Q K^T) V exactly.
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randint(0, 2, (2, 3, 4, 50, 8), generator=generator).float() for _ in range(3))
    assert torch.equal(q @ (k.transpose(-2, -1) @ v), (q @ k.transpose(-2, -1)) @ v)
