"""CIFAR10-DVS and DVS128 Gesture from files in their real on-disk formats, through the registered loaders."""

from __future__ import annotations

import csv
import importlib.util
import math
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from event_writers import write_cifar10dvs, write_dvsgesture

from spikformer.config import config_from_dict
from spikformer.data import build_dataset
from spikformer.data.event_frames import integrate_frames
from spikformer.errors import ConfigError, DatasetError
from spikformer.models import resolve_config

TINY_DVS = {"name": "spikformer_dvs_2_256", "embed_dim": 16, "depth": 1, "num_heads": 2, "img_size": 32, "T": 4}


def make_config(name: str, root, model=None, **data):
    return resolve_config(config_from_dict({
        "model": {**TINY_DVS, **(model or {})},
        "data": {"name": name, "root": None if root is None else str(root), "batch_size": 2, **data},
        "train": {"epochs": 1, "progress": False, "tensorboard": False, "amp": "off"},
    }), leave_num_classes_open=True)


def expected_frames(events, size=32, T=4, framing="count"):
    small = events.copy()
    small["x"], small["y"] = events["x"] * size // 128, events["y"] * size // 128
    return integrate_frames(small, (size, size, 2), T, framing)


# --- CIFAR10-DVS (.aedat4, read by tonic through the aedat package) ------------------------------------------

needs_aedat = pytest.mark.skipif(importlib.util.find_spec("aedat") is None,
                                 reason="tonic reads .aedat4 with the aedat package (the events extra)")


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar10dvs")
    return root, write_cifar10dvs(root, per_class=3)


@needs_aedat
def test_cifar10dvs_reads_the_release_layout_with_a_fixed_9_to_1_split_per_class(cifar_root, tmp_path):
    root, written = cifar_root
    config = make_config("cifar10dvs", root, cache_dir=str(tmp_path))
    train, val = build_dataset(config, "train"), build_dataset(config, "val")
    assert (len(train), len(val), train.num_classes) == (20, 10, 10)
    assert val.recordings.keys[:2] == ["airplane/cifar10_airplane_2", "automobile/cifar10_automobile_2"]
    frames, label = val[1]
    assert frames.shape == (4, 2, 32, 32) and frames.dtype == torch.float32 and label == 1
    events = written["CIFAR10DVS/automobile/cifar10_automobile_2.aedat4"]
    np.testing.assert_array_equal(frames.numpy(), expected_frames(events))
    assert frames.sum() == len(events)


@needs_aedat
def test_cifar10dvs_validation_takes_the_last_recordings_in_string_order(tmp_path):
    write_cifar10dvs(tmp_path, per_class=11, events_per_file=20, classes=["ship"])
    config = make_config("cifar10dvs", tmp_path / "CIFAR10DVS")  # root may also be the dataset folder itself
    # The original's folder dataset sorts names as strings (_0, _1, _10, _2 ... _9): "_9" is last, not "_10".
    assert build_dataset(config, "val").recordings.keys == ["ship/cifar10_ship_9"]


@needs_aedat
def test_cifar10dvs_frames_at_the_dvs_variants_full_128x128_input(cifar_root, tmp_path):
    root, written = cifar_root
    config = make_config("cifar10dvs", root, model={"img_size": 128, "T": 16}, cache_dir=str(tmp_path))
    frames, label = build_dataset(config, "val")[0]
    events = written["CIFAR10DVS/airplane/cifar10_airplane_2.aedat4"]
    assert frames.shape == (16, 2, 128, 128) and label == 0
    np.testing.assert_array_equal(frames.numpy(), integrate_frames(events, (128, 128, 2), 16))


@needs_aedat
def test_cifar10dvs_frames_are_cached_so_a_second_pass_never_parses_events(cifar_root, tmp_path, monkeypatch):
    import tonic.datasets.cifar10dvs

    root, _ = cifar_root
    config = make_config("cifar10dvs", root, cache_dir=str(tmp_path), event_framing="time")
    first = [build_dataset(config, "val")[i][0] for i in range(10)]
    cache = next(tmp_path.glob("cifar10dvs-*"))
    assert (cache / "params.json").exists() and len(list(cache.glob("*/*.npz"))) == 10

    def no_parsing(path):
        raise AssertionError(f"events of {path} were parsed again")

    monkeypatch.setattr(tonic.datasets.cifar10dvs, "read_aedat4", no_parsing)
    again = build_dataset(config, "val")
    for i in range(10):
        assert torch.equal(again[i][0], first[i])
    other_T = make_config("cifar10dvs", root, model={"T": 2}, cache_dir=str(tmp_path), event_framing="time")
    with pytest.raises(DatasetError, match="parsed again"):  # other framing parameters: another cache folder
        build_dataset(other_T, "val")[0]


