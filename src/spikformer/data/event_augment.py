"""The original CIFAR10-DVS code's per-sample augmentation of event frames (its ``SNNAugmentWide``, SPEC §2).

Each call draws one op uniformly from ``OPS`` and applies it to all ``T`` frames of the sample alike:
identity, ShearX (up to 0.3 rad), TranslateX / TranslateY (up to 5 pixels at 128x128), Rotate (up to 30
degrees), or Cutout (one zero square of 0.1-11% of the area, torchvision's ``RandomErasing``). A magnitude is
one of 31 evenly spaced bins from minus to plus the op's maximum; nearest interpolation and zero fill keep the
frames integer event counts. The horizontal flip before it is ``EventAugment.flip``.

A geometric op is torchvision's ``affine``/``rotate`` with nearest interpolation, but run once on an image of
pixel numbers rather than on all ``T x C`` frames: the result says which source pixel each output pixel takes
(0: outside, filled with 0), and one gather moves the frames. The frames come out identical to torchvision's
(tested), several times faster than resampling all 32 frames of 128x128.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
from torchvision.transforms import InterpolationMode, RandomErasing
from torchvision.transforms import functional as F

OPS = ("identity", "shear_x", "translate_x", "translate_y", "rotate", "cutout")


@dataclass(frozen=True)
class EventAugmentWide:
    """``frames [T, C, H, W] -> frames`` with one random op of ``OPS`` (see the module docstring)."""

    translate: float = 5.0  # pixels at the frames' own size
    shear: float = 0.3  # radians
    rotate: float = 30.0  # degrees
    cutout_area: tuple[float, float] = (0.001, 0.11)  # fraction of H x W, square boxes
    bins: int = 31

    def maximum(self, op: str) -> float:
        return {"shear_x": self.shear, "translate_x": self.translate, "translate_y": self.translate,
                "rotate": self.rotate}.get(op, 0.0)

    def draw(self) -> tuple[str, float]:
        """One op and its signed magnitude, drawn as the original does (torch's RNG)."""
        op = OPS[int(torch.randint(len(OPS), ()))]
        if op in ("identity", "cutout"):
            return op, 0.0
        magnitudes = torch.linspace(-self.maximum(op), self.maximum(op), self.bins)
        magnitude = float(magnitudes[int(torch.randint(self.bins, ()))])
        if torch.randint(2, ()):
            magnitude = -magnitude
        return op, magnitude

    @staticmethod
    def geometric(image: torch.Tensor, op: str, magnitude: float) -> torch.Tensor:
        """torchvision's nearest-neighbour, zero-filled version of ``op`` on ``image [..., C, H, W]``."""
        nearest = InterpolationMode.NEAREST
        if op == "shear_x":
            return F.affine(image, angle=0.0, translate=[0, 0], scale=1.0, shear=[math.degrees(magnitude), 0.0],
                            interpolation=nearest, fill=0.0)
        if op in ("translate_x", "translate_y"):
            shift = [int(magnitude), 0] if op == "translate_x" else [0, int(magnitude)]  # whole pixels
            return F.affine(image, angle=0.0, translate=shift, scale=1.0, shear=[0.0, 0.0], interpolation=nearest,
                            fill=0.0)
        return F.rotate(image, magnitude, interpolation=nearest, fill=0.0)

    def apply(self, frames: torch.Tensor, op: str, magnitude: float) -> torch.Tensor:
        if op == "identity":
            return frames
        if op == "cutout":
            return RandomErasing(p=1.0, scale=self.cutout_area, ratio=(1.0, 1.0), value=0)(frames)
        H, W = frames.shape[-2:]
        source = source_pixels(op, magnitude, H, W)
        planes = frames.reshape(-1, H * W)  # every frame of every polarity
        moved = planes.index_select(1, (source - 1).clamp(min=0)) * (source > 0).to(frames.dtype)
        return moved.view(frames.shape)

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        return self.apply(frames, *self.draw())


@lru_cache(maxsize=1024)  # 31 magnitudes x 4 ops per input size
def source_pixels(op: str, magnitude: float, H: int, W: int) -> torch.Tensor:
    """``[H*W]``: 1 + the source pixel each output pixel of ``op`` takes, 0 where it falls outside the frame."""
    # Pixel numbers 1..H*W are exact in float32; nearest sampling moves them, zero fill marks "outside".
    numbers = torch.arange(1, H * W + 1, dtype=torch.float32).view(1, H, W)
    return EventAugmentWide.geometric(numbers, op, magnitude).flatten().long()
