"""One clear line for every bad data file, from the main process or a loader worker: decompression bombs,
pickles declaring absurd shapes, wrongly typed labels, decoder panics, events outside the sensor (refused, not
clamped or wrapped), and corrupt or wrong cached frames (rebuilt from the source, with a one-line notice)."""

from __future__ import annotations

import importlib.util
import logging
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from event_writers import random_events, write_cifar10dvs, write_dvsgesture
from static_data import write_cifar10, write_image_tree

from spikformer.config import config_from_dict, load_config
from spikformer.data import build_dataset as build_resolved_dataset
from spikformer.data import build_loader
from spikformer.data.event_cache import DiskFrameCache
from spikformer.data.event_dataset import EventFrameDataset, EventRecordings
from spikformer.errors import DatasetError

TINY_DVS = {"name": "spikformer_dvs_2_256", "embed_dim": 16, "depth": 1, "num_heads": 2, "img_size": 32, "T": 4}
needs_aedat = pytest.mark.skipif(importlib.util.find_spec("aedat") is None, reason="needs the aedat package")


def build_dataset(config, split, **kwargs):
    """The dataset a run builds: from the config once its architecture is resolved (the model's input)."""
    from spikformer.models import resolve_config

    return build_resolved_dataset(resolve_config(config), split, **kwargs)


def event_config(name: str, root, **data):
    return config_from_dict({"model": TINY_DVS, "data": {"name": name, "root": str(root), "batch_size": 2, **data},
                             "train": {"epochs": 1, "progress": False, "tensorboard": False, "amp": "off"}})


# --- loader workers --------------------------------------------------------------------------------------


class FailsAt(torch.utils.data.Dataset):
    """Samples ``0..7``; reading ``bad`` raises the one-line error a reader raises for a bad file."""

    def __init__(self, bad: int) -> None:
        self.bad = bad

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int):
        if index == self.bad:
            raise DatasetError(f"cannot read image /data/x/{index}.png (broken data stream); remove or replace it")
        return torch.zeros(2), 0


def test_a_data_error_in_a_loader_worker_reaches_the_parent_as_the_same_one_line_error(monkeypatch):
    monkeypatch.delenv("SPIKFORMER_DEBUG", raising=False)
    loader = build_loader(FailsAt(5), batch_size=2, train=False, num_workers=1)
    with pytest.raises(DatasetError) as info:
        list(loader)
    assert str(info.value) == "cannot read image /data/x/5.png (broken data stream); remove or replace it"


def test_with_spikformer_debug_the_workers_traceback_is_kept(monkeypatch):
    monkeypatch.setenv("SPIKFORMER_DEBUG", "1")
    loader = build_loader(FailsAt(1), batch_size=2, train=False, num_workers=1)
    with pytest.raises(DatasetError, match=r"(?s)DataLoader worker process 0.*Traceback.*__getitem__"):
        list(loader)


# --- image folders ---------------------------------------------------------------------------------------


def png_declaring(width: int, height: int) -> bytes:
    """A 60-byte PNG whose header declares ``width x height`` pixels (a decompression bomb's first step)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("workers", [0, 1])
def test_a_decompression_bomb_in_an_image_folder_is_one_line_from_any_process(tmp_path, workers, monkeypatch):
    monkeypatch.delenv("SPIKFORMER_DEBUG", raising=False)
    root = write_image_tree(tmp_path, train_per_class=1, val_per_class=1, odd_modes=False)
    bomb = next((root / "val").glob("*/*.JPEG"))
    bomb.write_bytes(png_declaring(40_000, 40_000))  # 1.6 billion pixels
    dataset = build_dataset(load_config(None, ["data.name=folder", f"data.root={root}", "model.img_size=32"]), "val")
    loader = build_loader(dataset, batch_size=len(dataset), train=False, num_workers=workers)
    with pytest.raises(DatasetError) as info:
        next(iter(loader))
    message = str(info.value)
    assert message.startswith(f"refused image {bomb}: Image size (1600000000 pixels) exceeds limit")
    assert "decompression-bomb" in message and "\n" not in message


def test_image_bytes_that_break_the_decoder_are_one_line(tmp_path):
    root = write_image_tree(tmp_path, train_per_class=1, val_per_class=1, odd_modes=False)
    broken = next((root / "val").glob("*/*.JPEG"))
    broken.write_bytes(png_declaring(8, 8)[:-20])  # an IDAT that ends mid-stream
    dataset = build_dataset(load_config(None, ["data.name=folder", f"data.root={root}", "model.img_size=32"]), "val")
    index = [p for p, _ in dataset.samples].index(str(broken))
    with pytest.raises(DatasetError, match=rf"cannot read image {broken} .*remove or replace the file$"):
        dataset[index]


# --- CIFAR pickles ---------------------------------------------------------------------------------------


class HugeArray:
    """Pickles as NumPy's own array reconstruction, declaring a 931 GiB uint8 array."""

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct

        return _reconstruct, (np.ndarray, (10**12,), b"B")


