"""Property-based: whatever bytes sit in a data file or a checkpoint, reading it gives the data or one
``SpikformerError`` line, never a traceback, a hang or a silently wrong result.

Each test starts from a valid file in the real on-disk format and feeds the reader random variants of it (bytes
flipped, cut, inserted; structures with random types, shapes and values). The number of examples is fixed and
the generation derandomised, so CI sees the same inputs every run; ``TALLY`` counts what was tried and how it
ended (printed with ``pytest -s``; docs/robustness.md quotes the totals).
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from event_writers import random_events, write_cifar10dvs, write_dvsgesture
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from static_data import write_cifar10

from spikformer.checkpoint import load_checkpoint, read_checkpoint, save_model, write_checkpoint
from spikformer.config import config_from_dict
from spikformer.data import build_dataset as build_resolved_dataset
from spikformer.data.cifar import LAYOUTS, CifarDataset
from spikformer.data.event_cache import DiskFrameCache
from spikformer.data.event_dataset import EventFrameDataset, EventRecordings
from spikformer.data.folder import ImageFolderDataset
from spikformer.errors import SpikformerError
from spikformer.models import create_model

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])
TALLY: dict[str, Counter] = {}
TINY = {"embed_dim": 16, "depth": 1, "num_heads": 2}
needs_aedat = pytest.mark.skipif(importlib.util.find_spec("aedat") is None, reason="needs the aedat package")


def build_dataset(config, split, **kwargs):
    """The dataset a run builds: from the config once its architecture is resolved (the model's input)."""
    from spikformer.models import resolve_config

    return build_resolved_dataset(resolve_config(config), split, **kwargs)


def outcome(name: str, read) -> object:
    """Run ``read()``; count it as accepted or refused (a ``SpikformerError`` of one explained line). Any
    other exception fails the test: that is the defect this file looks for."""
    tally = TALLY.setdefault(name, Counter())
    tally["tried"] += 1
    try:
        result = read()
    except SpikformerError as error:
        message = str(error)
        assert message and "Traceback" not in message and len(message) < 2500, message[:500]
        tally["refused"] += 1
        return error
    tally["accepted"] += 1
    return result


@pytest.fixture(scope="module", autouse=True)
def report_tally():
    yield
    for name, tally in sorted(TALLY.items()):
        print(f"\nfuzz {name}: {tally['tried']} inputs tried, {tally['accepted'] + tally['refused']} handled "
              f"({tally['accepted']} read, {tally['refused']} refused with one line)")


def mutated(data: bytes) -> st.SearchStrategy[bytes]:
    """``data`` with a few bytes replaced, a slice cut out or inserted, or cut short."""
    n = len(data)

    def apply(edits) -> bytes:
        out = bytearray(data)
        for kind, position, value in edits:
            position %= max(len(out), 1)
            if kind == "set" and out:
                out[position] = value
            elif kind == "cut":
                del out[position:position + value % 64 + 1]
            elif kind == "insert":
                out[position:position] = bytes([value]) * (value % 16 + 1)
            else:
                del out[position:]
        return bytes(out)

    edit = st.tuples(st.sampled_from(["set", "set", "set", "cut", "insert", "truncate"]),
                     st.integers(0, max(n - 1, 0)), st.integers(0, 255))
    return st.lists(edit, min_size=1, max_size=6).map(apply)


# --- CIFAR pickles ---------------------------------------------------------------------------------------

label_values = (st.lists(st.integers(-3, 12), max_size=6) | st.lists(st.floats(allow_nan=True), max_size=4)
                | st.lists(st.text(max_size=3), max_size=4) | st.lists(st.booleans(), max_size=4)
                | st.integers() | st.none() | st.text(max_size=4) | st.lists(st.lists(st.integers(0, 9), max_size=2)))
arrays = st.builds(lambda dtype, shape: np.zeros(shape, dtype=dtype),
                   st.sampled_from([np.uint8, np.int64, np.float32, np.bool_]),
                   st.lists(st.integers(0, 3073), min_size=0, max_size=3).map(tuple).filter(
                       lambda s: int(np.prod(s)) < 20_000))
plausible_batches = st.builds(
    lambda n, labels, key: {b"data": np.zeros((n, 3072), np.uint8), key: labels[:n] if isinstance(labels, list)
                            else labels},
    st.integers(0, 4), st.lists(st.integers(-1, 10), min_size=0, max_size=5) | label_values,
    st.sampled_from([b"labels", "labels", b"fine_labels"]))
batches = st.dictionaries(st.sampled_from([b"data", b"labels", "data", "labels", b"x"]),
                          arrays | label_values, max_size=4) | plausible_batches


@pytest.fixture(scope="module")
def cifar_folder(tmp_path_factory) -> Path:
    return write_cifar10(tmp_path_factory.mktemp("cifar"), per_batch=2, test=3)


@FUZZ
@given(batch=batches)
def test_any_cifar_pickle_structure_is_read_or_refused_with_one_line(cifar_folder, batch):
    (cifar_folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    result = outcome("CIFAR pickle structures", lambda: CifarDataset(cifar_folder, LAYOUTS["cifar10"], train=False))
    if isinstance(result, CifarDataset):
        assert result.images.dtype == np.uint8 and result.labels.dtype == np.int64


@pytest.fixture(scope="module")
def valid_cifar_pickle(cifar_folder) -> bytes:
    rng = np.random.default_rng(0)
    return pickle.dumps({b"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8), b"labels": [1, 2, 3],
                         b"batch_label": b"testing batch 1 of 1"}, protocol=2)


@FUZZ
@given(data=st.data())
def test_any_mutation_of_a_cifar_pickle_is_read_or_refused_with_one_line(cifar_folder, valid_cifar_pickle, data):
    (cifar_folder / "test_batch").write_bytes(data.draw(mutated(valid_cifar_pickle)))
    outcome("CIFAR pickle bytes", lambda: CifarDataset(cifar_folder, LAYOUTS["cifar10"], train=False))


class DeclaredArray:
    """Pickles as NumPy's array reconstruction of ``shape`` and ``dtype``, filled with ``state`` when given."""

    def __init__(self, shape, dtype, state) -> None:
        self.shape, self.dtype, self.state = shape, dtype, state

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct

        args = (np.ndarray, self.shape, self.dtype)
        return (_reconstruct, args) if self.state is None else (_reconstruct, args, self.state)


reconstructions = st.builds(
    lambda shape, dtype, fill, rows: DeclaredArray(
        shape, dtype, (1, (rows, 3072), np.dtype(np.uint8), False, bytes(rows * 3072)) if fill else None),
    st.sampled_from([(0,), (2, 3072), (10**12,), (300,), (3,), ()]) | st.lists(st.integers(0, 2**40), max_size=3)
    .map(tuple),
    st.sampled_from([np.dtype(np.uint8), np.dtype(("u1", (1000, 1000))), np.dtype(object), np.dtype(np.float64)]),
    st.booleans(), st.integers(0, 3)) | st.builds(  # and what NumPy itself writes: (0,), then the data
    lambda rows: DeclaredArray((0,), np.dtype(np.uint8), (1, (rows, 3072), np.dtype(np.uint8), False,
                                                        bytes(rows * 3072))), st.integers(1, 3))


@FUZZ
@given(data=reconstructions)
def test_any_declared_array_is_read_only_when_its_data_fills_it(cifar_folder, data):
    (cifar_folder / "test_batch").write_bytes(pickle.dumps({b"data": data, b"labels": [1, 2, 3][:max(
        (data.state or (0, (0,)))[1][0], 0)]}, protocol=2))
    result = outcome("CIFAR array reconstructions",
                     lambda: CifarDataset(cifar_folder, LAYOUTS["cifar10"], train=False))
    if isinstance(result, CifarDataset):  # only NumPy's own (0,) placeholder, filled from the file's bytes
        assert data.state is not None and int(np.prod(data.shape)) == 0 and data.dtype == np.uint8
        assert len(result) == data.state[1][0] and not result.images.any()


# --- event files -----------------------------------------------------------------------------------------


class OneRecording:
    def __init__(self, events) -> None:
        self.events = events

    def read(self, index: int) -> np.ndarray:
        return self.events

    def describe(self, index: int) -> str:
        return "recording.aedat4"


event_arrays = st.builds(
    lambda n, seed, low, high, dtype: _events(n, seed, low, high, dtype),
    st.integers(0, 300), st.integers(0, 2**16), st.integers(-40_000, 127), st.integers(0, 70_000),
    st.sampled_from(["<i2", "<u2", "<i8", "<f8"]))


def _events(n, seed, low, high, dtype):
    rng = np.random.default_rng(seed)
    events = np.zeros(n, dtype=[("x", dtype), ("y", dtype), ("t", "<i8"), ("p", "?")])
    with np.errstate(all="ignore"):
        events["x"] = rng.integers(min(low, high), max(low, high) + 1, n)
        events["y"] = rng.integers(0, 128, n)
    events["t"] = rng.integers(-5, 10**6, n)  # unsorted, negative times too
    events["p"] = rng.integers(0, 2, n)
    return events


@FUZZ
@given(events=event_arrays)
def test_any_event_array_gives_frames_or_is_refused_never_clamped(events):
    recordings = EventRecordings("fuzz", OneRecording(events), [0], ["r"], [0], (128, 128, 2), ["a"])
    result = outcome("event arrays", lambda: EventFrameDataset(recordings, T=3, size=(32, 32))[0][0])
    if isinstance(result, torch.Tensor):
        x = events["x"].astype(np.float64)
        assert len(events) == 0 or (x.min() >= 0 and x.max() < 128)  # accepted only when all were on the sensor
        assert float(result.sum()) == len(events)  # every event counted once


timestamps = st.lists(st.integers(-(2**63), 2**63 - 1) | st.sampled_from([0, 10**6, 2**62, -(2**62)]),
                      min_size=1, max_size=40) | st.lists(
    st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([1e300, -1e300, 0.5]), min_size=1, max_size=40)


@FUZZ
@given(times=timestamps)
def test_any_timestamps_give_frames_or_are_refused_never_wrapped(times):
    dtype = "<f8" if isinstance(times[0], float) else "<i8"
    events = np.zeros(len(times), dtype=[("x", "<i2"), ("y", "<i2"), ("t", dtype), ("p", "?")])
    events["t"] = times
    recordings = EventRecordings("fuzz", OneRecording(events), [0], ["r"], [0], (128, 128, 2), ["a"])
    dataset = EventFrameDataset(recordings, T=3, size=(32, 32), framing="time")
    result = outcome("event timestamps", lambda: dataset[0][0])
    if isinstance(result, torch.Tensor):  # accepted only when values and span fit int64
        values = [int(t) for t in times]
        assert min(values) >= -(2**63) and max(values) < 2**63 and max(values) - min(values) < 2**63
        assert float(result.sum()) == len(times)


@pytest.fixture(scope="module")
def gesture(tmp_path_factory):
    root = tmp_path_factory.mktemp("gesture")
    write_dvsgesture(root, {"ibmGestureTest/user25_led": [0]}, events_per_file=60)
    dataset = build_dataset(_event_config("dvs128gesture", root), "val")
    path = root / "DVSGesture/ibmGestureTest/user25_led/0.npy"
    return dataset, path, path.read_bytes()


def _event_config(name, root):
    return config_from_dict({"model": {"name": "spikformer_dvs_2_256", **TINY, "img_size": 32, "T": 2},
                             "data": {"name": name, "root": str(root), "batch_size": 2},
                             "train": {"progress": False, "amp": "off"}})


@FUZZ
@given(data=st.data())
def test_any_mutation_of_a_gesture_file_gives_frames_or_one_line(gesture, data):
    dataset, path, valid = gesture
    path.write_bytes(data.draw(mutated(valid)))
    outcome("DVS128 Gesture .npy bytes", lambda: dataset.integrate(0))


@pytest.fixture(scope="module")
def aedat(tmp_path_factory):
    os.environ.setdefault("RUST_BACKTRACE", "0")
    root = tmp_path_factory.mktemp("cifar10dvs")
    write_cifar10dvs(root, per_class=2, events_per_file=40, classes=["cat"])
    dataset = build_dataset(_event_config("cifar10dvs", root), "val")
    path = root / "CIFAR10DVS/cat/cifar10_cat_1.aedat4"
    return dataset, path, path.read_bytes()


@needs_aedat
@FUZZ
@given(data=st.data())
def test_any_mutation_of_an_aedat4_file_gives_frames_or_one_line(aedat, data):
    dataset, path, valid = aedat
    path.write_bytes(data.draw(mutated(valid)))
    outcome("CIFAR10-DVS .aedat4 bytes", lambda: dataset.integrate(0))


# --- cached frames ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def frame_cache(tmp_path_factory):
    events = random_events(300)
    recordings = EventRecordings("fuzz", OneRecording(events), [0], ["r"], [0], (128, 128, 2), ["a"])
    cache = DiskFrameCache(tmp_path_factory.mktemp("cache"), {"T": 2})
    good = EventFrameDataset(recordings, T=2, size=(32, 32), cache=cache)[0][0].clone()
    return recordings, cache, good


def _filled(dtype, shape, fill) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.full(shape, fill, dtype=np.float64).astype(dtype)


cached_arrays = st.builds(_filled, st.sampled_from(["<i4", "<f4", "<f8", "<u1", "?", "<i8"]),
                          st.sampled_from([(2, 2, 32, 32), (2, 2, 16, 16), (1, 2, 32, 32), (2, 32, 32), ()]),
                          st.sampled_from([0, 1, -1, float("nan"), float("inf")]))


@FUZZ
@given(content=cached_arrays | st.binary(max_size=300), mutate=st.data())
def test_any_cache_file_content_is_rebuilt_or_used_and_the_frames_are_always_right(frame_cache, content, mutate):
    recordings, cache, good = frame_cache
    path = cache.path("r")
    if isinstance(content, np.ndarray):
        buffer = io.BytesIO()
        with np.errstate(invalid="ignore"):
            np.savez_compressed(buffer, frames=content)
        data = buffer.getvalue()
        path.write_bytes(mutate.draw(mutated(data)) if mutate.draw(st.booleans()) else data)
    else:
        path.write_bytes(content)
    result = outcome("cached frame files", lambda: EventFrameDataset(recordings, T=2, size=(32, 32),
                                                                     cache=cache)[0][0])
    assert isinstance(result, torch.Tensor)
    # The frames are recomputed unless the file held well-formed counts (then they are what it held).
    well_formed = (isinstance(content, np.ndarray) and content.dtype.kind in "iu" and content.shape == (2, 2, 32, 32)
                   and content.min() >= 0)
    assert torch.equal(result, good) or (well_formed and torch.equal(result, torch.from_numpy(content).float()))


# --- image folders ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    encoded = {}
    for fmt in ("PNG", "JPEG", "BMP", "GIF"):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(buffer, format=fmt)
        encoded[fmt] = buffer.getvalue()
    return folder / "image.png", encoded


@FUZZ
@given(data=st.data())
def test_any_mutation_of_an_image_file_is_decoded_or_refused_with_one_line(images, data):
    path, encoded = images
    fmt = data.draw(st.sampled_from(sorted(encoded)))
    path.write_bytes(data.draw(mutated(encoded[fmt])))
    dataset = ImageFolderDataset([(str(path), 0)], ["a"], mode="RGB")
    result = outcome("image files", lambda: dataset[0][0])
    if isinstance(result, Image.Image):
        assert result.mode == "RGB"


deep_images = st.builds(
    lambda mode, seed, low, high: (mode, np.random.default_rng(seed).uniform(low, high, (8, 8))),
    st.sampled_from(["I;16", "I", "F"]), st.integers(0, 2**16),
    st.sampled_from([0.0, -1.0, 0.2]), st.sampled_from([1.0, 255.0, 65535.0, 70000.0]))


@FUZZ
@given(image=deep_images)
def test_any_16_bit_or_float_image_keeps_its_levels_or_is_refused(tmp_path_factory, image):
    mode, values = image
    path = tmp_path_factory.getbasetemp() / "deep.tif"
    top = 1.0 if mode == "F" else 65535.0
    stored = values.astype(np.float32) if mode == "F" else np.round(values * (top / values.max() if mode == "I;16"
                                                                              else 1)).astype(np.int64)
    if mode == "I;16":
        Image.fromarray(np.clip(stored, 0, 65535).astype(np.uint16)).save(path)
    else:
        Image.fromarray(stored.astype(np.int32 if mode == "I" else np.float32), mode).save(path)
    dataset = ImageFolderDataset([(str(path), 0)], ["a"], mode="L")
    result = outcome("16-bit and float images", lambda: dataset[0][0])
    if isinstance(result, Image.Image):  # grey levels scaled from the full range, never clipped at 255
        levels = np.asarray(Image.open(path), dtype=np.float64)
        assert levels.min() >= 0 and levels.max() <= top
        assert np.abs(np.asarray(result, dtype=np.float64) - levels * 255 / top).max() <= 0.5 + 1e-6


# --- checkpoints -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    model = create_model("spikformer_cifar_4_256", **TINY)
    save_model(folder / "valid.safetensors", model, {"model": {"name": "spikformer_cifar_4_256", **TINY}})
    return folder / "fuzz.safetensors", (folder / "valid.safetensors").read_bytes(), model


@FUZZ
@given(data=st.data())
def test_any_mutation_of_a_checkpoint_is_loaded_intact_or_refused_with_one_line(checkpoint, data):
    path, valid, model = checkpoint
    mutation = data.draw(mutated(valid))
    path.write_bytes(mutation)
    target = create_model("spikformer_cifar_4_256", **TINY)
    result = outcome("checkpoint bytes", lambda: load_checkpoint(target, path))
    if not isinstance(result, SpikformerError):  # loaded: then the tensors are exactly the saved ones
        for key, value in model.state_dict().items():
            assert torch.equal(target.state_dict()[key], value), key


dtypes = st.sampled_from(["F32", "F16", "BF16", "I64", "BOOL", "U8", "F64", "XX", 5, None])
shapes = st.lists(st.integers(-2, 6), max_size=4) | st.integers() | st.none() | st.text(max_size=3)
entries = st.fixed_dictionaries({"dtype": dtypes, "shape": shapes,
                                 "data_offsets": st.lists(st.integers(-4, 200), min_size=0, max_size=3)})
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                        max_size=3), max_leaves=8)
metadata = st.dictionaries(st.sampled_from(["spikformer", "format", "x"]),
                           json_values.map(json.dumps) | st.text(max_size=20) | st.integers(), max_size=3)
