"""``digits-dvs``: the embedded event-camera default — the bundled digits seen by the simulated event camera.

Every digit of the fixed digits split (1,437 train / 360 test) becomes one recording of
``SaccadeEventSimulator`` on a sensor the size of the model's input, seeded by (split, index): the same events
on every machine, no download. The recordings then take exactly the path of the real datasets (framing into
``model.T`` frames, cache, augmentation), so everything downstream is exercised without CIFAR10-DVS on disk.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from .digits import digits_split, take_fraction_per_class
from .event_dataset import EventRecordings, build_event_dataset
from .event_simulator import SaccadeEventSimulator
from .registry import model_input, register_dataset

SIMULATOR_SEED = 0
SPLIT_IDS = {"train": 0, "val": 1}


class SimulatedDigits:
    """Reader of the simulated recordings of one split: recording ``i`` is digit ``i`` of ``digits_split``."""

    def __init__(self, split: str, simulator: SaccadeEventSimulator, seed: int = SIMULATOR_SEED) -> None:
        self.split = split
        self.simulator = simulator
        self.seed = seed
        self.images, self.labels = digits_split(split)

    def read(self, index: int) -> np.ndarray:
        return self.simulator.simulate(self.images[index], seed=(self.seed, SPLIT_IDS[self.split], index))

    def describe(self, index: int) -> str:
        return f"digits-dvs {self.split} recording {index}"


def digits_dvs_recordings(split: str, sensor_size: int, train_fraction: float = 1.0) -> EventRecordings:
    reader = SimulatedDigits(split, SaccadeEventSimulator(sensor_size=sensor_size))
    n = len(reader.labels)
    recordings = EventRecordings("digits-dvs", reader, list(range(n)), [f"{split}/{i}" for i in range(n)],
                                 [int(y) for y in reader.labels], (sensor_size, sensor_size, 2),
                                 [str(d) for d in range(10)])
    if split == "train" and train_fraction < 1.0:
        recordings = recordings.subset(take_fraction_per_class(reader.labels, train_fraction))
    return recordings


@register_dataset("digits-dvs")
def build_digits_dvs(config, split: str):
    if config.data.root is not None:  # as for digits: a root most likely meant another dataset
        raise ConfigError(f"data.root={config.data.root!r} is set, but data.name=digits-dvs is embedded and reads "
                          f"no files; set data.name to the dataset stored there, or remove data.root")
    size = int(model_input(config)["img_size"])
    recordings = digits_dvs_recordings(split, size, config.data.train_fraction)
    params = {"simulator": recordings.reader.simulator.params(), "seed": SIMULATOR_SEED}
    # Frames stay in memory unless data.cache_dir is set: simulating all 1,797 digits takes seconds.
    return build_event_dataset(config, split, recordings, default_flip=0.0, default_cache_root=None,
                               extra_params=params)
