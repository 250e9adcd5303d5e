"""The embedded digits dataset and the resumable loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spikformer.config import load_config
from spikformer.data import ResumableSampler, build_dataset, build_loader, dataset_names
from spikformer.data.digits import DigitsDataset, digits_split, shift_image
from spikformer.errors import ConfigError
from spikformer.models import resolve_config


def digits_config(*overrides: str):
    overrides = ["data.name=digits", "model.in_chans=1", "model.num_classes=10", *overrides]
    return resolve_config(load_config(None, overrides))


def test_digits_split_is_fixed_1437_train_360_test():
    x_train, y_train = digits_split("train")
    x_test, y_test = digits_split("val")
    assert x_train.shape == (1437, 8, 8) and x_test.shape == (360, 8, 8)
    assert np.array_equal(digits_split("train")[1], y_train)  # the same split on every call
    assert 0.0 <= x_train.min() and x_train.max() <= 1.0
    # Stratified: each class's test share is 20% of its images, to within one.
    whole = np.bincount(np.concatenate([y_train, y_test]))
    assert np.all(np.abs(np.bincount(y_test) - 0.2 * whole) <= 1)
    # Disjoint: no test image is a training image.
    train_rows = {row.tobytes() for row in x_train.reshape(len(x_train), -1)}
    assert not any(row.tobytes() in train_rows for row in x_test.reshape(len(x_test), -1))


def test_digits_dataset_is_registered_and_sized_for_the_model():
    assert "digits" in dataset_names()
    config = digits_config("model.img_size=16", "model.in_chans=3")
    train, val = build_dataset(config, "train"), build_dataset(config, "val")
    assert (len(train), len(val), train.num_classes) == (1437, 360, 10)
    image, label = val[0]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32 and isinstance(label, int)
    assert torch.equal(image[0], image[2])  # a grey digit, repeated over the model's channels
    # Normalised: roughly zero mean and unit spread over the training images.
    assert abs(float(train.images.mean())) < 0.2 and 0.7 < float(train.images.std()) < 1.3


def test_only_training_images_are_shifted():
    config = digits_config("model.img_size=16", "data.shift=2")
    train, val = build_dataset(config, "train"), build_dataset(config, "val")
    assert train.shift == 2 and val.shift == 0
    assert torch.equal(val[5][0], val[5][0])
    torch.manual_seed(0)
    assert any(not torch.equal(train[3][0], train.images[3]) for _ in range(10))


def test_shift_image_translates_and_fills_the_border():
    image = torch.arange(16.0).view(1, 4, 4)
    moved = shift_image(image, 1, -1, fill=-1.0)
    assert moved[0, 1:, :3].equal(image[0, :3, 1:])
    assert (moved[0, 0] == -1).all() and (moved[0, :, 3] == -1).all()
    assert shift_image(image, 0, 0, 0.0) is image


@pytest.mark.parametrize("fraction", [0.1, 0.25])
def test_train_fraction_is_taken_per_class(fraction):
    full = DigitsDataset("train", img_size=8)
    part = DigitsDataset("train", img_size=8, train_fraction=fraction)
    full_counts = torch.bincount(full.labels, minlength=10)
    part_counts = torch.bincount(part.labels, minlength=10)
    assert torch.all((part_counts - full_counts * fraction).abs() <= 0.5)  # rounded, per class
    assert len(part) == int(part_counts.sum())
    # A fixed subset: the same images each time, all of them training images.
    again = DigitsDataset("train", img_size=8, train_fraction=fraction)
    assert torch.equal(part.images, again.images)
    full_rows = {row.numpy().tobytes() for row in full.images.flatten(1)}
    assert all(row.numpy().tobytes() in full_rows for row in part.images.flatten(1))


def test_train_fraction_applies_to_training_split_only():
    config = digits_config("model.img_size=8", "data.train_fraction=0.1")
    assert len(build_dataset(config, "train")) == 142 and len(build_dataset(config, "val")) == 360  # ~10% per class


def test_unknown_dataset_and_split_are_config_errors():
    with pytest.raises(ConfigError, match="did you mean 'digits'"):
        build_dataset(digits_config("data.name=digit"), "train")
    with pytest.raises(ConfigError, match="unknown split 'test'"):
        build_dataset(digits_config(), "test")


# --- the loader ------------------------------------------------------------------------------------


def test_sampler_order_is_a_function_of_seed_and_epoch():
    def order(seed, epoch):
        sampler = ResumableSampler(100, 10, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(0, 1) == order(0, 1)
    assert order(0, 1) != order(0, 2) and order(0, 1) != order(1, 1)
    assert sorted(order(3, 4)) == list(range(100))


def test_sampler_resumes_mid_epoch_with_the_remaining_indices():
    sampler = ResumableSampler(100, 8, shuffle=True, seed=1)
    sampler.set_epoch(2)
    whole = list(sampler)
    sampler.set_epoch(2, start_batch=3)
    assert list(sampler) == whole[24:] and len(sampler) == 76


def test_sampler_shards_ranks_disjointly_and_completely():
    shards = []
    for rank in range(3):
        sampler = ResumableSampler(10, 2, shuffle=True, seed=0, rank=rank, world_size=3)
        sampler.set_epoch(1)
        shards.append(list(sampler))
    assert all(len(s) == 4 for s in shards)  # padded to equal length, as DistributedSampler does
    assert set().union(*shards) == set(range(10))


def test_training_loader_drops_the_last_partial_batch_and_eval_keeps_it():
    dataset = torch.utils.data.TensorDataset(torch.arange(25.0), torch.zeros(25, dtype=torch.long))
    train = build_loader(dataset, 10, train=True)
    val = build_loader(dataset, 10, train=False)
    assert [len(x) for x, _ in train] == [10, 10]
    assert [len(x) for x, _ in val] == [10, 10, 5]
    assert torch.cat([x for x, _ in val]).tolist() == list(range(25))
