"""Masked pre-training: the mask hides what it should, the loss reads masked patches only, the pieces fit."""

from __future__ import annotations

import pytest
import torch

import spikformer
from spikformer.config import load_config
from spikformer.errors import ConfigError
from spikformer.models import resolve_config
from spikformer.ssl import MaskedSpikformer, masked_patch_loss, masked_stem_forward, patchify, random_patch_mask
from spikformer.ssl.decoder import sincos_position_embedding
from spikformer.ssl.loss import normalize_patches, unpatchify
from spikformer.ssl.masking import sparse_batch_norm, visible_map


def tiny_encoder(stem: str = "scs", **overrides) -> spikformer.Spikformer:
    kwargs = dict(embed_dim=32, num_heads=4, depth=1, img_size=32, patch_size=4, in_chans=1, num_classes=0, T=1,
                  stem=stem)
    kwargs.update(overrides)
    return spikformer.create_model("spikformer_v2_8_384", **kwargs)


def tiny_masked_model(encoder_tokens: str = "all", **overrides) -> MaskedSpikformer:
    return MaskedSpikformer(tiny_encoder(**overrides), mask_ratio=0.5, decoder_dim=32, decoder_depth=1,
                            decoder_heads=4, encoder_tokens=encoder_tokens)


def hidden_pixels(mask: torch.Tensor, patch: int) -> torch.Tensor:
    """``[B, 1, H, W]`` bool: the pixels under the mask."""
    return ~visible_map(mask, (mask.shape[1] * patch, mask.shape[2] * patch))


# --- the mask ---------------------------------------------------------------------------------------


