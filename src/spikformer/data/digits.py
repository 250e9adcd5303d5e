"""The embedded default: scikit-learn's 1,797 real handwritten digits (8x8, 16 grey levels), no download.

Images are upsampled (bilinear) to the model's input size once and kept in memory. The train/val split is
fixed (80/20, stratified, ``random_state=0``): 1,437 training and 360 test images.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import ConfigError
from .registry import model_input, register_dataset

DIGITS_MEAN, DIGITS_STD = 0.3, 0.32  # of the upsampled [0, 1] pixels of the training split, rounded
SPLIT_SEED = 0


def digits_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The fixed split as ``(images [N, 8, 8] in [0, 1], labels [N])``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.images, digits.target, test_size=0.2, stratify=digits.target, random_state=SPLIT_SEED
    )
    images, labels = (x_train, y_train) if split == "train" else (x_test, y_test)
    return (images / 16.0).astype(np.float32), labels.astype(np.int64)


def take_fraction_per_class(labels: np.ndarray, fraction: float, seed: int = SPLIT_SEED) -> np.ndarray:
    """Indices of a fixed ``fraction`` of each class (at least one per class)."""
    rng = np.random.default_rng(seed)
    keep = []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        count = max(1, int(round(len(idx) * fraction)))
        keep.append(np.sort(rng.choice(idx, count, replace=False)))
    return np.sort(np.concatenate(keep))


class DigitsDataset(Dataset):
    """``(image [C, S, S], label)``; training images are randomly shifted by up to ``shift`` pixels."""

    num_classes = 10
    classes = [str(digit) for digit in range(10)]

    def __init__(self, split: str, img_size: int = 32, in_chans: int = 1, shift: int = 0,
                 train_fraction: float = 1.0) -> None:
        images, labels = digits_split(split)
        if train_fraction < 1.0:
            keep = take_fraction_per_class(labels, train_fraction)
            images, labels = images[keep], labels[keep]
        x = torch.from_numpy(images).unsqueeze(1)  # [N, 1, 8, 8]
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
        x = ((x - DIGITS_MEAN) / DIGITS_STD).expand(-1, in_chans, -1, -1)
        self.images = x.contiguous()
        self.labels = torch.from_numpy(labels)
        self.shift = shift
        self.background = (0.0 - DIGITS_MEAN) / DIGITS_STD

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.shift:
            dy, dx = torch.randint(-self.shift, self.shift + 1, (2,)).tolist()
            image = shift_image(image, dy, dx, self.background)
        return image, int(self.labels[index])


def shift_image(image: torch.Tensor, dy: int, dx: int, fill: float) -> torch.Tensor:
    """Translate ``[C, H, W]`` by whole pixels, filling the uncovered border with ``fill``."""
    if dy == 0 and dx == 0:
        return image
    out = torch.full_like(image, fill)
    H, W = image.shape[-2:]
    out[:, max(dy, 0):H + min(dy, 0), max(dx, 0):W + min(dx, 0)] = \
        image[:, max(-dy, 0):H + min(-dy, 0), max(-dx, 0):W + min(-dx, 0)]
    return out


@register_dataset("digits")
def build_digits(config, split: str) -> DigitsDataset:
    if config.data.root is not None:
        # A root given with the default data.name most likely meant another dataset: say so rather than
        # silently train on the digits.
        raise ConfigError(f"data.root={config.data.root!r} is set, but data.name=digits is embedded and reads no "
                          f"files; set data.name to the dataset stored there, or remove data.root")
    model = model_input(config)
    train = split == "train"
    return DigitsDataset(
        split,
        img_size=model["img_size"],
        in_chans=model["in_chans"],
        shift=config.data.shift if train else 0,
        train_fraction=config.data.train_fraction if train else 1.0,
    )