def test_a_cifar_pickle_declaring_an_absurd_shape_is_refused_before_allocating(tmp_path):
    folder = write_cifar10(tmp_path, per_batch=2, test=2)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": HugeArray(), b"labels": [0, 1]}, protocol=2))
    with pytest.raises(DatasetError, match=r"test_batch is not a CIFAR pickle \(UnpicklingError: an array declares "
                                           r"the shape \(1000000000000,\) without the data to fill it"):
        build_dataset(load_config(None, ["data.name=cifar10", f"data.root={tmp_path}"]), "val")


class DeclaredArray:
    """Pickles as NumPy's array reconstruction of ``shape`` and ``dtype`` with no data to fill it (NumPy's own
    pickles declare an empty ``(0,)`` array and then set its shape and bytes from the data that follows)."""

    def __init__(self, shape, dtype) -> None:
        self.shape, self.dtype = shape, np.dtype(dtype)

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct

        return _reconstruct, (np.ndarray, self.shape, self.dtype)


def test_a_cifar_pickle_whose_arrays_are_declared_but_never_filled_is_refused(tmp_path):
    folder = write_cifar10(tmp_path, per_batch=2, test=2)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": DeclaredArray((2, 3072), "u1"), b"labels": [0, 1]},
                                                     protocol=2))
    with pytest.raises(DatasetError, match=r"test_batch is not a CIFAR pickle \(UnpicklingError: an array declares "
                                           r"the shape \(2, 3072\) without the data to fill it"):
        build_dataset(load_config(None, ["data.name=cifar10", f"data.root={tmp_path}"]), "val")


def test_a_cifar_pickle_with_a_sub_array_dtype_past_the_bound_is_refused_before_allocating(tmp_path):
    folder = write_cifar10(tmp_path, per_batch=2, test=2)
    # 300 rows of a 1000x1000 sub-array: 300 million elements from a few hundred bytes
    huge = DeclaredArray((300,), ("u1", (1000, 1000)))
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": huge, b"labels": [0, 1]}, protocol=2))
    assert (folder / "test_batch").stat().st_size < 400
    with pytest.raises(DatasetError, match=r"test_batch is not a CIFAR pickle \(UnpicklingError: an array declares "
                                           r"the shape \(300,\)"):
        build_dataset(load_config(None, ["data.name=cifar10", f"data.root={tmp_path}"]), "val")


def test_a_cifar_pickle_holding_an_array_of_python_objects_is_refused(tmp_path):
    folder = write_cifar10(tmp_path, per_batch=2, test=2)
    # NumPy fills an object array from a pickled list; a list shorter than the shape crashes the interpreter
    data = np.array([[0] * 3072, [1] * 3072], dtype=object)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": data, b"labels": [0, 1]}, protocol=2))
    with pytest.raises(DatasetError, match=r"test_batch is not a CIFAR pickle \(UnpicklingError: an array of "
                                           r"Python objects"):
        build_dataset(load_config(None, ["data.name=cifar10", f"data.root={tmp_path}"]), "val")


