"""The saccade event-camera simulator and the embedded digits-dvs dataset built on it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spikformer.config import config_from_dict, load_config
from spikformer.data import build_dataset
from spikformer.data.event_frames import integrate_frames
from spikformer.data.event_simulator import EVENT_DTYPE, SaccadeEventSimulator
from spikformer.models import resolve_config


def square(size=8):
    image = np.zeros((size, size))
    image[2:6, 2:6] = 1.0
    return image


def test_simulated_events_are_tonic_structured_arrays_sorted_in_time():
    from tonic.io import events_struct

    events = SaccadeEventSimulator(sensor_size=24).simulate(square(), seed=1)
    assert events.dtype == EVENT_DTYPE == events_struct
    assert len(events) > 100
    assert (np.diff(events["t"]) >= 0).all() and 0 <= events["t"].min() and events["t"].max() <= 300_000
    assert events["x"].min() >= 0 and events["x"].max() < 24 and events["y"].max() < 24
    assert 0.3 < events["p"].mean() < 0.7  # edges pass both ways: ON and OFF in similar numbers


def test_the_same_seed_gives_the_same_events_and_another_seed_other_ones():
    simulator = SaccadeEventSimulator(sensor_size=24, noise_hz=5.0)
    a, b = simulator.simulate(square(), seed=(0, 1, 7)), simulator.simulate(square(), seed=(0, 1, 7))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, simulator.simulate(square(), seed=(0, 1, 8)))


def test_a_still_image_emits_no_events():
    still = SaccadeEventSimulator(sensor_size=24, amplitude=0.0, vertex_jitter=0.0)
    assert len(still.simulate(square(), seed=0)) == 0


def test_brightening_pixels_fire_on_events_and_darkening_pixels_off_events():
    # Without jitter the first saccade moves the image up and to the right: the bright square's top-right
    # corner region brightens (ON), its bottom-left darkens (OFF).
    simulator = SaccadeEventSimulator(sensor_size=32, vertex_jitter=0.0, threshold_spread=0.0)
    events = simulator.simulate(square(), seed=0)
    first = events[events["t"] < 100_000]
    on, off = first[first["p"]], first[~first["p"]]
    assert on["x"].mean() > off["x"].mean() and on["y"].mean() < off["y"].mean()


def test_every_pixel_fires_as_many_on_as_off_events_over_the_closed_saccade_triangle():
    # The motion returns the image to its start, so each pixel's log intensity ends where it began; a DVS pixel
    # that fires one event per threshold crossed has then fired equally often in both directions — up to one
    # event where the return lands exactly on a threshold level (rounding decides that crossing).
    events = SaccadeEventSimulator(sensor_size=24, threshold_spread=0.0).simulate(square(), seed=4)
    off, on = integrate_frames(events, (24, 24, 2), T=1)[0]
    assert on.sum() > 200 and on.max() >= 5
    assert np.abs(on - off).max() <= 1 and (on == off).mean() > 0.9


def test_a_higher_contrast_threshold_fires_fewer_events():
    counts = [len(SaccadeEventSimulator(sensor_size=24, threshold=c).simulate(square(), seed=3))
              for c in (0.1, 0.2, 0.4)]
    assert counts[0] > 1.7 * counts[1] > 1.7 * 1.7 * counts[2]


def test_background_noise_adds_events_at_the_requested_rate():
    clean = SaccadeEventSimulator(sensor_size=24)
    noisy = SaccadeEventSimulator(sensor_size=24, noise_hz=20.0)
    extra = len(noisy.simulate(square(), seed=2)) - len(clean.simulate(square(), seed=2))
    expected = 20.0 * 24 * 24 * 0.3
    assert abs(extra - expected) < 5 * math.sqrt(expected)


# --- digits-dvs ----------------------------------------------------------------------------------------------

def digits_dvs_config(**data):
    return resolve_config(config_from_dict({
        "model": {"name": "spikformer_dvs_2_256", "embed_dim": 16, "depth": 1, "num_heads": 2, "img_size": 16,
                  "patch_size": 4, "T": 4},
        "data": {"name": "digits-dvs", "batch_size": 8, **data},
        "train": {"epochs": 1, "progress": False, "tensorboard": False, "amp": "off"},
    }))


def test_digits_dvs_gives_event_frames_of_the_bundled_digits():
    dataset = build_dataset(digits_dvs_config(train_fraction=0.02), "train")
    assert len(dataset) == 30 and dataset.num_classes == 10  # 2% of each class of the 1,437 training digits
    frames, label = dataset[0]
    assert frames.shape == (4, 2, 16, 16) and frames.dtype == torch.float32 and 0 <= label < 10
    events = dataset.recordings.read(0)
    np.testing.assert_array_equal(dataset.frames(0), integrate_frames(events, (16, 16, 2), 4))
    assert dataset.frames(0).sum() == len(events) > 0


def test_digits_dvs_is_the_same_on_every_build():
    a = build_dataset(digits_dvs_config(train_fraction=0.01), "train")
    b = build_dataset(digits_dvs_config(train_fraction=0.01), "train")
    assert a.recordings.keys == b.recordings.keys
    assert np.array_equal(a.frames(3), b.frames(3))


def test_digits_dvs_frames_can_be_cached_on_disk(tmp_path):
    dataset = build_dataset(digits_dvs_config(train_fraction=0.01, cache_dir=str(tmp_path)), "train")
    frames = dataset.frames(2)
    cached = list(tmp_path.glob("digits-dvs-*/train/*.npz"))
    assert len(cached) == 1 and np.array_equal(np.load(cached[0])["frames"], frames)


def test_the_digits_dvs_config_trains_the_dvs_variant_on_simulated_events():
    config = load_config("configs/digits_dvs.yaml")
    assert config.data.name == "digits-dvs" and config.model.name == "spikformer_dvs_2_256"
    assert config.model.in_chans is None  # the DVS variant's 2 polarity channels


def test_two_training_steps_on_digits_dvs(tmp_path):
    from spikformer.train import Trainer

    config = digits_dvs_config(train_fraction=0.012, event_drop=0.1, event_roll=1)
    config.train.out_dir = str(tmp_path / "run")
    trainer = Trainer(config)
    result = trainer.fit()
    assert trainer.position.step == 2 and math.isfinite(result["train_loss"]) and "val_top1" in result


@pytest.mark.parametrize("framing", ["count", "time"])
def test_digits_dvs_frames_hold_every_simulated_event(framing):
    dataset = build_dataset(digits_dvs_config(train_fraction=0.01, event_framing=framing), "val")
    assert dataset.frames(5).sum() == len(dataset.recordings.read(5))


def test_a_data_root_given_to_digits_dvs_is_refused_rather_than_ignored(tmp_path):
    from spikformer.errors import ConfigError

    with pytest.raises(ConfigError, match="data.name=digits-dvs is embedded and reads no files"):
        build_dataset(digits_dvs_config(root=str(tmp_path)), "train")
