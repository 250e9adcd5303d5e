"""The whole training path learns: a small Spikformer trained on the real handwritten digits classifies them.

Config file -> overrides -> digits dataset -> Trainer (AdamW, warmup + cosine, label smoothing, shifts) ->
best.safetensors -> a model rebuilt from that file alone -> evaluation on the 360 held-out test images.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from spikformer.checkpoint import load_model_from_checkpoint
from spikformer.config import load_config
from spikformer.data import build_dataset, build_loader
from spikformer.train import Trainer, evaluate

DIGITS = Path(__file__).resolve().parents[1] / "configs" / "digits.yaml"
# The demo's CIFAR-family model (width 64, one block, 4 heads, T=4) on the digits at their own 8x8 resolution:
# patch 2 gives 4x4 tokens. Five epochs take well under a minute on one thread; over seeds 0-2 this setting
# reached 92.5%, 94.4% and 94.7% test accuracy, so the bar below leaves a wide margin.
LEARNING = ["model.img_size=8", "model.patch_size=2", "data.shift=1", "train.epochs=5", "optim.lr=6e-3",
            "optim.warmup_epochs=0.3", "data.batch_size=32", "train.progress=false", "train.tensorboard=false"]
ACCURACY_BAR = 80.0  # percent on the test split; chance is 10%


def test_small_spikformer_learns_the_digits(tmp_path):
    config = load_config(DIGITS, [*LEARNING, f"train.out_dir={tmp_path / 'run'}"])
    assert (config.model.embed_dim, config.model.depth, config.model.T) == (64, 1, 4)  # the demo's model
    result = Trainer(config).fit()

    model, saved = load_model_from_checkpoint(tmp_path / "run" / "best.safetensors")
    loader = build_loader(build_dataset(saved, "val"), 128, train=False)
    test = evaluate(model, loader, torch.device("cpu"))
    assert test["count"] == 360
    assert test["top1"] >= ACCURACY_BAR, f"test accuracy {test['top1']:.1f}% < {ACCURACY_BAR}%"
    assert test["top1"] == result["best_top1"]  # the checkpoint is the best epoch, rebuilt from the file alone

    with (tmp_path / "run" / "metrics.csv").open() as handle:
        losses = [float(row["train_loss"]) for row in csv.DictReader(handle)]
    assert len(losses) == 5 and losses[-1] < 0.6 * losses[0]  # the training loss fell steadily


def test_trainer_takes_a_ready_model_and_ready_datasets(tmp_path):
    # Any classifier module and any (image, label) datasets, with the config's optimizer, schedule and run folder.
    from torch import nn

    from spikformer.checkpoint import load_checkpoint
    from spikformer.data.digits import DigitsDataset

    train, val = DigitsDataset("train", img_size=8), DigitsDataset("val", img_size=8)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    config = load_config(None, ["train.epochs=3", "optim.lr=1e-2", "optim.warmup_epochs=0", "data.batch_size=32",
                                "train.progress=false", "train.tensorboard=false", f"train.out_dir={tmp_path}"])
    trainer = Trainer(config, model=model, train_dataset=train, val_dataset=val)
    assert trainer.model is model and trainer.train_set is train and trainer.val_set is val
    result = trainer.fit()
    assert result["best_top1"] >= ACCURACY_BAR
    fresh = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    load_checkpoint(fresh, tmp_path / "best.safetensors")  # the module's own keys, loaded back into the same module
    test = evaluate(fresh, build_loader(val, 128, train=False), torch.device("cpu"))
    assert test["top1"] == result["best_top1"]