def test_random_mask_hides_the_configured_share_of_patches_in_every_sample():
    mask = random_patch_mask(16, (8, 8), 0.75, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (16, 8, 8) and mask.dtype == torch.bool
    assert mask.flatten(1).sum(1).tolist() == [48] * 16
    assert len({tuple(m.flatten().tolist()) for m in mask}) == 16  # a different mask for each sample


def test_random_mask_refuses_a_ratio_that_hides_nothing_or_everything():
    with pytest.raises(ValueError, match="at least one"):
        random_patch_mask(2, (2, 2), 0.05)
    with pytest.raises(ValueError, match="at least one"):
        random_patch_mask(2, (2, 2), 0.95)


@pytest.mark.parametrize("stem, encoder_tokens, tokens", [
    ("scs", "all", 64), ("sps", "all", 64), ("scs", "visible", 32), ("sps", "visible", 32),
])
def test_pixels_under_the_mask_cannot_change_the_encoder_output(stem, encoder_tokens, tokens):
    model = tiny_masked_model(encoder_tokens, stem=stem, T=2).train()  # training: BatchNorm uses batch stats
    images = torch.randn(4, 1, 32, 32)
    mask = random_patch_mask(4, (8, 8), 0.5, generator=torch.Generator().manual_seed(1))
    noise = torch.randn_like(images) * 10 * hidden_pixels(mask, 4)
    before = model.forward_encoder(images, mask)
    after = model.forward_encoder(images + noise, mask)
    assert noise.abs().sum() > 0
    assert before.shape == (2, 4, tokens, 32)  # [T, B, all or visible tokens, D]
    assert torch.equal(before, after)
    # ... while a visible pixel does change it.
    visible_noise = torch.randn_like(images) * 10 * ~hidden_pixels(mask, 4)
    assert not torch.equal(before, model.forward_encoder(images + visible_noise, mask))


def test_hidden_tokens_enter_the_blocks_with_their_position_so_the_encoder_can_fill_them_in():
    model = tiny_masked_model("all", T=1).eval()
    mask = random_patch_mask(2, (8, 8), 0.5, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        x = model.encoder.time_first(torch.randn(2, 1, 32, 32))
        tokens = masked_stem_forward(model.encoder.patch_embed, x, mask)
        features = model.forward_encoder(torch.randn(2, 1, 32, 32), mask)
    hidden = mask.flatten(1)
    assert (tokens[:, hidden] == 0).all()  # the stem leaves them empty ...
    first_hidden = features[0, 0][hidden[0]]  # [hidden tokens of sample 0, D]
    assert torch.unique(first_hidden, dim=0).shape[0] == first_hidden.shape[0]  # ... the blocks tell them apart
    assert not any(name.startswith("mask_") for name in model.encoder.state_dict())  # pre-training only


@pytest.mark.parametrize("downsample", ["maxpool", "stride"])
def test_masked_positions_stay_empty_after_every_stem_stage(downsample):
    encoder = tiny_encoder(stem_options={"downsample": downsample}, T=2).train()
    images = torch.randn(3, 1, 32, 32) * 3
    mask = random_patch_mask(3, (8, 8), 0.5, generator=torch.Generator().manual_seed(2))
    outputs: list[torch.Tensor] = []
    tokens = masked_stem_forward(encoder.patch_embed, encoder.time_first(images), mask, outputs)
    assert len(outputs) == len(encoder.patch_embed.stages) + 1  # every unit, then the RPE
    for index, out in enumerate(outputs):
        hidden = ~visible_map(mask, out.shape[-2:])  # [B, 1, H, W] at this stage's resolution
        assert out.shape[-1] in (32, 16, 8)
        assert (out * hidden).abs().sum() == 0, f"stage {index} has activity under the mask"
        assert (out * ~hidden).sum() > 0, f"stage {index} is silent everywhere"
    assert (tokens[:, mask.flatten(1)] == 0).all()


def test_sparse_batch_norm_uses_statistics_of_visible_positions_only():
    bn = torch.nn.BatchNorm2d(3, momentum=1.0)  # running stats = the last batch's, to read them directly
    x = torch.randn(2, 3, 4, 4)
    visible = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    visible[:, :, :2] = True
    out = sparse_batch_norm(bn, x + 100 * ~visible, visible)  # huge values under the mask
    active = x.permute(0, 2, 3, 1)[visible[:, 0]]  # [M, C]
    assert torch.allclose(bn.running_mean, active.mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, active.var(0), atol=1e-5)
    assert (out * ~visible).abs().sum() == 0
    assert torch.allclose(out.permute(0, 2, 3, 1)[visible[:, 0]].mean(0), torch.zeros(3), atol=1e-5)


def test_the_normal_forward_path_is_unchanged_by_the_masked_one():
    encoder = tiny_encoder().eval()
    images = torch.randn(2, 1, 32, 32)
    full = encoder.forward_features(images)
    none_hidden = torch.zeros(2, 8, 8, dtype=torch.bool)
    with torch.no_grad():
        tokens = masked_stem_forward(encoder.patch_embed, encoder.time_first(images), none_hidden)
        for block in encoder.blocks:
            tokens = block(tokens)
    assert torch.allclose(full, tokens)


def test_masked_pretraining_refuses_a_stem_without_conv_stages():
    with pytest.raises(ValueError, match="no masked forward path"):
        masked_stem_forward(torch.nn.Identity(), torch.zeros(1, 1, 1, 8, 8), torch.zeros(1, 2, 2, dtype=torch.bool))


# --- the loss ---------------------------------------------------------------------------------------


def test_patchify_orders_patches_like_tokens_and_unpatchify_inverts_it():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float).view(2, 3, 8, 8)
    patches = patchify(images, 4)
    assert patches.shape == (2, 4, 4 * 4 * 3)
    assert torch.equal(patches[0, 1].view(4, 4, 3)[..., 0], images[0, 0, :4, 4:])  # row 0, column 1
    assert torch.equal(unpatchify(patches, 4, 3, (2, 2)), images)


@pytest.mark.parametrize("norm_pix", [True, False])
def test_loss_counts_masked_patches_only(norm_pix):
    target = torch.randn(2, 16, 12)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, ::3] = True
    prediction = torch.randn(2, 16, 12, requires_grad=True)
    loss = masked_patch_loss(prediction, target, mask, norm_pix)
    loss.backward()
    assert (prediction.grad[~mask] == 0).all()
    assert (prediction.grad[mask] != 0).any()
    changed = prediction.detach().clone()
    changed[~mask] += 100.0  # any prediction at visible patches
    assert torch.equal(masked_patch_loss(changed, target, mask, norm_pix), loss.detach())
    expected_target = normalize_patches(target)[0] if norm_pix else target
    expected = (prediction.detach() - expected_target)[mask].pow(2).mean()
    assert torch.allclose(loss, expected)


def test_norm_pix_target_has_zero_mean_and_unit_variance_per_patch():
    normed, mean, std = normalize_patches(torch.randn(3, 5, 48) * 4 + 2)
    assert torch.allclose(normed.mean(-1), torch.zeros(3, 5), atol=1e-5)
    assert torch.allclose(normed.var(-1, unbiased=False), torch.ones(3, 5), atol=1e-4)


# --- encoder, decoder, model -------------------------------------------------------------------------


