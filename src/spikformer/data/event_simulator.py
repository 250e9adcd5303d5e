"""An event camera looking at a still image that moves in three small saccades, the way N-MNIST was recorded.

N-MNIST (Orchard et al. 2015) put MNIST digits on a monitor and moved a DVS through three saccades tracing a
triangle. We do the same in simulation: the image slides along a triangle (jittered per recording), and each
pixel of the sensor behaves like a DVS pixel — it remembers the log intensity at its last event and emits an
ON (OFF) event each time the log intensity rises (falls) by its contrast threshold, timestamped where the
crossing happens between two samples of the motion (linear interpolation). Thresholds vary a little from pixel
to pixel, as in real sensors. The result is a structured array in tonic's dtype (x, y, t in microseconds, p),
time-sorted, and the same ``seed`` always gives the same events.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

EVENT_DTYPE = np.dtype([("x", np.int16), ("y", np.int16), ("t", np.int64), ("p", bool)])  # tonic's events_struct


@dataclass(frozen=True)
class SaccadeEventSimulator:
    """A ``sensor_size x sensor_size`` event camera; ``simulate(image, seed)`` gives the events of one recording.

    The image (intensities in [0, 1], any size) is resized to ``image_fraction`` of the sensor and centred on a
    black background, then moved along a triangle of side ``amplitude * sensor_size`` pixels in three saccades of
    ``saccade_ms`` each, sampled every ``1 / steps_per_pixel`` pixel of motion.
    """

    sensor_size: int = 32
    image_fraction: float = 0.75
    amplitude: float = 0.125
    vertex_jitter: float = 0.25  # each triangle corner moves by up to this fraction of the amplitude
    saccade_ms: float = 100.0
    steps_per_pixel: int = 4
    threshold: float = 0.25  # contrast threshold, in natural-log intensity
    threshold_spread: float = 0.03  # relative per-pixel spread of the threshold (sensor mismatch)
    log_eps: float = 0.1  # log(I + eps): keeps black pixels finite, like a photoreceptor's dark current
    noise_hz: float = 0.0  # background events per pixel per second (uniform in space, time, polarity)

    def params(self) -> dict:
        return asdict(self)

    def saccade_path(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``(times_us [K], offsets [K, 2])``: where the image is (dx, dy in pixels) at each sample time."""
        a = self.amplitude * self.sensor_size
        corners = np.array([[-a / 2, a / 2], [0.0, -a / 2], [a / 2, a / 2]])  # up-right, down-right, left
        corners = corners + rng.uniform(-1, 1, size=corners.shape) * self.vertex_jitter * a
        times, offsets = [np.zeros(1)], [corners[:1]]
        for leg in range(3):
            start, end = corners[leg], corners[(leg + 1) % 3]
            steps = max(2, math.ceil(np.linalg.norm(end - start) * self.steps_per_pixel))
            fraction = np.arange(1, steps + 1) / steps
            times.append((leg + fraction) * self.saccade_ms * 1000.0)
            offsets.append(start + fraction[:, None] * (end - start))
        return np.concatenate(times), np.concatenate(offsets)

    def render(self, image: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Intensities ``[K, S, S]`` seen by the sensor with the image shifted by each offset (bilinear)."""
        S = self.sensor_size
        size = max(1, round(S * self.image_fraction))
        x = torch.as_tensor(np.asarray(image, dtype=np.float32))[None, None]
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
        canvas = torch.zeros(1, 1, S, S)
        top = (S - size) // 2
        canvas[..., top:top + size, top:top + size] = x
        # Sampling grid in grid_sample's [-1, 1] coordinates; moving the image by +d reads the canvas at -d.
        coords = (torch.arange(S, dtype=torch.float32) + 0.5) / S * 2 - 1
        gy, gx = torch.meshgrid(coords, coords, indexing="ij")
        shift = torch.as_tensor(offsets, dtype=torch.float32) * (2.0 / S)  # [K, 2] as (dx, dy)
        grid = torch.stack([gx[None] - shift[:, 0, None, None], gy[None] - shift[:, 1, None, None]], dim=-1)
        frames = F.grid_sample(canvas.expand(len(offsets), -1, -1, -1), grid, mode="bilinear",
                               padding_mode="zeros", align_corners=False)
        return frames[:, 0].numpy().astype(np.float64)

    def simulate(self, image: np.ndarray, seed: int | tuple[int, ...] = 0) -> np.ndarray:
        """The events of one recording of ``image`` ([h, w] in [0, 1]), time-sorted, in tonic's dtype."""
        rng = np.random.default_rng(seed)
        S = self.sensor_size
        times, offsets = self.saccade_path(rng)
        log_i = np.log(self.render(image, offsets) + self.log_eps)  # [K, S, S]
        spread = 1.0 + self.threshold_spread * rng.standard_normal((2, S, S))
        c_on, c_off = self.threshold * np.clip(spread, 0.5, None)  # per-pixel thresholds [S, S]
        flat = log_i.reshape(len(times), S * S)
        reference = flat[0].copy()
        # Per step, pixels whose log intensity moved by whole thresholds since their last event; the events
        # themselves are expanded after the loop, which only carries each pixel's reference level forward.
        steps, pixels, crossings, levels, thresholds = [], [], [], [], []
        for k in range(1, len(times)):
            change = flat[k] - reference
            threshold = np.where(change >= 0, c_on.reshape(-1), c_off.reshape(-1))
            moved = np.trunc(change / threshold)  # signed number of threshold crossings
            where = np.flatnonzero(moved)
            if len(where) == 0:
                continue
            steps.append(np.full(len(where), k))
            pixels.append(where)
            crossings.append(moved[where].astype(np.int64))
            levels.append(reference[where])
            thresholds.append(threshold[where])
            reference[where] += moved[where] * threshold[where]
        chunks = []
        if pixels:
            step, pixel, moved, level, threshold = (np.concatenate(a) for a in
                                                    (steps, pixels, crossings, levels, thresholds))
            count = np.abs(moved)
            nth = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count) + 1  # 1..count per pixel
            step, pixel, sign, level, threshold = (np.repeat(a, count) for a in
                                                   (step, pixel, np.sign(moved), level, threshold))
            crossing = level + sign * nth * threshold  # the log intensity at which each event fires
            before, after = flat[step - 1, pixel], flat[step, pixel]
            fraction = np.clip((crossing - before) / (after - before), 0.0, 1.0)
            t = times[step - 1] + fraction * (times[step] - times[step - 1])
            chunks.append((pixel % S, pixel // S, t, sign > 0))
        if self.noise_hz > 0:
            n = rng.poisson(self.noise_hz * S * S * times[-1] / 1e6)
            chunks.append((rng.integers(0, S, n), rng.integers(0, S, n), rng.uniform(0, times[-1], n),
                           rng.integers(0, 2, n).astype(bool)))
        return _events(chunks)


def _events(chunks: list[tuple[np.ndarray, ...]]) -> np.ndarray:
    if not chunks:
        return np.zeros(0, dtype=EVENT_DTYPE)
    x, y, t, p = (np.concatenate(part) for part in zip(*chunks))
    events = np.empty(len(x), dtype=EVENT_DTYPE)
    events["x"], events["y"], events["t"], events["p"] = x, y, np.round(t).astype(np.int64), p
    return events[np.argsort(events["t"], kind="stable")]