@needs_aedat
def test_cifar10dvs_caches_under_the_data_root_by_default(tmp_path):
    write_cifar10dvs(tmp_path, per_class=2, events_per_file=30, classes=["cat"])
    build_dataset(make_config("cifar10dvs", tmp_path), "val")[0]
    assert list((tmp_path / "cache").glob("cifar10dvs-*/cat/cifar10_cat_1.npz"))


@needs_aedat
def test_a_corrupt_aedat4_file_is_an_error_naming_the_file(tmp_path):
    write_cifar10dvs(tmp_path, per_class=2, events_per_file=30, classes=["dog"])
    broken = tmp_path / "CIFAR10DVS/dog/cifar10_dog_1.aedat4"
    broken.write_bytes(broken.read_bytes()[:-100])  # truncated inside the last event packet
    dataset = build_dataset(make_config("cifar10dvs", tmp_path), "val")
    with pytest.raises(DatasetError, match=r"cifar10_dog_1\.aedat4.*corrupt or truncated"):
        dataset[0]
    broken.write_bytes(b"not an aedat file")
    with pytest.raises(DatasetError, match=r"cifar10_dog_1\.aedat4.*wrong magic number"):
        dataset[0]


def test_reading_aedat4_without_the_aedat_package_says_how_to_install_it(tmp_path, monkeypatch):
    write_cifar10dvs(tmp_path, per_class=2, events_per_file=10, classes=["frog"])  # our writer needs no aedat
    monkeypatch.setitem(sys.modules, "aedat", None)  # import aedat now raises ImportError
    dataset = build_dataset(make_config("cifar10dvs", tmp_path), "val")
    with pytest.raises(DatasetError, match=r"cifar10_frog_1\.aedat4 needs the aedat package: pip install"):
        dataset[0]


@pytest.mark.parametrize("root, error, message", [
    (None, ConfigError, "needs data.root"),
    ("missing", DatasetError, "is not a folder"),
    ("empty", DatasetError, "holds no CIFAR10DVS/ folder"),
])
def test_a_missing_dataset_is_a_clear_error_naming_the_expected_layout(tmp_path, root, error, message):
    (tmp_path / "empty").mkdir()
    path = None if root is None else tmp_path / root
    with pytest.raises(error, match=message) as caught:
        build_dataset(make_config("cifar10dvs", path), "train")
    assert "CIFAR10DVS/<class>/*.aedat4" in str(caught.value)


def test_a_folder_that_is_not_a_cifar10dvs_class_is_an_error(tmp_path):
    (tmp_path / "CIFAR10DVS/zebra").mkdir(parents=True)
    (tmp_path / "CIFAR10DVS/zebra/z_0.aedat4").write_bytes(b"")
    with pytest.raises(DatasetError, match="'zebra' holds .aedat4 files but is not a CIFAR10-DVS class"):
        build_dataset(make_config("cifar10dvs", tmp_path), "train")


@needs_aedat
def test_two_training_steps_on_cifar10dvs_files(tmp_path):
    write_cifar10dvs(tmp_path, per_class=3, events_per_file=200, classes=["bird", "cat"])
    config = make_config("cifar10dvs", tmp_path, model={"num_classes": 10})
    config.train.out_dir = str(tmp_path / "run")
    from spikformer.train import Trainer

    trainer = Trainer(config)
    assert len(trainer.train_loader) == 2
    result = trainer.fit()
    assert math.isfinite(result["train_loss"]) and trainer.position.step == 2


# --- DVS128 Gesture (.npy per gesture, read by tonic) --------------------------------------------------------

GESTURE_USERS = {
    "ibmGestureTrain/user01_fluorescent": [0, 1, 2, 10],
    "ibmGestureTrain/user02_led": [0, 3],
    "ibmGestureTest/user24_natural": [4, 5],
}


@pytest.fixture(scope="module")
def gesture_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("dvsgesture")
    return root, write_dvsgesture(root, GESTURE_USERS)


def test_dvsgesture_uses_the_official_train_and_test_folders(gesture_root, tmp_path):
    root, written = gesture_root
    config = make_config("dvs128gesture", root, cache_dir=str(tmp_path), event_framing="time")
    train, val = build_dataset(config, "train"), build_dataset(config, "val")
    assert (len(train), len(val), train.num_classes) == (6, 2, 11)
    first_user = "ibmGestureTrain/user01_fluorescent"
    assert train.recordings.keys[:4] == [f"{first_user}/{label}" for label in (0, 1, 2, 10)]  # natural order
    assert val.recordings.labels == [4, 5]
    frames, label = val[1]
    events = written["DVSGesture/ibmGestureTest/user24_natural/5.npy"].copy()
    events["t"] = events["t"] // 1000 * 1000  # the release stores milliseconds; tonic gives microseconds
    assert label == 5 and frames.shape == (4, 2, 32, 32) and frames.sum() == len(events)
    np.testing.assert_array_equal(frames.numpy(), expected_frames(events, framing="time"))