@pytest.mark.parametrize("encoder_tokens", ["all", "visible"])
def test_masked_model_reconstructs_every_patch_and_trains_end_to_end(encoder_tokens):
    model = tiny_masked_model(encoder_tokens)
    images = torch.randn(4, 1, 32, 32)
    loss, prediction, mask = model(images)
    assert prediction.shape == (4, 64, 16) and mask.shape == (4, 8, 8)
    loss.backward()
    assert model.encoder.patch_embed.stages[0].conv.weight.grad.abs().sum() > 0  # through the spiking stem
    if encoder_tokens == "visible":  # the decoder fills the hidden positions with its mask token
        assert model.decoder.mask_token.grad.abs().sum() > 0
    # Every parameter reaches the loss: DDP stops at its second step on one that does not.
    assert [name for name, p in model.named_parameters() if p.grad is None] == []
    reconstruction = model.reconstruct(images, mask)
    visible = ~hidden_pixels(mask, 4).expand_as(images)
    assert torch.equal(reconstruction[visible], images[visible])  # visible patches are shown as they were


def test_decoder_position_embedding_is_distinct_for_every_patch():
    position = sincos_position_embedding((4, 6), 32)
    assert position.shape == (24, 32)
    assert torch.cdist(position, position).add(torch.eye(24)).min() > 0.1
    with pytest.raises(ValueError, match="multiple of 4"):
        sincos_position_embedding((2, 2), 30)


def test_decoder_without_blocks_projects_each_token_of_an_all_token_encoder():
    model = MaskedSpikformer(tiny_encoder(), decoder_dim=32, decoder_depth=0, decoder_heads=4)
    loss, prediction, _ = model(torch.randn(2, 1, 32, 32))
    assert prediction.shape == (2, 64, 16) and len(model.decoder.blocks) == 0
    with pytest.raises(ValueError, match="decoder_depth >= 1"):
        MaskedSpikformer(tiny_encoder(), decoder_depth=0, encoder_tokens="visible")


def test_masked_model_needs_an_encoder_without_classifier():
    with pytest.raises(ValueError, match="num_classes=0"):
        MaskedSpikformer(tiny_encoder(num_classes=10))


def test_masked_model_names_the_expected_input_size():
    with pytest.raises(ValueError, match=r"\[B, 1, 32, 32\]"):
        tiny_masked_model()(torch.randn(2, 1, 28, 28))


@pytest.mark.parametrize("override, message", [
    ("ssl.mask_ratio=1.5", "between 0 and 1"),
    ("ssl.mask_ratio=0.001", "hide at least one"),
    ("ssl.decoder_heads=3", "not divisible by ssl.decoder_heads"),
    ("ssl.decoder_depth=-1", ">= 0"),
    ("ssl.encoder_tokens=visible ssl.decoder_depth=0", "nothing to be predicted from"),
    ("ssl.encoder_tokens=some", "must be one of all, visible"),
    ("ssl.mask_raito=0.5", "did you mean 'mask_ratio'"),
])
def test_bad_ssl_settings_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):  # the mask against the token grid: when the run resolves
        resolve_config(load_config("configs/digits_v2_pretrain.yaml", override.split()))


# --- fine-tuning: layer-wise lr decay --------------------------------------------------------------


def test_layer_decay_groups_are_stem_then_each_block_then_head():
    from spikformer.train.optim import build_optimizer

    config = load_config(None, ["model.name=spikformer_v2_8_384", "optim.layer_decay=0.5"])
    model = spikformer.create_model("spikformer_v2_8_384", embed_dim=32, num_heads=4, depth=3, img_size=32,
                                    num_classes=10)
    optimizer = build_optimizer(model, config.optim)
    scale_of = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            scale_of[param] = (group["lr_scale"], group["weight_decay"])
    named = dict(model.named_parameters())
    assert len(scale_of) == len(named)  # every parameter is optimised
    expected = {"patch_embed.": 0.5**4, "blocks.0.": 0.5**3, "blocks.1.": 0.5**2, "blocks.2.": 0.5, "head.": 1.0}
    for name, param in named.items():
        prefix = next(p for p in expected if name.startswith(p))
        scale, decay = scale_of[param]
        assert scale == pytest.approx(expected[prefix]), name
        assert decay == (0.0 if param.ndim <= 1 else config.optim.weight_decay), name  # no decay on BN/bias


def test_masked_model_trains_under_bfloat16_autocast():
    model = tiny_masked_model(T=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _, _ = model(torch.randn(4, 1, 32, 32))
    loss.backward()
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    assert model.encoder.patch_embed.stages[0].conv.weight.grad.abs().sum() > 0


def test_overrides_read_exponent_numbers_without_a_dot_as_numbers():
    config = load_config("configs/digits_v2_finetune.yaml", ["optim.lr=5e-3", "optim.min_lr=1E-6"])
    assert config.optim.lr == 5e-3 and config.optim.min_lr == 1e-6
