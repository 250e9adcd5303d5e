"""Spikformer V2's Spiking Convolutional Stem (SCS): V1's patch splitting with supplementary conv layers.

The V2 paper says only that the SCS adds "supplementary convolutional layers" to the stem; its layout is ours
to choose (see ``docs/v2.md``). The SCS here is a sequence of stages, each ``depth`` units of
``Conv -> BN -> LIF`` at one width; the last ``log2(patch_size)`` stages halve the resolution (by a max-pool
after their first unit, as V1 does, or by a stride-2 first conv), then a relative position embedding
(``x + RPE(x)``) as in V1. With one unit per stage and V1's widths it *is* V1's SPS, key for key.

Every unit is a ``SpikingConvStage`` kept in one flat ``stages`` list, so the masked pre-training path
(``spikformer.ssl.masking``) walks an SCS exactly as it walks V1's SPS.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .layers import SpikingConvStage, register_stem
from .registry import did_you_mean

DOWNSAMPLE_MODES = ("maxpool", "stride")


@dataclass(frozen=True)
class SCSOptions:
    """The layout of a Spiking Convolutional Stem (``stem_options`` of a model with ``stem="scs"``).

    ``widths[i]``: channels of stage ``i`` as a fraction of ``embed_dim`` (the last must be 1.0).
    ``depths[i]``: ``Conv -> BN -> LIF`` units in stage ``i`` (V1's SPS: all 1). The first unit maps the
    previous width to this stage's width; the others keep it.
    ``kernel_size``: of every conv. ``downsample``: ``"maxpool"`` (``MaxPool2d(3, 2, 1)`` after the first
    unit's LIF, as V1) or ``"stride"`` (the first unit's conv has stride 2). The last ``log2(patch_size)``
    stages down-sample. ``rpe``: add V1's relative position embedding ``x + LIF(BN(Conv(x)))``.

    Default: V1's widths ``D/8, D/4, D/2, D`` with a second unit in each of the first three stages, after the
    down-sampling (``docs/v2.md`` explains the choice).
    """

    widths: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0)
    depths: tuple[int, ...] = (2, 2, 2, 1)
    kernel_size: int = 3
    downsample: str = "maxpool"
    rpe: bool = True

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> SCSOptions:
        """Validate a ``stem_options`` mapping (YAML lists become tuples); unknown keys name the valid ones."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [key for key in options if key not in names]
        if unknown:
            hints = ", ".join(f"{key!r}{did_you_mean(key, names)}" for key in unknown)
            raise ValueError(f"unknown SCS stem option {hints}; options: {', '.join(names)}")
        values = dict(options)
        for key in ("widths", "depths"):
            if key in values:
                if not isinstance(values[key], list | tuple):
                    raise ValueError(f"SCS {key} must be a list with one entry per stage, got {values[key]!r}")
                values[key] = tuple(values[key])
        return cls(**values)

    def stage_widths(self, embed_dim: int) -> list[int]:
        return [round(w * embed_dim) for w in self.widths]

    def check(self, embed_dim: int, patch_size: int) -> None:
        """Raise ``ValueError`` naming the problem if this layout cannot build a stem for these sizes."""
        problems = []
        if len(self.widths) != len(self.depths) or not self.widths:
            problems.append(f"widths {list(self.widths)} and depths {list(self.depths)} must have one entry per "
                            f"stage (same non-zero length)")
        if any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in self.depths):
            problems.append(f"depths must be integers >= 1, got {list(self.depths)}")
        if any(isinstance(w, bool) or not isinstance(w, int | float) or w <= 0 for w in self.widths):
            problems.append(f"widths must be positive fractions of embed_dim, got {list(self.widths)}")
        elif self.widths and self.widths[-1] != 1:
            problems.append(f"the last width must be 1.0 (the stem ends at embed_dim), got {self.widths[-1]}")
        else:
            uneven = [w for w in self.widths if abs(w * embed_dim - round(w * embed_dim)) > 1e-6]
            if uneven:
                problems.append(f"widths {uneven} x embed_dim {embed_dim} are not whole channel counts")
        if isinstance(self.kernel_size, bool) or not isinstance(self.kernel_size, int) or self.kernel_size < 1 \
                or self.kernel_size % 2 == 0:
            problems.append(f"kernel_size must be an odd integer >= 1 (same padding), got {self.kernel_size!r}")
        if self.downsample not in DOWNSAMPLE_MODES:
            problems.append(f"downsample must be one of {', '.join(DOWNSAMPLE_MODES)}, got {self.downsample!r}")
        if not isinstance(self.rpe, bool):
            problems.append(f"rpe must be true or false, got {self.rpe!r}")
        num_down = math.log2(patch_size) if patch_size > 0 else -1
        if num_down != int(num_down) or num_down < 0:
            problems.append(f"patch_size must be a power of two, got {patch_size}")
        elif int(num_down) > len(self.depths):
            problems.append(f"patch_size {patch_size} needs {int(num_down)} down-sampling stages but the layout "
                            f"has {len(self.depths)}; add stages (widths/depths entries)")
        if problems:
            raise ValueError("invalid SCS layout: " + "; ".join(problems))


class SpikingConvolutionalStem(nn.Module):
    """SCS: ``[T, B, C, H, W] -> [T, B, N, D]`` with ``N = (H/patch) * (W/patch)``, the same grid as V1's SPS.

    ``stages`` holds every ``Conv -> BN -> LIF`` unit in order (flattened over the layout's stages);
    ``rpe`` is V1's relative position embedding (or absent when ``options.rpe`` is false).
    """

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, lif_backend: str = "auto",
                 options: SCSOptions | None = None) -> None:
        super().__init__()
        options = options or SCSOptions()
        options.check(embed_dim, patch_size)
        self.options = options
        self.patch_size = patch_size
        num_down = int(math.log2(patch_size))
        first_down = len(options.depths) - num_down
        units: list[SpikingConvStage] = []
        chans = in_chans
        for index, (width, depth) in enumerate(zip(options.stage_widths(embed_dim), options.depths)):
            down = index >= first_down
            for unit in range(depth):
                first = unit == 0
                units.append(SpikingConvStage(
                    chans, width, options.kernel_size,
                    stride=2 if first and down and options.downsample == "stride" else 1,
                    pool=first and down and options.downsample == "maxpool",
                    lif_backend=lif_backend,
                ))
                chans = width
        self.stages = nn.ModuleList(units)
        self.rpe = SpikingConvStage(embed_dim, embed_dim, lif_backend=lif_backend) if options.rpe else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        if self.rpe is not None:
            x = x + self.rpe(x)  # integer-valued, 0..2
        return x.flatten(3).transpose(-1, -2)  # [T, B, N, D]


@register_stem("scs")
def build_scs(in_chans: int, embed_dim: int, patch_size: int, lif_backend: str = "auto", **options: Any
              ) -> SpikingConvolutionalStem:
    """The ``"scs"`` stem from ``stem_options`` (keys of ``SCSOptions``)."""
    return SpikingConvolutionalStem(in_chans, embed_dim, patch_size, lif_backend, SCSOptions.from_dict(options))
