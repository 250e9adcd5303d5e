"""The dataset shared by every event-camera source: recordings -> frames (cached) -> augmentation.

A source (CIFAR10-DVS files, DVS128 Gesture files, the digits-dvs simulator) describes its recordings as
``EventRecordings``; ``EventFrameDataset`` turns recording ``i`` into ``(frames [T, 2, H, W] float32, label)``:
read events, resize them to the model's input (tonic's ``Downsample``), integrate them into ``T`` frames
(``event_frames``), cache the frames, and augment them when training. The model takes the batch
``[B, T, 2, H, W]`` as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError
from .event_augment import EventAugmentWide
from .event_cache import DiskFrameCache, MemoryFrameCache, cache_folder_name, cached_frames_problem, frame_cache_notice
from .event_frames import check_events, integrate_frames, resize_events
from .registry import model_input

DEFAULT_ROLL_AT_128 = 5  # pixels of roll at a 128x128 input, scaled with the input size


class EventReader(Protocol):
    """Reads recording ``i`` of a source as structured events (fields x, y, t, p) and names it in errors."""

    def read(self, index: int) -> np.ndarray: ...

    def describe(self, index: int) -> str: ...

    def fingerprint(self, index: int) -> str | None:
        """A digest of recording ``index``'s bytes (``None`` when it has no file), which keys its cached frames."""
        ...


@dataclass
class EventRecordings:
    """What a source offers: recording ``i`` of this list is ``reader.read(indices[i])``, cached under
    ``keys[i]``, of class ``labels[i]``. Plain data (no closures), so loader workers can receive it."""

    name: str
    reader: EventReader
    indices: list[int]
    keys: list[str]
    labels: list[int]
    sensor_size: tuple[int, int, int]  # (W, H, P) as in tonic
    classes: list[str]

    def read(self, i: int) -> np.ndarray:
        return self.reader.read(self.indices[i])

    def describe(self, i: int) -> str:
        return self.reader.describe(self.indices[i])

    def fingerprint(self, i: int) -> str | None:
        fingerprint = getattr(self.reader, "fingerprint", None)
        return fingerprint(self.indices[i]) if fingerprint is not None else None

    def subset(self, positions: list[int] | np.ndarray) -> EventRecordings:
        """The recordings at ``positions`` of this list."""
        positions = [int(i) for i in positions]
        return EventRecordings(self.name, self.reader, [self.indices[i] for i in positions],
                               [self.keys[i] for i in positions], [self.labels[i] for i in positions],
                               self.sensor_size, self.classes)


@dataclass(frozen=True)
class EventAugment:
    """Training augmentation on integer count frames ``[T, 2, H, W]``, applied after the cache.

    Each is the frame-level equal of an event transform: ``drop`` thins every count binomially (tonic's
    ``DropEvent`` drops each event with probability ``drop``), ``flip`` mirrors x (tonic's ``RandomFlipLR``),
    ``roll`` shifts x and y circularly by up to ``roll`` pixels (the same shift at every time step). ``ops``,
    applied last, is a per-sample op on all frames alike (e.g. ``EventAugmentWide``, the original's).
    """

    flip: float = 0.0
    roll: int = 0
    drop: float = 0.0
    ops: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        if self.drop > 0:
            frames = torch.binomial(frames, torch.full_like(frames, 1.0 - self.drop))
        if self.flip > 0 and torch.rand(()) < self.flip:
            frames = frames.flip(-1)
        if self.roll > 0:
            dy, dx = torch.randint(-self.roll, self.roll + 1, (2,)).tolist()
            frames = torch.roll(frames, shifts=(dy, dx), dims=(-2, -1))
        if self.ops is not None:
            frames = self.ops(frames)
        return frames

    @property
    def active(self) -> bool:
        return self.flip > 0 or self.roll > 0 or self.drop > 0 or self.ops is not None


