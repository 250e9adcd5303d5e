"""DVS128 Gesture (Amir et al. 2017): 11 hand and arm gestures of 29 subjects under 3 lightings, 128x128 DVS.

On disk as tonic lays out its release (``ibmGestureTrain.tar.gz`` / ``ibmGestureTest.tar.gz``, extracted):
``<data.root>/DVSGesture/ibmGestureTrain/user01_fluorescent/<label>.npy`` and the same under
``ibmGestureTest``; each ``.npy`` holds one gesture as an ``[N, 4]`` array of (x, y, polarity, t in ms) and its
name is the class number 0-10. Files are indexed and read by tonic (``tonic.datasets.DVSGesture``). The split is
the official one: the train folder (subjects 1-23) trains, the test folder (subjects 24-29) validates.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import numpy.lib.recfunctions  # noqa: F401 - np.lib.recfunctions for the reader

from ..errors import DatasetError
from .digits import take_fraction_per_class
from .event_dataset import EventRecordings, build_event_dataset
from .event_files import TonicFiles, locate_release, natural_key, refuse_download, tonic_module
from .event_frames import check_timestamps
from .registry import register_dataset

FOLDER = "DVSGesture"
SPLIT_FOLDERS = {"train": "ibmGestureTrain", "val": "ibmGestureTest"}
CLASSES = ["hand clapping", "right hand wave", "left hand wave", "right arm clockwise",
           "right arm counter-clockwise", "left arm clockwise", "left arm counter-clockwise", "arm roll",
           "air drums", "air guitar", "other gestures"]
SENSOR_SIZE = (128, 128, 2)
LAYOUT = (f"{FOLDER}/ibmGestureTrain/userNN_<lighting>/<label>.npy and the same under ibmGestureTest "
          f"(tonic's layout of the release)")


def open_tonic_dvsgesture(save_to: str, train: bool):
    """tonic's ``DVSGesture`` over ``save_to/DVSGesture/ibmGesture{Train,Test}``, download switched off."""
    tonic = tonic_module()

    # Named as tonic's class: tonic finds the files in save_to/<class name>.
    class DVSGesture(tonic.datasets.DVSGesture):
        def _check_exists(self) -> bool:
            return True  # never download: the files are where data.root says

        def __getitem__(self, index):
            # tonic's reader, with the raw array checked first: tonic casts x and y to int16, which would wrap
            # a corrupt 70000 into an in-range 4464 without a word.
            path = self.data[index]
            events = check_gesture_array(np.load(path, allow_pickle=False), path)
            check_timestamps(events[:, 3], str(path), scale=1000)  # before the ms -> us product could wrap
            events[:, 3] *= 1000  # ms -> us, as tonic does
            events = np.lib.recfunctions.unstructured_to_structured(events, self.dtype)
            return events, self.targets[index]

    try:
        return DVSGesture(save_to, train=train)
    except ValueError as error:  # tonic parses userNN_<lighting> folders and <label>.npy names as numbers
        raise DatasetError(f"{Path(save_to) / FOLDER}: a folder or file name does not follow the release's naming "
                           f"({error}); expected {LAYOUT}") from None


def check_gesture_array(events: np.ndarray, path) -> np.ndarray:
    """A recording as the release stores it: ``[N, 4]`` finite numbers (x, y, polarity, t in ms) with x and y
    on the 128x128 sensor. Anything else is refused with ``DatasetError`` naming the file."""
    if events.ndim != 2 or events.shape[1] != 4 or events.dtype.kind not in "iuf":
        raise DatasetError(f"{path}: expected an [N, 4] array of numbers (x, y, p, t), got {events.dtype} "
                           f"{list(events.shape)}; extract it again from the release archive")
    if events.dtype.kind == "f" and not np.isfinite(events).all():
        raise DatasetError(f"{path}: the recording holds NaN or infinite values; extract it again from the release "
                           f"archive")
    if len(events):
        W, H = SENSOR_SIZE[0], SENSOR_SIZE[1]
        x, y = events[:, 0], events[:, 1]
        if x.min() < 0 or y.min() < 0 or x.max() >= W or y.max() >= H:
            raise DatasetError(f"{path}: event coordinates x in [{x.min():g}, {x.max():g}], y in [{y.min():g}, "
                               f"{y.max():g}] fall outside the {W}x{H} sensor; the file is corrupt or belongs to "
                               f"another dataset")
    return events


def dvsgesture_files(root: str | None, split: str) -> TonicFiles:
    save_to = locate_release(root, FOLDER, "dvs128gesture", LAYOUT)
    folder = save_to / FOLDER / SPLIT_FOLDERS[split]
    if not folder.is_dir():
        raise DatasetError(f"{folder} is missing (the {split} split of DVS128 Gesture); expected {LAYOUT}")
    files = TonicFiles("DVS128 Gesture", partial(open_tonic_dvsgesture, str(save_to), split == "train"),
                       save_to / FOLDER, hint="The file is corrupt or not an [N, 4] array of (x, y, p, t): "
                                              "extract it again from the release archive")
    if not files.paths:
        raise DatasetError(f"no .npy recordings under {folder}; expected {LAYOUT}")
    bad = [p for p, y in zip(files.paths, files.labels) if not 0 <= y < len(CLASSES)]
    if bad:
        raise DatasetError(f"{bad[0]}: the file name is not a class number 0-{len(CLASSES) - 1}; expected {LAYOUT}")
    return files


def dvsgesture_recordings(root: str | None, split: str, train_fraction: float = 1.0) -> EventRecordings:
    files = dvsgesture_files(root, split)
    order = sorted(range(len(files.paths)), key=lambda i: natural_key(files.key(i)))
    recordings = EventRecordings("dvs128gesture", files, order, [files.key(i) for i in order],
                                 [files.labels[i] for i in order], SENSOR_SIZE, CLASSES)
    if split == "train" and train_fraction < 1.0:
        recordings = recordings.subset(take_fraction_per_class(np.array(recordings.labels), train_fraction))
    return recordings


@register_dataset("dvs128gesture")
def build_dvs128gesture(config, split: str):
    data = config.data
    refuse_download(data.download, "dvs128gesture", LAYOUT)
    recordings = dvsgesture_recordings(data.root, split, data.train_fraction)
    # No default flip: it would turn a right-hand wave into a left-hand wave (classes 1/2, 3-4/5-6).
    return build_event_dataset(config, split, recordings, default_flip=0.0,
                               default_cache_root=Path(data.root).expanduser() / "cache")
