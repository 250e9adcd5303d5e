"""Image pipelines and batch transforms, built from the ``data`` section with timm's implementations.

``image_transform`` is ``timm.data.create_transform``: for training a random-resized crop, horizontal flip,
RandAugment (``auto_augment`` over ``rand_augment_ops``, see ``augment_ops``), normalisation and, with
``random_erasing_stage: sample``, random erasing; for evaluation a resize to ``img_size / crop_pct`` and a
centre crop. The trainer's batch transform is ``BatchMixing`` (``timm.data.Mixup``: mixup/cutmix with label
smoothing, off from ``mixup_off_epoch``) followed by ``BatchErasing`` (timm's ``RandomErasing`` on the
normalised, mixed batch, as timm's prefetch loader and the original recipes apply it), chained by
``BatchTransforms``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from timm.data import Mixup, create_transform
from timm.data.mixup import mixup_target
from timm.data.random_erasing import RandomErasing
from torchvision import transforms

from ..config import DataConfig
from ..errors import ConfigError
from .augment_ops import build_auto_augment

PIL_MODES = {1: "L", 3: "RGB"}


def pil_mode(in_chans: int, dataset: str) -> str:
    """The PIL mode images are converted to before the pipeline: ``L`` for 1 channel, ``RGB`` for 3."""
    if in_chans not in PIL_MODES:
        raise ConfigError(f"data.name={dataset} gives grey (1 channel) or RGB (3 channel) images, but the model "
                          f"takes {in_chans} channels; set model.in_chans to 1 or 3")
    return PIL_MODES[in_chans]


# PIL modes that hold colour (a palette may): converting them to grey loses it.
COLOUR_MODES = frozenset({"RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV", "P", "PA"})


def grey_conversion_note(dataset: str, example: str, mode: str) -> str:
    """The one line that says colour images are made grey for a 1-channel model."""
    return (f"data.name={dataset}: colour images (e.g. {example}, {mode}) are converted to grey for model.in_chans=1 "
            f"(PIL's luma); set model.in_chans=3 to train on the colours")


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
        # "random" draws a filter per training image (an augmentation); evaluation resizes with a fixed one
        interpolation = "bicubic" if data.interpolation == "random" else data.interpolation
        return create_transform((in_chans, img_size, img_size), is_training=False, interpolation=interpolation,
                                mean=mean, std=std,
                                crop_pct=data.crop_pct if data.crop_pct is not None else crop_pct)
    policy = data.auto_augment
    if data.rand_augment_ops is not None and not policy:
        raise ConfigError("data.rand_augment_ops is set but data.auto_augment is not; set a RandAugment policy such "
                          "as data.auto_augment=rand-m9-n1-mstd0.4-inc1, or remove data.rand_augment_ops")
    # timm switches colour jitter off under an automatic augmentation (except its '3a' policies). We insert the
    # augmentation ourselves (for the op list and posterize), so timm does not see it and we switch jitter off.
    jitter = data.color_jitter if not policy or "3a" in policy else None
    primary, secondary, final = create_transform(
        (in_chans, img_size, img_size),
        is_training=True,
        scale=data.scale,
        ratio=data.ratio,
        hflip=data.hflip,
        color_jitter=jitter,
        auto_augment=None,
        interpolation=data.interpolation,
        mean=mean,
        std=std,
        re_prob=data.random_erasing if data.random_erasing_stage == "sample" else 0.0,
        re_mode=data.random_erasing_mode,
        re_count=data.random_erasing_count,
        separate=True,
    )
    augment = [build_auto_augment(policy, img_size, mean, data.interpolation, data.rand_augment_ops)] if policy else []
    # The order of timm's create_transform: crop and flip, then the automatic augmentation, then the rest.
    return transforms.Compose([*primary.transforms, *augment, *secondary.transforms, *final.transforms])


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


class BatchErasing:
    """Random erasing of a normalised training batch: ``(inputs [B, C, H, W], targets) -> (erased copy,
    targets)``; each sample gets, with probability ``probability``, ``count`` boxes of 2-33% of its area, filled
    by ``mode`` (``const``: 0, the normalised mean). It is timm's ``RandomErasing`` as timm's prefetch loader
    applies it; placed after ``BatchMixing`` it erases the mixed images, as the original recipes did. Event
    frames ``[B, T, C, H, W]`` get one box per sample for all ``T`` steps.
    """

    def __init__(self, probability: float, mode: str = "const", count: int = 1) -> None:
        self.probability, self.mode, self.count = probability, mode, count
        self.erasing: dict[str, RandomErasing] = {}  # one per device: the boxes are filled on the batch's device

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        device = str(inputs.device)
        if device not in self.erasing:
            self.erasing[device] = RandomErasing(self.probability, mode=self.mode, max_count=self.count,
                                                 device=inputs.device)
        shape = inputs.shape
        erased = self.erasing[device](inputs.reshape(shape[0], -1, *shape[-2:]).clone())
        return erased.reshape(shape), targets


def build_batch_erasing(data: DataConfig) -> BatchErasing | None:
    """``BatchErasing`` when the config erases on the batch (``random_erasing_stage: batch``), else None."""
    if data.random_erasing <= 0 or data.random_erasing_stage != "batch":
        return None
    return BatchErasing(data.random_erasing, data.random_erasing_mode, data.random_erasing_count)


class BatchTransforms:
    """Batch transforms applied in order, each ``(inputs, targets) -> (inputs, targets)``; ``set_epoch`` is
    passed on to those that have it."""

    def __init__(self, steps: list[Callable]) -> None:
        self.steps = steps

    def set_epoch(self, epoch: int) -> None:
        for step in self.steps:
            if hasattr(step, "set_epoch"):
                step.set_epoch(epoch)

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for step in self.steps:
            inputs, targets = step(inputs, targets)
        return inputs, targets


def chain_batch_transforms(*steps: Callable | None) -> Callable | None:
    """The given batch transforms (Nones dropped) as one, in order: None, the only one, or ``BatchTransforms``."""
    kept = [step for step in steps if step is not None]
    if len(kept) <= 1:
        return kept[0] if kept else None
    return BatchTransforms(kept)