@pytest.mark.parametrize("labels, got", [(["cat", "dog"], "<U3 [2]"), ([0.5, 1.7], "float64 [2]"),
                                         ([True, False], "bool [2]"), (3, "int64 []"), ([[0], [1]], "int64 [2, 1]"),
                                         ([0, [1, 2]], "list")])
def test_labels_of_the_wrong_type_are_refused_not_cast(tmp_path, labels, got):
    folder = write_cifar10(tmp_path, per_batch=2, test=2)
    data = np.zeros((2, 3072), dtype=np.uint8)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": data, b"labels": labels}, protocol=2))
    with pytest.raises(DatasetError, match=rf"test_batch: 'labels' should be a list of integer class numbers, got "
                                           rf"{got.replace('[', '.').replace(']', '.')}"):
        build_dataset(load_config(None, ["data.name=cifar10", f"data.root={tmp_path}"]), "val")


# --- event files -----------------------------------------------------------------------------------------


@needs_aedat
def test_an_aedat4_file_that_makes_the_decoder_panic_is_one_line(tmp_path):
    write_cifar10dvs(tmp_path, per_class=2, events_per_file=30, classes=["dog"])
    broken = tmp_path / "CIFAR10DVS/dog/cifar10_dog_1.aedat4"
    data = bytearray(broken.read_bytes())
    data[14] = 0  # the IOHeader's length: the flatbuffer decoder (Rust) then indexes past its buffer and panics
    broken.write_bytes(bytes(data))
    dataset = build_dataset(event_config("cifar10dvs", tmp_path), "val")
    with pytest.raises(DatasetError, match=r"cifar10_dog_1\.aedat4: its decoder failed \(range end index"):
        dataset[0]


class ListReader:
    def __init__(self, events) -> None:
        self.events = events

    def read(self, index: int) -> np.ndarray:
        return self.events

    def describe(self, index: int) -> str:
        return "rec0.aedat4"


@pytest.mark.parametrize("field, value", [("x", -1), ("y", -3), ("x", 128)])
def test_events_outside_the_sensor_are_refused_not_clamped_by_resizing(field, value):
    events = random_events(50)
    events[field][7] = value
    recordings = EventRecordings("test", ListReader(events), [0], ["rec0"], [0], (128, 128, 2), ["a"])
    dataset = EventFrameDataset(recordings, T=2, size=(32, 32))  # resizing by 1/4 would turn -1 into 0
    with pytest.raises(DatasetError, match=r"rec0.aedat4: event coordinates .* fall outside the 128x128 sensor"):
        dataset[0]


@pytest.mark.parametrize("column, value", [(0, 65_541), (1, -1), (0, float("nan"))])
def test_gesture_coordinates_that_int16_would_wrap_are_refused(tmp_path, column, value):
    write_dvsgesture(tmp_path, {"ibmGestureTest/user25_led": [0]})
    path = tmp_path / "DVSGesture/ibmGestureTest/user25_led/0.npy"
    table = np.load(path).astype(np.float64)
    table[3, column] = value  # as int16 65541 would wrap to 5, and -1 resized by 1/4 would round to 0
    np.save(path, table)
    dataset = build_dataset(event_config("dvs128gesture", tmp_path), "val")
    with pytest.raises(DatasetError, match=r"user25_led/0\.npy: (event coordinates|the recording holds NaN)"):
        dataset[0]


@pytest.mark.parametrize("value", [2**62, 1e300, -1e300], ids=["int64-wraps-x1000", "huge-float", "negative-float"])
def test_gesture_timestamps_that_would_overflow_microseconds_are_refused(tmp_path, value):
    write_dvsgesture(tmp_path, {"ibmGestureTest/user25_led": [0]})
    path = tmp_path / "DVSGesture/ibmGestureTest/user25_led/0.npy"
    table = np.load(path).astype(np.int64 if isinstance(value, int) else np.float64)
    table[-1, 3] = value  # x1000 wraps int64 (or casts to garbage): the event would land in a wrong frame
    np.save(path, table)
    dataset = build_dataset(event_config("dvs128gesture", tmp_path), "val")
    with pytest.raises(DatasetError, match=r"user25_led/0\.npy: timestamps .* do not fit"):
        dataset[0]


