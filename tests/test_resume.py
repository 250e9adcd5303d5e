"""Exact resume: a ``spikformer train`` process killed with SIGKILL mid-epoch and resumed with
``--resume auto`` ends with the same weights, bit for bit, as a run that was never interrupted.

The run is the CIFAR-10 recipe shrunk to a tiny model on a stand-in dataset in the official format, so
every source of randomness of a real run is exercised: RandAugment (Python's ``random``), random erasing and
stochastic depth (torch), mixup (NumPy), plus EMA, gradient accumulation, the per-epoch warm-up/cosine
schedule with a cool-down epoch and mixup switching off part-way.
"""

from __future__ import annotations

import csv
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from static_data import write_cifar10

from spikformer.checkpoint import read_checkpoint
from spikformer.cli import main
from spikformer.config import load_config
from spikformer.train import Trainer

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "cifar10_4_384.yaml"
EPOCHS = 4  # 3 + 1 cool-down; 5 optimizer steps of 2 x 4 images each


def overrides(data_root: Path, out_dir: Path) -> list[str]:
    return [
        "model.embed_dim=16", "model.depth=1", "model.num_heads=2", "model.drop_path_rate=0.1",
        f"data.root={data_root}", "data.batch_size=4", "data.num_workers=0", "data.mixup_off_epoch=2",
        "optim.warmup_epochs=1", "optim.cooldown_epochs=1", "train.epochs=3", "train.accum_steps=2",
        "train.save_every_steps=1", "train.ema_decay=0.9", "train.deterministic=true", 'train.amp="off"',
        "train.threads=1", "train.progress=false", "train.tensorboard=false", f"train.out_dir={out_dir}",
    ]


def train_argv(data_root: Path, out_dir: Path, *extra: str) -> list[str]:
    return ["train", "--config", str(RECIPE), *extra, *overrides(data_root, out_dir)]


def run_cli(argv: list[str]) -> None:
    """``spikformer <argv>`` in a child process; its exit code becomes the process's."""
    from spikformer.cli import main

    sys.exit(main(argv))


def start_cli(argv: list[str], target=run_cli, *args) -> multiprocessing.Process:
    """``spikformer train`` in its own process (``target(argv, *args)``, by default ``run_cli``). Forked where
    the platform allows, so the child inherits the imported modules instead of spending seconds importing them
    again; a fresh interpreter elsewhere."""
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    process = multiprocessing.get_context(method).Process(target=target, args=(argv, *args))
    process.start()
    return process


def position(path: Path) -> dict | None:
    try:
        return read_checkpoint(path)[1]["position"]
    except Exception:  # not written yet
        return None


def metrics_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def uninterrupted(tmp_path):
    data = write_cifar10(tmp_path / "cifar", per_batch=8, test=6).parent
    out = tmp_path / "uninterrupted"
    Trainer(load_config(RECIPE, overrides(data, out))).fit()
    yield data, out
    torch.use_deterministic_algorithms(False)  # train.deterministic sets a process-wide flag


def test_sigkill_mid_epoch_then_resume_auto_equals_an_uninterrupted_run(tmp_path, uninterrupted, capsys):
    data, reference = uninterrupted
    out = tmp_path / "killed"
    killed_at = kill_mid_epoch(start_cli(train_argv(data, out)), out, batches_per_epoch=10)

    capsys.readouterr()
    assert main(train_argv(data, out, "--resume", "auto")) == 0
    assert (f"resumed from {out / 'last.safetensors'}: in epoch {killed_at['epoch'] + 1} of {EPOCHS}, after batch "
            f"{killed_at['batch']} of 10") in capsys.readouterr().out
    assert_same_run(out, reference, EPOCHS, ("lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5"))


def kill_mid_epoch(process: multiprocessing.Process, out: Path, batches_per_epoch: int) -> dict:
    """SIGKILL ``process`` as soon as its ``last.safetensors`` lies mid-epoch after a finished epoch; check that
    every finished epoch was logged; return the checkpoint's position."""
    try:
        seen = None
        while process.is_alive():
            seen = position(out / "last.safetensors")
            if seen and seen["epoch"] >= 1 and seen["batch"] > 0:
                os.kill(process.pid, signal.SIGKILL)
                break
            time.sleep(0.005)
        process.join(timeout=60)
    finally:
        if process.is_alive():
            process.kill()
    assert process.exitcode == -signal.SIGKILL, f"the run ended before it could be killed: {seen}"
    killed_at = position(out / "last.safetensors")
    assert killed_at["epoch"] >= 1 and 0 < killed_at["batch"] < batches_per_epoch
    done = [int(row["epoch"]) for row in metrics_rows(out / "metrics.csv")]
    assert done[: killed_at["epoch"]] == list(range(1, killed_at["epoch"] + 1))  # every finished epoch was logged
    return killed_at


