"""Weights that travel: timm's save_for_hf -> create_model("local-dir:...") bit for bit, and
``spikformer.from_pretrained`` from a file, a folder or a Hub id (offline: the download is pointed at a folder)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
import timm
import torch
from test_official_checkpoints import to_official, trained_looking
from timm.models import save_for_hf

import spikformer
import spikformer.models.hub as hub
import spikformer.models.registry as variant_table
from spikformer.checkpoint import save_model, write_checkpoint
from spikformer.config import config_to_dict, load_config
from spikformer.errors import CheckpointError
from spikformer.models import resolve_config

V2_TINY = dict(embed_dim=32, depth=1, num_heads=4, img_size=32, T=2, num_classes=3)


def trained(name: str = "spikformer_v2_8_384", **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return trained_looking(timm.create_model(name, **{**V2_TINY, **overrides}))


def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    states_equal = a.state_dict().keys() == b.state_dict().keys() and all(
        torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    return states_equal and torch.equal(a.eval()(x), b.eval()(x))


def own_checkpoint(path, model, name="spikformer_v2_8_384", plain=False):
    """An own checkpoint with the run's resolved config; ``plain``: keys without the ``model.`` prefix (what
    best.safetensors becomes as a plain state dict with the config in its metadata)."""
    overrides = [f"model.name={name}", *(f"model.{k}={v}" for k, v in V2_TINY.items())]
    config = config_to_dict(resolve_config(load_config(None, overrides)))
    if plain:
        write_checkpoint(path, model.state_dict(), {"config": config})
    else:
        save_model(path, model, config)


@pytest.mark.parametrize("safe", [True, False])
def test_save_for_hf_then_local_dir_round_trips_bit_for_bit(tmp_path, safe, monkeypatch):
    model = trained()
    save_for_hf(model, tmp_path / "hf", safe_serialization=safe)
    # The folder's config.json holds the complete description: a later edit of the table changes nothing.
    table = variant_table.VARIANTS
    monkeypatch.setitem(table, "spikformer_v2_8_384", dataclasses.replace(table["spikformer_v2_8_384"],
                                                                        num_heads=2, T=4))
    loaded = timm.create_model(f"local-dir:{tmp_path / 'hf'}", pretrained=True)
    assert loaded.blocks[0].attn.num_heads == 4 and loaded.T == 2
    assert same(loaded, model)


def test_from_pretrained_reads_a_save_for_hf_folder(tmp_path):
    model = trained()
    save_for_hf(model, tmp_path / "hf")
    assert same(spikformer.from_pretrained(tmp_path / "hf"), model)


@pytest.mark.parametrize("plain", [False, True], ids=["model_prefixed", "plain_state_dict"])
def test_from_pretrained_rebuilds_an_own_checkpoint_from_its_config(tmp_path, plain):
    model = trained()
    own_checkpoint(tmp_path / "best.safetensors", model, plain=plain)
    assert same(spikformer.from_pretrained(tmp_path / "best.safetensors"), model)
    assert same(spikformer.from_pretrained(tmp_path), model)  # a run folder: its best.safetensors


def test_from_pretrained_replaces_the_head_on_request(tmp_path):
    model = trained()
    own_checkpoint(tmp_path / "best.safetensors", model)
    five = spikformer.from_pretrained(tmp_path / "best.safetensors", num_classes=5)
    assert five.head.out_features == 5
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(five.eval().forward_features(x), model.forward_features(x))


def test_a_plain_or_official_file_needs_the_variants_name(tmp_path):
    torch.manual_seed(0)
    dvs = trained_looking(timm.create_model("spikformer_dvs_2_256", embed_dim=32, depth=2, num_heads=4,
                                            img_size=32, T=2))
    torch.save(to_official(dvs, "dvs"), tmp_path / "official.pth")
    with pytest.raises(CheckpointError, match="carries no config.*name="):
        spikformer.from_pretrained(tmp_path / "official.pth")
    loaded = spikformer.from_pretrained(tmp_path / "official.pth", name="spikformer_dvs_2_256", embed_dim=32,
                                        depth=2, num_heads=4, img_size=32, T=2)
    x = torch.rand(2, 2, 2, 32, 32)
    assert torch.equal(loaded.eval()(x), dvs(x))


@pytest.mark.parametrize("source", ["someone/spikformer-tiny", "hf-hub:someone/spikformer-tiny"])
def test_from_pretrained_takes_a_hub_id_through_huggingface_hub(tmp_path, monkeypatch, source):
    model = trained()
    save_for_hf(model, tmp_path / "snapshot")
    asked = []

    def snapshot_download(repo_id, allow_patterns):  # offline: the "download" is a local folder
        asked.append(repo_id)
        return str(tmp_path / "snapshot")

    monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot_download)
    assert same(hub.from_pretrained(source), model)
    assert asked == ["someone/spikformer-tiny"]


def test_a_cached_hub_repository_loads_offline_through_the_real_snapshot_download(tmp_path):
    """No stand-in: huggingface_hub's own snapshot_download, as from_pretrained calls it, reads a repository
    from the Hub cache with HF_HUB_OFFLINE=1 (a subprocess: huggingface_hub reads its environment on import)."""
    model = trained()
    repo = tmp_path / "hub" / "models--someone--spikformer-tiny"
    commit = "0123456789abcdef0123456789abcdef01234567"
    save_for_hf(model, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    script = ("import sys, torch, spikformer; "
              "torch.save(spikformer.from_pretrained('hf-hub:someone/spikformer-tiny').state_dict(), sys.argv[1])")
    cache = str(tmp_path / "hub")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": cache, "HUGGINGFACE_HUB_CACHE": cache}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "loaded.pth")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = torch.load(tmp_path / "loaded.pth", weights_only=True)
    assert loaded.keys() == model.state_dict().keys()
    assert all(torch.equal(loaded[key], value) for key, value in model.state_dict().items())


def test_a_missing_source_is_one_clear_error(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="no such file or folder, and not a Hub id"):
        spikformer.from_pretrained(tmp_path / "nope" / "deeper" / "weights.safetensors")
    with pytest.raises(CheckpointError, match="no such file or folder"):
        spikformer.from_pretrained("runs/best.safetensors")  # a missing relative file, not a Hub id

    def offline(repo_id, allow_patterns):
        raise OSError("we are offline")

    monkeypatch.setattr("huggingface_hub.snapshot_download", offline)
    with pytest.raises(CheckpointError, match="someone/missing: not a local file or folder.*we are offline"):
        spikformer.from_pretrained("someone/missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither a timm config.json"):
        spikformer.from_pretrained(tmp_path / "empty")