@pytest.mark.parametrize("times", [[0.0, 1e300], [-(2**62), 2**62]], ids=["float-beyond-int64", "span-beyond-int64"])
def test_event_timestamps_beyond_int64_are_refused_not_cast(times):
    events = random_events(50, dtype=np.dtype([("x", "<i2"), ("y", "<i2"), ("p", "u1"),
                                               ("t", "<f8" if isinstance(times[0], float) else "<i8")]))
    events["t"][0], events["t"][-1] = times
    recordings = EventRecordings("test", ListReader(events), [0], ["rec0"], [0], (128, 128, 2), ["a"])
    with pytest.raises(DatasetError, match=r"rec0.aedat4: timestamps .* do not fit"):
        EventFrameDataset(recordings, T=2, size=(32, 32))[0]


def test_a_replaced_recording_is_not_served_from_the_frame_cache(tmp_path):
    write_dvsgesture(tmp_path, {"ibmGestureTest/user25_led": [0]}, events_per_file=400)
    path = tmp_path / "DVSGesture/ibmGestureTest/user25_led/0.npy"
    config = event_config("dvs128gesture", tmp_path, cache_dir=str(tmp_path / "cache"))
    before = build_dataset(config, "val")[0][0]
    table = np.load(path)
    table[:, 0] = 127 - table[:, 0]  # the same recording mirrored: other frames, same path, same size
    np.save(path, table)
    fresh = build_dataset(event_config("dvs128gesture", tmp_path), "val")[0][0]  # no cache
    assert not torch.equal(before, fresh)
    assert torch.equal(build_dataset(config, "val")[0][0], fresh)


# --- cached frames ---------------------------------------------------------------------------------------


@pytest.fixture
def cached(tmp_path):
    events = random_events(400)
    recordings = EventRecordings("test", ListReader(events), [0], ["rec0"], [0], (128, 128, 2), ["a"])
    cache = DiskFrameCache(tmp_path / "cache", {"T": 2})

    def dataset():
        return EventFrameDataset(recordings, T=2, size=(32, 32), cache=cache)

    good = dataset()[0][0].clone()
    return dataset, cache.path("rec0"), good


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-30])


def damage_crc(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[60] ^= 0xFF  # inside the compressed member: zipfile's CRC check fails on reading
    path.write_bytes(bytes(data))


def save_frames(frames):
    return lambda path: np.savez_compressed(path, frames=frames)


@pytest.mark.parametrize("spoil", [truncate, damage_crc, save_frames(np.zeros((2, 2, 16, 16), np.int32)),
                                   save_frames(np.full((2, 2, 32, 32), np.nan, np.float32)),
                                   save_frames(np.full((2, 2, 32, 32), -1, np.int32)),
                                   save_frames(np.full((2, 2, 32, 32), 2**30, np.int32)),
                                   lambda path: path.write_bytes(b"PK\x03\x04 not a zip")],
                         ids=["truncated", "crc", "shape", "nan", "negative", "huge-counts", "foreign"])
def test_a_bad_cache_file_is_rebuilt_from_the_source_with_a_one_line_notice(cached, spoil, caplog):
    dataset, path, good = cached
    spoil(path)
    with caplog.at_level(logging.WARNING, logger="spikformer.data.event_cache"):
        frames = dataset()[0][0]
    assert torch.equal(frames, good)
    notices = [r.getMessage() for r in caplog.records]
    assert len(notices) == 1 and "\n" not in notices[0] and str(path) in notices[0] and "recomput" in notices[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="spikformer.data.event_cache"):
        assert torch.equal(dataset()[0][0], good)  # the rebuilt file is good: no second notice
    assert not caplog.records


def test_cache_files_get_the_permissions_of_any_new_file(cached):
    _, path, _ = cached
    mask = os.umask(0o022)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
