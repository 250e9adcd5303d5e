"""Image pipelines and batch mixing, built from the ``data`` section with timm's implementations.

``image_transform`` is ``timm.data.create_transform``: for training a random-resized crop, horizontal flip,
RandAugment (``auto_augment``), normalisation and random erasing; for evaluation a resize to
``img_size / crop_pct`` and a centre crop. ``BatchMixing`` wraps ``timm.data.Mixup`` (mixup/cutmix with label
smoothing) as the trainer's batch transform and switches itself off from ``mixup_off_epoch``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from timm.data import Mixup, create_transform
from timm.data.mixup import mixup_target

from ..config import DataConfig
from ..errors import ConfigError

PIL_MODES = {1: "L", 3: "RGB"}


def pil_mode(in_chans: int, dataset: str) -> str:
    """The PIL mode images are converted to before the pipeline: ``L`` for 1 channel, ``RGB`` for 3."""
    if in_chans not in PIL_MODES:
        raise ConfigError(f"data.name={dataset} gives grey (1 channel) or RGB (3 channel) images, but the model "
                          f"takes {in_chans} channels; set model.in_chans to 1 or 3")
    return PIL_MODES[in_chans]


def channel_statistics(values: Sequence[float], in_chans: int) -> tuple[float, ...]:
    """Per-channel statistics for ``in_chans`` channels: RGB values averaged for a grey model."""
    if len(values) == in_chans:
        return tuple(values)
    if in_chans == 1:
        return (sum(values) / len(values),)
    raise ConfigError(f"have {len(values)} normalisation values for {in_chans} channels; set data.mean/data.std")


def image_transform(data: DataConfig, train: bool, img_size: int, in_chans: int,
                    mean: Sequence[float], std: Sequence[float], crop_pct: float) -> Callable:
    """The PIL image -> ``[C, img_size, img_size]`` tensor pipeline of ``data`` (timm's ``create_transform``).

    ``mean``/``std``/``crop_pct`` are the dataset's defaults; ``data.mean``/``data.std``/``data.crop_pct``
    override them. Images of any size are resized by the crop, so the dataset needs no fixed size.
    """
    mean = channel_statistics(data.mean if data.mean is not None else mean, in_chans)
    std = channel_statistics(data.std if data.std is not None else std, in_chans)
    if not train:
        return create_transform((in_chans, img_size, img_size), is_training=False, interpolation=data.interpolation,
                                mean=mean, std=std,
                                crop_pct=data.crop_pct if data.crop_pct is not None else crop_pct)
    return create_transform(
        (in_chans, img_size, img_size),
        is_training=True,
        scale=data.scale,
        ratio=data.ratio,
        hflip=data.hflip,
        color_jitter=data.color_jitter,
        auto_augment=data.auto_augment,
        interpolation=data.interpolation,
        mean=mean,
        std=std,
        re_prob=data.random_erasing,
        re_mode=data.random_erasing_mode,
        re_count=data.random_erasing_count,
    )


def mixing_enabled(data: DataConfig) -> bool:
    return data.mixup_alpha > 0 or data.cutmix_alpha > 0


class BatchMixing:
    """Mixup/cutmix of a training batch: ``(inputs [B, ...], labels [B]) -> (mixed inputs, soft targets
    [B, num_classes])``, targets label-smoothed. From ``off_epoch`` on, and for a batch of odd size (which
    mixing cannot pair), inputs pass unchanged and targets are only smoothed, so the same soft-target loss
    applies throughout. Event frames ``[B, T, C, H, W]`` are mixed with the same box at every step.
    """

    def __init__(self, data: DataConfig, num_classes: int, label_smoothing: float) -> None:
        self.mixup = Mixup(mixup_alpha=data.mixup_alpha, cutmix_alpha=data.cutmix_alpha, prob=data.mixup_prob,
                           switch_prob=data.mixup_switch_prob, mode=data.mixup_mode,
                           label_smoothing=label_smoothing, num_classes=num_classes)
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.off_epoch = data.mixup_off_epoch

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer at the start of every epoch (0-based)."""
        self.mixup.mixup_enabled = not (self.off_epoch and epoch >= self.off_epoch)

    @property
    def enabled(self) -> bool:
        return self.mixup.mixup_enabled

    def __call__(self, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.enabled or len(inputs) % 2:
            return inputs, mixup_target(labels, self.num_classes, lam=1.0, smoothing=self.label_smoothing)
        shape = inputs.shape
        flat = inputs.reshape(shape[0], -1, *shape[-2:]).clone()  # timm cuts boxes out of dims -2, -1
        mixed, targets = self.mixup(flat, labels)
        return mixed.reshape(shape), targets


def build_batch_mixing(data: DataConfig, num_classes: int, label_smoothing: float) -> BatchMixing | None:
    """``BatchMixing`` when the config turns mixup or cutmix on, else None."""
    return BatchMixing(data, num_classes, label_smoothing) if mixing_enabled(data) else None