class EventFrameDataset(Dataset):
    """``(frames [T, 2, H, W] float32 event counts, label)`` for each recording; frames are computed once and
    then read from ``cache``."""

    def __init__(self, recordings: EventRecordings, T: int, size: tuple[int, int], framing: str = "count",
                 cache: DiskFrameCache | MemoryFrameCache | None = None, augment: EventAugment | None = None) -> None:
        self.recordings = recordings
        self.T = T
        self.size = size
        self.framing = framing
        self.cache = cache if cache is not None else MemoryFrameCache()
        self.augment = augment
        self.classes = recordings.classes
        self.num_classes = len(recordings.classes)
        self.labels = torch.tensor(recordings.labels, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.recordings.keys)

    def frames(self, index: int) -> np.ndarray:
        """The integer frames ``[T, 2, H, W]`` of recording ``index``, from the cache when they are there."""
        key = self.recordings.keys[index]
        source = self.recordings.fingerprint(index)
        frames = self.cache.get(key, source)
        problem = frames is not None and cached_frames_problem(frames, (self.T, 2, *self.size))
        if problem:
            describe = getattr(self.cache, "describe", lambda k: f"the cached frames of {k}")
            frame_cache_notice(f"{describe(key)} {problem}; recomputing them from {self.recordings.describe(index)}")
            frames = None
        if frames is None:
            frames = self.integrate(index)
            self.cache.put(key, frames, source)
        return frames

    def integrate(self, index: int) -> np.ndarray:
        source = self.recordings.describe(index)
        events = self.recordings.read(index)
        sensor = self.recordings.sensor_size
        if len(events):
            check_events(events, sensor, source)  # before resizing, which would round -1 up to 0
        events = resize_events(events, sensor, self.size)
        return integrate_frames(events, (self.size[1], self.size[0], 2), self.T, self.framing, source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        frames = torch.from_numpy(np.asarray(self.frames(index), dtype=np.float32))
        if self.augment is not None and self.augment.active:
            frames = self.augment(frames)
        return frames, int(self.labels[index])


def event_input_size(config, sensor_size: tuple[int, int, int], dataset: str) -> tuple[int, tuple[int, int]]:
    """``(T, (H, W))`` the model expects, checked against an event source with 2 polarities."""
    model = model_input(config)
    if model["in_chans"] != 2:
        raise ConfigError(
            f"data.name={dataset} gives event frames with 2 polarity channels but the model takes "
            f"{model['in_chans']}; set model.in_chans=2 (the DVS variant spikformer_dvs_2_256 has it)"
        )
    size = int(model["img_size"])
    W, H = int(sensor_size[0]), int(sensor_size[1])
    if size > W or size > H:
        raise ConfigError(f"model.img_size={size} is larger than the {W}x{H} sensor of {dataset}; use at most "
                          f"{min(W, H)}")
    return int(model["T"]), (size, size)


def augment_from_config(config, train: bool, default_flip: float) -> EventAugment | None:
    """The training augmentation the config asks for (``None`` for evaluation)."""
    if not train:
        return None
    data = config.data
    size = int(model_input(config)["img_size"])
    flip = default_flip if data.event_flip is None else data.event_flip
    wide = data.event_augment == "wide"
    # The wide ops' translations replace the default roll; an explicit event_roll still adds one.
    default_roll = 0 if wide else round(DEFAULT_ROLL_AT_128 * size / 128)
    roll = default_roll if data.event_roll is None else data.event_roll
    # The original's magnitudes are for 128x128 frames; translations are scaled to the input size.
    ops = EventAugmentWide(translate=5.0 * size / 128) if wide else None
    return EventAugment(flip=flip, roll=roll, drop=data.event_drop, ops=ops)


def frame_cache_from_config(config, dataset: str, params: dict[str, Any], default_root: str | Path | None):
    """The disk cache under ``data.cache_dir`` (or ``default_root``), or memory when neither is set."""
    root = config.data.cache_dir or default_root
    if root is None:
        return MemoryFrameCache()
    return DiskFrameCache(Path(root).expanduser() / cache_folder_name(dataset, params), params)


def build_event_dataset(config, split: str, recordings: EventRecordings, default_flip: float,
                        default_cache_root: str | Path | None, extra_params: dict[str, Any] | None = None
                        ) -> EventFrameDataset:
    """An ``EventFrameDataset`` with the config's T, input size, framing, cache and augmentation."""
    T, size = event_input_size(config, recordings.sensor_size, recordings.name)
    framing = config.data.event_framing
    params = {"dataset": recordings.name, "T": T, "framing": framing, "size": list(size),
              "sensor": list(recordings.sensor_size), **(extra_params or {})}
    cache = frame_cache_from_config(config, recordings.name, params, default_cache_root)
    augment = augment_from_config(config, split == "train", default_flip)
    return EventFrameDataset(recordings, T, size, framing, cache, augment)