def assert_same_run(out: Path, reference: Path, epochs: int, columns: tuple[str, ...]) -> None:
    """``out`` ended where ``reference`` did, bit for bit (weights, EMA, optimizer, RNG), and logged each epoch
    once, with the same numbers."""
    final, meta = read_checkpoint(out / "last.safetensors")
    expected, expected_meta = read_checkpoint(reference / "last.safetensors")
    assert meta["position"]["epoch"] == epochs and meta["position"]["step"] == expected_meta["position"]["step"]
    assert sorted(final) == sorted(expected)
    different = [key for key in expected if not torch.equal(final[key], expected[key])]
    assert not different, f"differs from the uninterrupted run: {different[:5]}"
    rows, expected_rows = metrics_rows(out / "metrics.csv"), metrics_rows(reference / "metrics.csv")
    assert [row["epoch"] for row in rows] == [str(e) for e in range(1, epochs + 1)]  # each epoch logged once
    for row, expected_row in zip(rows, expected_rows):
        for column in columns:
            assert row[column] == expected_row[column], (row["epoch"], column)


# Masked pre-training of the shipped config, shrunk: 8 micro-batches of 8 images, 4 optimizer steps per epoch.
# Random shifts (torch), stochastic depth (torch) and the per-sample masks all have to come back exactly.
PRETRAIN = RECIPE.parent / "digits_v2_pretrain.yaml"


def pretrain_argv(out_dir: Path, *extra: str) -> list[str]:
    """``spikformer pretrain`` of the shrunk config; ``extra`` (options, overrides) goes last and wins."""
    return ["pretrain", "--config", str(PRETRAIN), "model.embed_dim=16", "model.num_heads=2",
            "model.depth=1", "model.img_size=16", "model.drop_path_rate=0.1", "ssl.decoder_dim=16",
            "ssl.decoder_heads=2", "ssl.decoder_depth=1", "ssl.num_visualize=0", "data.train_fraction=0.05",
            "data.batch_size=8", "data.eval_batch_size=180", "train.accum_steps=2", "train.epochs=3",
            "train.save_every_steps=1", "train.deterministic=true", "train.threads=1", "train.progress=false",
            f"train.out_dir={out_dir}", *extra]


def test_pretraining_killed_mid_epoch_then_resumed_equals_an_uninterrupted_run(tmp_path, capsys):
    reference = tmp_path / "uninterrupted"
    try:
        assert main(pretrain_argv(reference)) == 0
        out = tmp_path / "killed"
        killed_at = kill_mid_epoch(start_cli(pretrain_argv(out)), out, batches_per_epoch=8)
        capsys.readouterr()
        assert main(pretrain_argv(out, "--resume", "auto")) == 0
    finally:
        torch.use_deterministic_algorithms(False)
    assert f"in epoch {killed_at['epoch'] + 1} of 3, after batch {killed_at['batch']} of 8" in capsys.readouterr().out
    assert_same_run(out, reference, 3, ("lr", "train_loss", "val_loss"))



class RandomlyAugmented(torch.utils.data.Dataset):
    """Sample ``i`` is ``i`` plus a draw from each of torch's, NumPy's and Python's RNGs."""

    def __len__(self) -> int:
        return 48

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        import random

        import numpy as np

        return torch.tensor([index + torch.rand(()).item(), np.random.rand(), random.random()]), index


def test_with_workers_a_sample_is_augmented_the_same_however_the_epoch_is_split_or_resumed():
    from spikformer.data import build_loader

    def epoch(num_workers: int, start_batch: int = 0, number: int = 3) -> list[torch.Tensor]:
        loader = build_loader(RandomlyAugmented(), batch_size=8, train=True, seed=5, num_workers=num_workers)
        loader.sampler.set_epoch(number, start_batch)
        return [samples for samples, _ in loader]

    full = epoch(num_workers=2)
    assert all(torch.equal(a, b) for a, b in zip(full, epoch(num_workers=1)))
    resumed = epoch(num_workers=2, start_batch=4)
    assert len(resumed) == len(full) - 4 and all(torch.equal(a, b) for a, b in zip(full[4:], resumed))
    assert not torch.equal(epoch(num_workers=1, number=4)[0], full[0])  # another epoch, other draws


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs (the CLI does not catch it)."""


@pytest.mark.parametrize("kill", ["before the checkpoint", "after the checkpoint"])
def test_a_kill_at_the_end_of_a_pretraining_epoch_loses_no_metrics_row(tmp_path, monkeypatch, kill):
    from spikformer.train.loop import RunLoop

    save_last = RunLoop.save_last

    def killed_at_the_end_of_epoch_2(self, metrics):
        if metrics.get("epoch") == 1 and kill == "before the checkpoint":
            raise Killed
        save_last(self, metrics)
        if metrics.get("epoch") == 1:
            raise Killed

    out = tmp_path / "run"
    monkeypatch.setattr(RunLoop, "save_last", killed_at_the_end_of_epoch_2)
    with pytest.raises(Killed):
        main(pretrain_argv(out, "train.deterministic=false"))
    monkeypatch.undo()
    assert main(pretrain_argv(out, "train.deterministic=false", "--resume", "auto")) == 0
    assert [row["epoch"] for row in metrics_rows(out / "metrics.csv")] == ["1", "2", "3"]
