"""Soak: many short epochs with evaluation and checkpointing leak neither memory nor file handles."""

from __future__ import annotations

import ctypes
import gc
import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from spikformer.config import load_config
from spikformer.train import Trainer

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")

WARM_UP = 5  # allocator pools, autograd caches and lazily imported modules settle in the first epochs
RSS_TOLERANCE = 4 * 2**20  # bytes the resident set may wander by after warm-up (measured: 0.3 MiB)


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def release_freed_memory() -> None:
    """Hand the heap's free pages back to the OS, so that a leak shows as RSS growth even when earlier tests in
    this process left freed memory behind for the allocator to hand out again (glibc's ``malloc_trim``)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def soak(out_dir: Path, epochs: int, criterion: nn.Module | None = None) -> tuple[list[int], list[int], int]:
    """Train ``epochs`` tiny epochs (4 steps, a checkpoint every 2 steps, EMA, evaluation every epoch).
    Returns the RSS and the open file handles after each epoch, and the handles left open after ``fit``."""
    config = load_config(None, [
        "model.embed_dim=16", "model.depth=1", "model.num_heads=2", "model.T=2", "model.img_size=16",
        "model.in_chans=1", "model.num_classes=10", "data.batch_size=16", "data.train_fraction=0.05",
        "optim.lr=1e-3", f"train.epochs={epochs}", "train.eval_every=1", "train.save_every_steps=2",
        "train.ema_decay=0.9", "train.amp=off", "train.progress=true", f"train.out_dir={out_dir}",
        # TensorBoard's writer thread opens and closes files of its own while it flushes: not our handles
        "train.tensorboard=false",
    ])
    fds_before = open_fds()
    release_freed_memory()
    trainer = Trainer(config, criterion=criterion)
    # Evaluate on 64 of the 360 validation images: a leak shows per evaluation, not per image.
    trainer.val_loader = DataLoader(trainer.val_set, batch_size=32, sampler=range(64))
    rss, fds = [], []
    write_metrics = trainer.write_metrics

    def measure_after_each_epoch(metrics, writer):
        write_metrics(metrics, writer)
        gc.collect()
        rss.append(rss_bytes())
        fds.append(open_fds())

    trainer.write_metrics = measure_after_each_epoch
    trainer.fit()
    del trainer
    gc.collect()
    return rss, fds, open_fds() - fds_before


def growth_after_warm_up(rss: list[int]) -> int:
    steady = rss[WARM_UP:]
    return max(steady) - steady[0]


def test_many_short_epochs_do_not_grow_memory_or_leak_file_handles(tmp_path):
    rss, fds, left_open = soak(tmp_path, epochs=30)
    assert len(rss) == 30
    growth = growth_after_warm_up(rss)
    assert growth < RSS_TOLERANCE, f"RSS grew by {growth / 2**20:.1f} MiB after warm-up: {[r >> 20 for r in rss]}"
    assert len(set(fds)) == 1, f"open file handles changed from epoch to epoch: {fds}"
    assert left_open == 0


class KeepsEveryLoss(nn.Module):
    """A classic leak: holding on to each loss (and a copy of the batch's activations, here 1 MiB of touched
    memory per step, so the leak's size does not depend on how lean the model's autograd graph is)."""

    def __init__(self) -> None:
        super().__init__()
        self.kept = []

    def forward(self, logits, labels):
        loss = nn.functional.cross_entropy(logits, labels)
        self.kept.append((loss, torch.ones(256 * 1024)))
        return loss


def test_the_soak_measurement_catches_a_leak(tmp_path):
    # The control for the test above: a leak of about 1 MiB per step is seen.
    rss, _, _ = soak(tmp_path, epochs=12, criterion=KeepsEveryLoss())
    assert growth_after_warm_up(rss) > RSS_TOLERANCE