def test_dvsgesture_training_frames_are_never_flipped_by_default(gesture_root, tmp_path):
    root, _ = gesture_root
    augment = build_dataset(make_config("dvs128gesture", root, cache_dir=str(tmp_path)), "train").augment
    assert augment.flip == 0.0 and augment.roll == 1  # 5 pixels at 128x128, scaled to 32x32


def test_training_augmentation_applies_to_the_training_split_only(gesture_root, tmp_path):
    root, _ = gesture_root
    config = make_config("dvs128gesture", root, cache_dir=str(tmp_path), event_flip=1.0, event_roll=0)
    train, val = build_dataset(config, "train"), build_dataset(config, "val")
    assert val.augment is None
    plain = train.frames(0)
    assert torch.equal(train[0][0], torch.from_numpy(plain).float().flip(-1))


def test_a_corrupt_gesture_file_is_an_error_naming_the_file(tmp_path):
    write_dvsgesture(tmp_path, {"ibmGestureTest/user25_led": [0, 1]})
    (tmp_path / "DVSGesture/ibmGestureTest/user25_led/1.npy").write_bytes(b"\x93NUMPY garbage")
    dataset = build_dataset(make_config("dvs128gesture", tmp_path), "val")
    with pytest.raises(DatasetError, match=r"user25_led/1\.npy.*extract it again"):
        dataset[1]


def test_a_missing_gesture_split_folder_is_an_error(tmp_path):
    write_dvsgesture(tmp_path, {"ibmGestureTrain/user01_led": [0]})
    with pytest.raises(DatasetError, match="ibmGestureTest is missing"):
        build_dataset(make_config("dvs128gesture", tmp_path), "val")


def test_a_gesture_file_not_named_by_its_class_is_an_error(tmp_path):
    write_dvsgesture(tmp_path, {"ibmGestureTest/user26_led": [0, 11]})
    with pytest.raises(DatasetError, match=r"11\.npy: the file name is not a class number 0-10"):
        build_dataset(make_config("dvs128gesture", tmp_path), "val")


def test_an_event_dataset_needs_a_two_channel_model(gesture_root):
    root, _ = gesture_root
    config = make_config("dvs128gesture", root, model={"name": "spikformer_cifar_4_256", "img_size": 32})
    with pytest.raises(ConfigError, match="set model.in_chans=2"):
        build_dataset(config, "train")


def test_event_datasets_survive_pickling_for_loader_workers(gesture_root, tmp_path):
    root, _ = gesture_root
    dataset = build_dataset(make_config("dvs128gesture", root, cache_dir=str(tmp_path / "c")), "val")
    copy = pickle.loads(pickle.dumps(dataset))
    assert torch.equal(copy[0][0], dataset[0][0])


def test_two_training_steps_on_gesture_files(gesture_root, tmp_path):
    from spikformer.train import Trainer

    root, _ = gesture_root
    config = make_config("dvs128gesture", root, model={"num_classes": None}, batch_size=3,
                         cache_dir=str(tmp_path / "cache"))
    config.train.out_dir = str(tmp_path / "run")
    trainer = Trainer(config)
    result = trainer.fit()
    assert trainer.config.model.num_classes == 11 and trainer.model.head.out_features == 11  # the run's resolved copy
    assert trainer.position.step == 2 and math.isfinite(result["train_loss"])
    with Path(tmp_path / "run/metrics.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 1


def test_a_recording_deleted_after_indexing_is_an_error_naming_the_file(tmp_path):
    write_dvsgesture(tmp_path, {"ibmGestureTest/user27_led": [2]})
    dataset = build_dataset(make_config("dvs128gesture", tmp_path), "val")
    (tmp_path / "DVSGesture/ibmGestureTest/user27_led/2.npy").unlink()
    with pytest.raises(DatasetError, match=r"user27_led/2\.npy"):
        dataset[0]


def test_gesture_frames_are_cached_so_a_second_pass_never_reads_the_files(gesture_root, tmp_path, monkeypatch):
    import tonic

    root, _ = gesture_root
    config = make_config("dvs128gesture", root, cache_dir=str(tmp_path), event_roll=0)  # no augmentation
    first = [build_dataset(config, "train")[i][0] for i in range(6)]

    def no_reading(self, index):
        raise AssertionError("a gesture file was read again")

    monkeypatch.setattr(tonic.datasets.DVSGesture, "__getitem__", no_reading)
    again = build_dataset(config, "train")
    assert all(torch.equal(again[i][0], frames) for i, frames in enumerate(first))
