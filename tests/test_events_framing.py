"""Integrating events into frames: every event counted once, in the right polarity, pixel and frame."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from event_writers import random_events
from hypothesis import given, settings
from hypothesis import strategies as st

from spikformer.data.event_dataset import EventAugment
from spikformer.data.event_frames import frame_boundaries, integrate_frames, resize_events
from spikformer.errors import DatasetError

SENSOR = (16, 12, 2)  # (W, H, P) as tonic writes sensor sizes


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 400), T=st.integers(1, 12), framing=st.sampled_from(["count", "time"]),
       seed=st.integers(0, 10_000))
def test_framing_counts_every_event_exactly_once(n, T, framing, seed):
    events = random_events(n, sensor=SENSOR[:2], duration_us=50_000, seed=seed)
    frames = integrate_frames(events, SENSOR, T, framing)
    assert frames.shape == (T, 2, 12, 16)
    assert frames.sum() == n
    # per polarity and per pixel too
    assert frames[:, 1].sum() == events["p"].sum()
    expected = np.zeros((12, 16), dtype=np.int64)
    np.add.at(expected, (events["y"], events["x"]), 1)
    np.testing.assert_array_equal(frames.sum(axis=(0, 1)), expected)


def test_polarity_channels_are_off_then_on():
    events = random_events(2, sensor=SENSOR[:2])
    events["x"], events["y"], events["p"] = [3, 5], [7, 2], [False, True]
    frames = integrate_frames(events, SENSOR, T=1)
    assert frames[0, 0, 7, 3] == 1 and frames[0, 1, 2, 5] == 1 and frames.sum() == 2


def test_count_framing_splits_events_equally_and_last_frame_keeps_the_remainder():
    bounds = frame_boundaries(np.arange(103), T=4, framing="count")
    np.testing.assert_array_equal(bounds, [0, 25, 50, 75, 103])


def test_time_framing_uses_equal_time_windows():
    times = np.array([0, 1, 2, 3, 10, 11, 30, 39, 40])  # windows of 10: [0,10) [10,20) [20,30) [30,40]
    np.testing.assert_array_equal(frame_boundaries(times, T=4, framing="time"), [0, 4, 6, 6, 9])


@pytest.mark.parametrize("framing, tonic_option", [("count", "n_event_bins"), ("time", "n_time_bins")])
def test_framing_equals_tonic_to_frame_except_for_the_events_tonic_drops(framing, tonic_option):
    from tonic.transforms import ToFrame

    events = random_events(1003, sensor=SENSOR[:2], seed=3)
    ours = integrate_frames(events, SENSOR, T=5, framing=framing)
    theirs = ToFrame(sensor_size=SENSOR, **{tonic_option: 5})(events.copy())
    np.testing.assert_array_equal(ours[:4], theirs[:4])
    assert (ours[4] >= theirs[4]).all()  # tonic leaves the remainder out of the last frame; we keep it
    assert ours.sum() == 1003 > theirs.sum()


def test_unsorted_events_are_framed_by_time():
    events = random_events(100, sensor=SENSOR[:2], seed=1)
    shuffled = events[np.random.default_rng(0).permutation(100)]
    np.testing.assert_array_equal(integrate_frames(shuffled, SENSOR, 4, "time"), integrate_frames(events, SENSOR, 4,
                                                                                                    "time"))


def test_a_recording_without_events_gives_empty_frames():
    frames = integrate_frames(random_events(0), SENSOR, T=3, framing="time")
    assert frames.shape == (3, 2, 12, 16) and frames.sum() == 0


def test_events_outside_the_sensor_are_an_error_naming_the_recording():
    events = random_events(10, sensor=(40, 40))
    with pytest.raises(DatasetError, match="rec_7.aedat4.*outside the 16x12 sensor"):
        integrate_frames(events, SENSOR, T=2, source="rec_7.aedat4")


def test_resizing_pools_sensor_pixels_and_keeps_every_event():
    events = random_events(500, sensor=(128, 128), seed=2)
    small = resize_events(events, (128, 128, 2), (32, 32))
    frames = integrate_frames(small, (32, 32, 2), T=2)
    assert frames.shape == (2, 2, 32, 32) and frames.sum() == 500
    np.testing.assert_array_equal(small["x"], events["x"] // 4)
    np.testing.assert_array_equal(small["y"], events["y"] // 4)


def test_resizing_refuses_to_enlarge():
    with pytest.raises(ValueError, match="at most 32x32"):
        resize_events(random_events(3, sensor=(32, 32)), (32, 32, 2), (64, 64))


# --- augmentation --------------------------------------------------------------------------------------------

def counts(seed=0):
    return torch.from_numpy(integrate_frames(random_events(300, sensor=SENSOR[:2], seed=seed), SENSOR, 3)).float()


def test_flip_mirrors_x_of_every_frame():
    frames = counts()
    np.testing.assert_array_equal(EventAugment(flip=1.0)(frames), frames.flip(-1))
    assert torch.equal(EventAugment(flip=0.0)(frames), frames)


def test_roll_shifts_all_frames_together_and_keeps_every_event():
    frames = counts()
    rolled = EventAugment(roll=3)(frames)
    assert rolled.sum() == frames.sum()
    shifts = [(dy, dx) for dy in range(-3, 4) for dx in range(-3, 4)
              if torch.equal(torch.roll(frames, (dy, dx), dims=(-2, -1)), rolled)]
    assert shifts


def test_event_drop_thins_counts_binomially():
    frames = counts() * 50  # many events per pixel, so the kept fraction is close to 1 - p
    dropped = EventAugment(drop=0.3)(frames)
    assert torch.equal(dropped, dropped.round()) and (dropped <= frames).all()
    assert abs(dropped.sum() / frames.sum() - 0.7) < 0.02
