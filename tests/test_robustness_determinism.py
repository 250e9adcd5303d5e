"""``train.seed`` plus ``train.deterministic=true`` gives bit-identical training on the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from spikformer.checkpoint import read_checkpoint
from spikformer.config import load_config
from spikformer.train import Trainer


@pytest.fixture(autouse=True)
def _restore_deterministic_flag():
    # train.deterministic switches torch's process-wide flag on; keep it from leaking into other tests.
    previous = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(previous)


def train_tiny(out_dir: Path, seed: int) -> dict[str, torch.Tensor]:
    """Two epochs with augmentation (random shifts), shuffling, dropout-free AdamW and a cosine schedule."""
    config = load_config(None, [
        "model.embed_dim=16", "model.depth=1", "model.num_heads=2", "model.T=2", "model.img_size=16",
        "model.in_chans=1", "model.num_classes=10", "model.drop_path_rate=0.1", "data.batch_size=16",
        "data.train_fraction=0.05", "data.eval_batch_size=180", "data.shift=2", "optim.lr=2e-3",
        "train.epochs=2", "train.amp=off", "train.progress=false", "train.deterministic=true",
        f"train.seed={seed}", f"train.out_dir={out_dir}",
    ])
    Trainer(config).fit()
    tensors, _ = read_checkpoint(out_dir / "last.safetensors")
    return tensors


def test_two_runs_with_the_same_seed_are_bit_identical(tmp_path):
    first = train_tiny(tmp_path / "a", seed=7)
    second = train_tiny(tmp_path / "b", seed=7)
    assert first.keys() == second.keys()
    different = [key for key in first if not torch.equal(first[key], second[key])]
    assert different == []  # weights, EMA, optimizer moments and the saved RNG states alike


def test_the_comparison_can_tell_runs_apart(tmp_path):
    # The control: another seed changes the initial weights, the order and the shifts, so every weight
    # differs; and the optimizer really stepped (non-zero moments), so equality above is not vacuous.
    first = train_tiny(tmp_path / "a", seed=7)
    other = train_tiny(tmp_path / "b", seed=8)
    assert not torch.equal(first["model.head.weight"], other["model.head.weight"])
    moments = [value for key, value in first.items() if key.endswith(".exp_avg")]
    assert moments and all(value.abs().sum() > 0 for value in moments)
