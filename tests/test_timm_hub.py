"""timm's own Hub loader on our models, offline: ``timm.create_model("hf-hub:ORG/NAME", pretrained=True)`` and
``pretrained_cfg_overlay=dict(hf_hub_id=...)`` load what ``timm.models.save_for_hf`` wrote, bit for bit.

Nothing in timm is patched. The "Hub repository" is the folder ``save_for_hf`` writes, placed in
huggingface_hub's cache layout (``models--ORG--NAME/refs/main`` -> ``snapshots/<commit>/``) with huggingface_hub
in offline mode: exactly what a user sees after one download with ``HF_HUB_OFFLINE=1``. So the real
``hf_hub_download`` answers timm's requests (config.json, then model.safetensors or, failing that with
``EntryNotFoundError``, pytorch_model.bin), however timm binds it (timm 1.0 wraps it in a ``partial`` at import
time, which a patch of ``huggingface_hub.hf_hub_download`` would not reach).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest
import timm
import torch
from huggingface_hub.utils import LocalEntryNotFoundError  # also where huggingface_hub 0.20 has it
from test_hub import V2_TINY, same, trained
from timm.models import save_for_hf

import spikformer
import spikformer.models.registry as variant_table

REPO = "someone/spikformer-tiny"
COMMIT = "0123456789abcdef0123456789abcdef01234567"  # any 40 hex digits: the snapshot's revision


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty huggingface_hub cache, offline (no request leaves the machine; a miss is an error at once)."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def publish(model: torch.nn.Module, cache: Path, repo_id: str = REPO, safe: bool = True) -> None:
    """``save_for_hf(model)`` as the Hub repository ``repo_id``, as huggingface_hub caches a downloaded one."""
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    save_for_hf(model, storage / "snapshots" / COMMIT, safe_serialization=safe)
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(COMMIT)  # read verbatim: no trailing newline


@pytest.mark.parametrize("safe", [True, False], ids=["model.safetensors", "pytorch_model.bin"])
def test_hf_hub_id_builds_from_the_repos_config_and_loads_its_weights_bit_for_bit(hub_cache, monkeypatch, safe):
    model = trained()
    publish(model, hub_cache, safe=safe)
    # The architecture comes from the repository's config.json, not from today's variant table.
    table = variant_table.VARIANTS
    monkeypatch.setitem(table, "spikformer_v2_8_384", dataclasses.replace(table["spikformer_v2_8_384"],
                                                                        num_heads=2, T=4))
    loaded = timm.create_model(f"hf-hub:{REPO}", pretrained=True)
    assert loaded.blocks[0].attn.num_heads == 4 and loaded.T == 2
    assert loaded.pretrained_cfg["source"] == "hf-hub" and loaded.pretrained_cfg["hf_hub_id"] == REPO
    assert same(loaded, model)


def test_num_classes_on_a_hub_load_replaces_the_head_and_keeps_the_backbone(hub_cache):
    model = trained()
    publish(model, hub_cache)
    five = timm.create_model(f"hf-hub:{REPO}", pretrained=True, num_classes=5)
    assert five.head.out_features == 5 and five.num_classes == 5
    backbone = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    assert all(torch.equal(five.state_dict()[k], v) for k, v in backbone.items())
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    assert torch.equal(five.eval().forward_features(x), model.eval().forward_features(x))
    assert five(x).shape == (2, 5)


def test_a_named_variant_takes_its_weights_from_a_hub_id_in_the_overlay(hub_cache):
    model = trained()
    publish(model, hub_cache)
    # As with file=: the architecture is the caller's (V2_TINY), and num_classes in the overlay says the
    # repository's head size (3), else timm takes the variant's 1000 and drops the stored head.
    overlay = dict(hf_hub_id=REPO, num_classes=V2_TINY["num_classes"])
    loaded = timm.create_model("spikformer_v2_8_384", pretrained=True, pretrained_cfg_overlay=overlay, **V2_TINY)
    assert same(loaded, model)
    five = timm.create_model("spikformer_v2_8_384", pretrained=True, pretrained_cfg_overlay=overlay,
                             **{**V2_TINY, "num_classes": 5})
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    assert five.head.out_features == 5
    assert torch.equal(five.eval().forward_features(x), model.eval().forward_features(x))


def test_from_pretrained_reads_the_same_cached_repository(hub_cache):
    model = trained()
    publish(model, hub_cache)
    assert same(spikformer.from_pretrained(f"hf-hub:{REPO}"), model)


def test_a_repository_not_in_the_cache_is_not_silently_replaced_by_fresh_weights(hub_cache):
    publish(trained(), hub_cache)
    with pytest.raises(LocalEntryNotFoundError):
        timm.create_model("hf-hub:someone/not-downloaded", pretrained=True)
    # A repository without weights: the safetensors miss is tolerated, the .bin miss is not.
    empty = hub_cache / "models--someone--config-only" / "snapshots" / COMMIT
    shutil.copytree(hub_cache / f"models--{REPO.replace('/', '--')}", empty.parents[1])
    (empty / "model.safetensors").unlink()
    with pytest.raises(LocalEntryNotFoundError):
        timm.create_model("hf-hub:someone/config-only", pretrained=True)
