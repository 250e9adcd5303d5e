"""Event streams -> frames: integrate the events of one recording into ``T`` frames of 2 polarities.

Events are numpy structured arrays with fields ``x``, ``y``, ``t``, ``p`` (tonic's convention, any field order);
a sensor is ``(W, H, P)`` like tonic's ``sensor_size``. Frames are event counts ``[T, 2, H, W]``, channel 0 OFF
(``p`` false or <= 0), channel 1 ON.

The slicing is tonic's ``ToFrame(n_event_bins=T)`` / ``ToFrame(n_time_bins=T)`` with one change: tonic drops the
events that do not fill a whole bin (up to ``T - 1`` events by count, the tail after the last full window by
time); here the last frame keeps them, which is SpikingJelly's rule (the original Spikformer code framed with
SpikingJelly). So every event of a recording lands in exactly one frame, and frames ``0 .. T-2`` equal tonic's.
"""

from __future__ import annotations

import numpy as np

from ..errors import DatasetError

FRAMINGS = ("count", "time")


def frame_boundaries(times: np.ndarray, T: int, framing: str) -> np.ndarray:
    """Indices ``[T + 1]`` that cut time-sorted events into ``T`` consecutive frames (first 0, last ``len``).

    ``"count"``: ``n // T`` events per frame; ``"time"``: windows of ``(t_last - t_first) // T``; in both the
    last frame also takes the remainder.
    """
    n = len(times)
    if framing not in FRAMINGS:
        raise ValueError(f"unknown framing {framing!r}; use one of {', '.join(FRAMINGS)}")
    if n == 0:
        return np.zeros(T + 1, dtype=np.int64)
    if framing == "count":
        starts = np.arange(T, dtype=np.int64) * (n // T)
    else:
        t = times.astype(np.int64)
        window = (t[-1] - t[0]) // T
        starts = np.searchsorted(t, t[0] + np.arange(T, dtype=np.int64) * window, side="left")
    return np.concatenate([starts, [n]]).astype(np.int64)


def integrate_frames(events: np.ndarray, sensor_size: tuple[int, int, int], T: int, framing: str = "count",
                     source: str = "events") -> np.ndarray:
    """Count the events of one recording into frames ``[T, 2, H, W]`` (int32); every event is counted once.

    ``source`` names the recording in errors (a file path, usually).
    """
    W, H = int(sensor_size[0]), int(sensor_size[1])
    frames = np.zeros((T, 2, H, W), dtype=np.int32)
    if len(events) == 0:
        return frames
    check_events(events, sensor_size, source)
    times = events["t"]
    if np.any(times[1:] < times[:-1]):
        events = events[np.argsort(times, kind="stable")]
        times = events["t"]
    bounds = frame_boundaries(times, T, framing)
    frame_of_event = np.repeat(np.arange(T, dtype=np.int64), np.diff(bounds))
    polarity = (events["p"].astype(np.int64) > 0).astype(np.int64)
    flat = ((frame_of_event * 2 + polarity) * H + events["y"].astype(np.int64)) * W + events["x"].astype(np.int64)
    frames.reshape(-1)[:] = np.bincount(flat, minlength=frames.size)
    return frames


def check_events(events: np.ndarray, sensor_size: tuple[int, int, int], source: str) -> None:
    """Raise ``DatasetError`` naming ``source`` when events lack a field or fall outside the sensor."""
    missing = [name for name in ("x", "y", "t", "p") if events.dtype.names is None or name not in events.dtype.names]
    if missing:
        raise DatasetError(f"{source}: events lack the field(s) {', '.join(missing)} (expected a structured array "
                           f"with x, y, t, p)")
    check_timestamps(events["t"], source)
    W, H = int(sensor_size[0]), int(sensor_size[1])
    x, y = events["x"].astype(np.int64), events["y"].astype(np.int64)
    if x.min() < 0 or y.min() < 0 or x.max() >= W or y.max() >= H:
        raise DatasetError(
            f"{source}: event coordinates x in [{x.min()}, {x.max()}], y in [{y.min()}, {y.max()}] fall outside "
            f"the {W}x{H} sensor of this dataset; the file is corrupt or belongs to another dataset"
        )


INT64_RANGE = (-(2**63), 2**63 - 1)


def check_timestamps(times: np.ndarray, source: str, scale: int = 1) -> None:
    """Raise ``DatasetError`` unless ``times * scale`` are numbers whose values and span fit int64, the type
    framing computes in (a cast or multiplication beyond it wraps silently and moves events to wrong frames)."""
    if times.dtype.kind not in "iuf" or (times.dtype.kind == "f" and not np.isfinite(times).all()):
        raise DatasetError(f"{source}: timestamps of type {times.dtype} (or NaN/infinite) do not fit the int64 "
                           f"microseconds of an event stream; the file is corrupt")
    if not len(times):
        return
    # Python integers: exact, and they cannot overflow while checking
    low, high = int(times.min()) * scale, int(times.max()) * scale
    if low < INT64_RANGE[0] or high > INT64_RANGE[1] or high - low > INT64_RANGE[1]:
        raise DatasetError(f"{source}: timestamps from {low} to {high} microseconds do not fit int64; the file is "
                           f"corrupt")


def resize_events(events: np.ndarray, sensor_size: tuple[int, int, int], size: tuple[int, int]) -> np.ndarray:
    """Map events of a ``(W, H, P)`` sensor onto a smaller ``size = (H', W')`` grid with tonic's ``Downsample``
    (coordinates scaled and floored: several sensor pixels pool into one, no event is lost)."""
    from tonic.transforms import Downsample

    W, H = int(sensor_size[0]), int(sensor_size[1])
    out_h, out_w = size
    if (out_h, out_w) == (H, W):
        return events
    if out_h > H or out_w > W:
        raise ValueError(f"cannot enlarge events of a {W}x{H} sensor to {out_w}x{out_h}; use an input size "
                         f"of at most {W}x{H}")
    return Downsample(spatial_factor=(out_w / W, out_h / H))(events)