headers = st.dictionaries(st.text(min_size=1, max_size=8), entries | json_values, max_size=4).flatmap(
    lambda tensors: metadata.map(lambda meta: {**tensors, "__metadata__": meta}) | st.just(tensors))


@FUZZ
@given(header=headers, data_bytes=st.integers(0, 200), length_lie=st.integers(-3, 3) | st.just(0))
def test_any_safetensors_header_is_read_or_refused_before_the_data(checkpoint, header, data_bytes, length_lie):
    path, _, _ = checkpoint
    text = json.dumps(header).encode()
    path.write_bytes((len(text) + length_lie).to_bytes(8, "little", signed=True) + text + b"\0" * data_bytes)
    outcome("safetensors headers", lambda: read_checkpoint(path))


tensor_dtypes = st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.bool,
                                 torch.uint8, torch.float64])


@FUZZ
@given(dtype=tensor_dtypes, reshape=st.booleans(), drop=st.booleans(), extra=st.booleans(), pick=st.integers(0, 10**6))
def test_any_tensor_dtype_or_shape_in_a_weights_file_loads_or_is_refused(checkpoint, dtype, reshape, drop, extra,
                                                                         pick):
    path, _, model = checkpoint
    state = dict(model.state_dict())
    name = sorted(state)[pick % len(state)]
    state[name] = state[name].to(dtype)
    if reshape:
        state[name] = state[name].reshape(-1)[:-1] if state[name].numel() > 1 else state[name].reshape(1, 1)
    if drop:
        del state[sorted(state)[(pick + 1) % len(state)]]
    if extra:
        state["spurious.weight"] = torch.zeros(2)
    write_checkpoint(path, state, {"layout": "state_dict"})
    target = create_model("spikformer_cifar_4_256", **TINY)
    result = outcome("weights-file tensors", lambda: load_checkpoint(target, path))
    if not isinstance(result, SpikformerError):
        assert not (reshape or drop or extra)
        assert state[name].is_floating_point() == model.state_dict()[name].is_floating_point()
