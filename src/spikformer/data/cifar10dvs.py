"""CIFAR10-DVS (Li et al. 2017): 10,000 recordings of CIFAR-10 images on a 128x128 DVS, 1,000 per class.

On disk as tonic lays it out after extracting the release: ``<data.root>/CIFAR10DVS/<class>/*.aedat4`` with
the ten class folders ``airplane`` ... ``truck`` (``data.root`` may also point at ``CIFAR10DVS`` itself).
Files are indexed and read by tonic (``tonic.datasets.CIFAR10DVS``; its ``.aedat4`` reader needs the ``aedat``
package, part of the ``events`` extra).

There is no official split. We use the original Spikformer code's 9:1 split per class (SPEC §2): within each
class the recordings are in the order of a folder dataset, file names sorted as strings (``cifar10_airplane_0``,
``_1``, ``_10``, ``_100``, ... ``_999``); the first ceil(90%) train, the rest are the validation set: 900 / 100
per class on the full release. A class too small for that rule to leave a validation recording (fewer than 10)
keeps its last one for validation.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from .digits import take_fraction_per_class
from .event_dataset import EventRecordings, build_event_dataset
from .event_files import TonicFiles, locate_release, refuse_download, tonic_module
from .registry import register_dataset

FOLDER = "CIFAR10DVS"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SENSOR_SIZE = (128, 128, 2)
TRAIN_FRACTION = 0.9
LAYOUT = f"{FOLDER}/<class>/*.aedat4 with class folders {', '.join(CLASSES)} (tonic's layout of the release)"


def open_tonic_cifar10dvs(save_to: str):
    """tonic's ``CIFAR10DVS`` over the files in ``save_to/CIFAR10DVS``, with its download switched off."""
    tonic = tonic_module()

    # Named as tonic's class: tonic finds the files in save_to/<class name>.
    class CIFAR10DVS(tonic.datasets.CIFAR10DVS):
        def _check_exists(self) -> bool:
            return True  # never download: the files are where data.root says

    try:
        return CIFAR10DVS(save_to)
    except KeyError as error:  # tonic maps each folder name to a class
        raise DatasetError(f"{Path(save_to) / FOLDER}: the folder {error.args[0]!r} holds .aedat4 files but is not "
                           f"a CIFAR10-DVS class; expected {LAYOUT}") from None


def cifar10dvs_files(root: str | None) -> TonicFiles:
    save_to = locate_release(root, FOLDER, "cifar10dvs", LAYOUT)
    files = TonicFiles("CIFAR10-DVS", partial(open_tonic_cifar10dvs, str(save_to)), save_to / FOLDER,
                       hint="The file is corrupt or truncated: extract it again from the release archive")
    if not files.paths:
        raise DatasetError(f"no .aedat4 files under {save_to / FOLDER}; expected {LAYOUT}")
    return files


def cifar10dvs_split(files: TonicFiles, split: str) -> list[int]:
    """Indices of ``split`` in the original code's 9:1 per-class split (see the module docstring)."""
    chosen = []
    for label in sorted(set(files.labels)):
        members = sorted((i for i, y in enumerate(files.labels) if y == label), key=lambda i: files.paths[i].name)
        n_train = math.ceil(TRAIN_FRACTION * len(members))
        if len(members) > 1:
            n_train = min(n_train, len(members) - 1)
        chosen += members[:n_train] if split == "train" else members[n_train:]
    return chosen


def cifar10dvs_recordings(root: str | None, split: str, train_fraction: float = 1.0) -> EventRecordings:
    files = cifar10dvs_files(root)
    indices = cifar10dvs_split(files, split)
    if not indices:
        raise DatasetError(f"the {split} split of {files.folder} is empty: each class needs at least 2 "
                           f"recordings")
    recordings = EventRecordings("cifar10dvs", files, indices, [files.key(i) for i in indices],
                                 [files.labels[i] for i in indices], SENSOR_SIZE, CLASSES)
    if split == "train" and train_fraction < 1.0:
        recordings = recordings.subset(take_fraction_per_class(np.array(recordings.labels), train_fraction))
    return recordings


@register_dataset("cifar10dvs")
def build_cifar10dvs(config, split: str):
    data = config.data
    refuse_download(data.download, "cifar10dvs", LAYOUT)
    recordings = cifar10dvs_recordings(data.root, split, data.train_fraction)
    return build_event_dataset(config, split, recordings, default_flip=0.5,
                               default_cache_root=Path(data.root).expanduser() / "cache")
