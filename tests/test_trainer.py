"""The trainer's run folder contract: an interrupted run resumes mid-epoch to exactly the uninterrupted result."""

from __future__ import annotations

import csv
import os
import signal
from pathlib import Path

import pytest
import torch

from spikformer.checkpoint import read_checkpoint
from spikformer.config import load_config
from spikformer.errors import ConfigError
from spikformer.train import Trainer, TrainingInterrupted

DIGITS = Path(__file__).resolve().parents[1] / "configs" / "digits.yaml"
TINY = ["model.embed_dim=16", "model.num_heads=2", "model.depth=1", "model.T=2", "model.img_size=8",
        "data.train_fraction=0.2", "data.batch_size=32", "train.epochs=2", "train.progress=false",
        "train.tensorboard=false", "optim.warmup_epochs=0"]


def tiny_config(out_dir: Path, *overrides: str):
    return load_config(DIGITS, [*TINY, f"train.out_dir={out_dir}", *overrides])


class InterruptAt:
    """A batch transform that sends SIGINT to this process before the ``n``-th batch (counting from 1)."""

    def __init__(self, n: int) -> None:
        self.n, self.seen = n, 0

    def __call__(self, images, labels):
        self.seen += 1
        if self.seen == self.n:
            os.kill(os.getpid(), signal.SIGINT)
        return images, labels


def model_tensors(path: Path) -> dict[str, torch.Tensor]:
    tensors, _ = read_checkpoint(path)
    return {k: v for k, v in tensors.items() if k.startswith(("model.", "optim."))}


def metric_rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:  # timings differ between runs; everything else must not
        row.pop("epoch_seconds"), row.pop("train_images_per_s")
    return rows


def test_interrupted_run_resumes_mid_epoch_to_the_same_result(tmp_path):
    # 284 training images / batch 32 = 8 batches per epoch; the signal lands in the middle of epoch 2.
    straight = tmp_path / "straight"
    Trainer(tiny_config(straight)).fit()

    broken = tmp_path / "broken"
    with pytest.raises(TrainingInterrupted, match="train.resume=auto"):
        Trainer(tiny_config(broken), batch_transform=InterruptAt(12)).fit()
    _, saved = read_checkpoint(broken / "last.safetensors")
    assert (saved["position"]["epoch"], saved["position"]["batch"]) == (1, 4)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored

    Trainer(tiny_config(broken, "train.resume=auto")).fit()
    expected, actual = model_tensors(straight / "last.safetensors"), model_tensors(broken / "last.safetensors")
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[k], actual[k]) for k in expected)
    assert metric_rows(broken) == metric_rows(straight)


def test_overwrite_starts_a_run_folder_afresh(tmp_path):
    run = tmp_path / "run"
    Trainer(tiny_config(run, "train.epochs=1")).fit()
    with pytest.raises(ConfigError, match="already holds a run"):
        Trainer(tiny_config(run, "train.epochs=1")).fit()
    Trainer(tiny_config(run, "train.epochs=1", "train.overwrite=true")).fit()
    assert len(metric_rows(run)) == 1
