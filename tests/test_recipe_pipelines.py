"""Each recipe's training data pipeline, as ``spikformer train`` runs it but without a model: files in the real
on-disk layout -> dataset and its augmentation -> the trainer's loader -> batch mixing and erasing. CIFAR runs a
whole epoch of 50,000 images; ImageNet and the event datasets run enough samples that a failure of 1 in 1,000
would show (the augmentation alone draws as many event samples in test_recipe_mechanisms.py)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from event_writers import write_cifar10dvs, write_dvsgesture
from static_data import write_cifar10, write_image_tree

import spikformer.data.augment_ops as augment_ops
from spikformer.config import load_config as read_config
from spikformer.data import build_dataset, build_loader
from spikformer.data.transforms import build_batch_erasing, build_batch_mixing, chain_batch_transforms
from spikformer.models import resolve_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def load_config(path, overrides=()):
    """The config as a run sees it: read, then resolved (datasets take the model's input from it)."""
    return resolve_config(read_config(path, list(overrides)))


@pytest.fixture(autouse=True)
def _seed_python_and_numpy():
    random.seed(0)  # timm's augmentations and mixing draw from random and numpy; conftest seeds torch
    np.random.seed(0)


def run_epochs(config, epochs: int = 1) -> int:
    """Every training batch of ``epochs`` epochs through the trainer's loader and batch transform; the number of
    samples seen. Each batch must come out with the recipe's shape and finite values."""
    dataset = build_dataset(config, "train")
    loader = build_loader(dataset, config.data.batch_size, train=True, seed=config.train.seed, num_workers=0)
    # as the trainer composes it: mixing, then erasing of the mixed batch
    batch_transform = chain_batch_transforms(build_batch_mixing(config.data, dataset.num_classes, 0.1),
                                             build_batch_erasing(config.data))
    seen = 0
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        if hasattr(batch_transform, "set_epoch"):
            batch_transform.set_epoch(epoch)
        for inputs, labels in loader:
            inputs, targets = batch_transform(inputs, labels)
            assert targets.shape == (len(inputs), dataset.num_classes) and torch.isfinite(inputs).all()
            seen += len(inputs)
    return seen


def test_cifar_recipe_runs_a_whole_epoch_of_50000_images(tmp_path):
    write_cifar10(tmp_path, per_batch=10_000, test=10)  # the official five training pickles, 10,000 images each
    config = load_config(CONFIGS / "cifar10_4_384.yaml", [f"data.root={tmp_path}", "data.num_workers=0"])
    assert run_epochs(config) == 50_000 // 128 * 128  # the last partial batch is dropped, as in training


def test_imagenet_recipe_runs_3000_images_and_meets_zero_bit_posterize(tmp_path, monkeypatch):
    zero_bits, posterize = [], augment_ops.posterize

    def counting_posterize(img, bits_to_keep, **kwargs):
        zero_bits.append(bits_to_keep == 0)
        return posterize(img, bits_to_keep, **kwargs)

    monkeypatch.setattr(augment_ops, "posterize", counting_posterize)  # what the recipe's ops are given
    wnids = tuple(f"n{1440764 + i:08d}" for i in range(10))
    # JPEGs of 20-60 pixels a side (aspects 1:3 to 3:1, some grey or CMYK), resized by the recipe's crop to 224
    write_image_tree(tmp_path, classes=wnids, train_per_class=300, val_per_class=1)
    config = load_config(CONFIGS / "imagenet_8_384.yaml", [f"data.root={tmp_path}", "data.num_workers=0"])
    assert run_epochs(config) == 3_000
    assert sum(zero_bits) >= 1  # the op that crashed on Pillow >= 10 ran, and gave Pillow 9's black image


def test_cifar10dvs_recipe_runs_its_pipeline_on_aedat4_files(tmp_path):
    write_cifar10dvs(tmp_path, per_class=11, events_per_file=3000)  # 10 train + 1 val per class
    config = load_config(CONFIGS / "cifar10dvs_2_256.yaml", [f"data.root={tmp_path}", "data.num_workers=0"])
    assert run_epochs(config, epochs=2) == 2 * (100 // 16 * 16)  # integrated once, then read from the cache


def test_dvs128gesture_recipe_runs_its_pipeline_on_the_release_files(tmp_path):
    users = {f"ibmGestureTrain/user{u:02d}_led": list(range(11)) for u in (1, 2, 3)}
    write_dvsgesture(tmp_path, {**users, "ibmGestureTest/user24_led": [0, 1]}, events_per_file=3000)
    config = load_config(CONFIGS / "dvs128gesture_2_256.yaml", [f"data.root={tmp_path}", "data.num_workers=0"])
    assert run_epochs(config, epochs=2) == 2 * (33 // 16 * 16)


@pytest.mark.slow  # test_event_augmentation_runs_3000_samples_of_the_recipes_frame_size draws as many samples
def test_cifar10dvs_recipe_runs_3000_samples_from_files(tmp_path):
    write_cifar10dvs(tmp_path, per_class=30, events_per_file=3000)  # 27 train per class
    config = load_config(CONFIGS / "cifar10dvs_2_256.yaml", [f"data.root={tmp_path}", "data.num_workers=0"])
    assert run_epochs(config, epochs=12) == 12 * (270 // 16 * 16) >= 3_000
