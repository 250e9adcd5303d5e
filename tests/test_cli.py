"""The ``spikformer`` command: ``models``, ``train`` and ``eval`` end to end on a tiny digits run."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spikformer.checkpoint import load_model_from_checkpoint, read_checkpoint
from spikformer.cli import main
from spikformer.config import config_to_dict, load_config
from spikformer.models import create_model, list_models

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "configs" / "digits.yaml")
# The demo's config shrunk to seconds: width 16, one block, 2x2 tokens, 10% of the training images.
# (User errors on the command line, exit 2 with one line: test_config_fuzz.py and test_robustness_*.py.)
TINY = ["model.embed_dim=16", "model.num_heads=2", "model.depth=1", "model.T=2", "model.img_size=8",
        "model.patch_size=4", "data.train_fraction=0.1", "data.batch_size=32", "train.epochs=1",
        "train.progress=false", "train.tensorboard=false"]
METRIC_COLUMNS = ["epoch", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "epoch_seconds",
                  "train_images_per_s"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """One tiny training run through the CLI, shared by the tests that inspect its folder."""
    out = tmp_path_factory.mktemp("run") / "digits"
    assert main(["train", "--config", DIGITS, *TINY, "train.epochs=2", f"train.out_dir={out}"]) == 0
    return out


def test_models_lists_every_variant_with_its_parameter_count(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines[1:]}
    assert sorted(rows) == list_models()
    for name, line in rows.items():
        with torch.device("meta"):
            count = sum(p.numel() for p in create_model(name).parameters())
        assert f"{count:,}" in line.split()
    assert "29,689,384" in rows["spikformer_8_512"] and "73.38" in rows["spikformer_8_512"]


def test_models_filters_by_pattern(capsys):
    assert main(["models", "cifar"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert names == list_models("cifar") and len(names) >= 3


def test_console_entry_point_runs_as_a_module():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "spikformer", "models", "dvs"], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "spikformer_dvs_2_256" in result.stdout and "2,566,666" in result.stdout


def test_train_writes_config_metrics_and_both_checkpoints(tiny_run):
    assert sorted(p.name for p in tiny_run.iterdir() if not p.name.startswith(".")) == [
        "best.safetensors", "config.yaml", "last.safetensors", "metrics.csv", "train.log"]
    config = load_config(tiny_run / "config.yaml")  # the resolved config, readable by load_config
    assert (config.model.embed_dim, config.model.T, config.train.epochs) == (16, 2, 2)
    with (tiny_run / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == METRIC_COLUMNS
    assert [int(r["epoch"]) for r in rows] == [1, 2]  # epochs are numbered from 1, as on the console
    for row in rows:
        assert 0 <= float(row["val_top1"]) <= float(row["val_top5"]) <= 100
        assert float(row["train_loss"]) > 0 and float(row["lr"]) > 0 and float(row["train_images_per_s"]) > 0


def test_checkpoints_carry_their_config_and_kind(tiny_run):
    _, best = read_checkpoint(tiny_run / "best.safetensors")
    _, last = read_checkpoint(tiny_run / "last.safetensors")
    assert best["kind"] == "weights" and last["kind"] == "training"
    assert best["config"] == config_to_dict(load_config(tiny_run / "config.yaml"))
    assert last["position"]["epoch"] == 2 and last["position"]["batch"] == 0


def test_eval_needs_only_the_checkpoint_and_writes_json(tiny_run, tmp_path, capsys):
    moved = tmp_path / "elsewhere" / "model.safetensors"  # no config.yaml beside it
    moved.parent.mkdir()
    moved.write_bytes((tiny_run / "best.safetensors").read_bytes())
    out = tmp_path / "result" / "eval.json"
    assert main(["eval", "--checkpoint", str(moved), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert {"top1", "top5", "loss"} <= result.keys() and result["count"] == 360
    assert re.search(rf"top1 {result['top1']:.2f}%", printed)
    # The best checkpoint is the epoch with the best validation accuracy: eval reproduces it exactly.
    with (tiny_run / "metrics.csv").open() as handle:
        best_val = max(float(r["val_top1"]) for r in csv.DictReader(handle))
    assert result["top1"] == pytest.approx(best_val, abs=1e-9)


def test_eval_overrides_change_the_stored_config(tiny_run, tmp_path):
    out = tmp_path / "t4.json"
    assert main(["eval", "--checkpoint", str(tiny_run / "best.safetensors"), "model.T=4", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["T"] == 4


def test_the_checkpoint_alone_rebuilds_the_model(tiny_run):
    model, config = load_model_from_checkpoint(tiny_run / "best.safetensors")
    assert (model.embed_dim, len(model.blocks), model.T, model.in_chans) == (16, 1, 2, 1)
    twin = create_model(config.model.name, embed_dim=16, num_heads=2, depth=1, T=2, img_size=8, patch_size=4,
                        in_chans=1, num_classes=10)
    twin.load_state_dict(model.state_dict())
    x = torch.randn(3, 1, 8, 8)
    model.eval(), twin.eval()
    torch.testing.assert_close(model(x), twin(x), rtol=0, atol=0)
