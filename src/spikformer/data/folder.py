"""Image trees with one folder per class: ImageNet-1k (``data.name: imagenet``) and any other (``folder``).

Layout under ``data.root``: ``train/<class>/<image>`` and ``val/<class>/<image>`` (``validation/`` or
``test/`` are accepted for ``val``). Classes are the sorted folder names of ``train/``, so the labels of both
splits agree; for ImageNet they must be WordNet IDs (``n01440764`` ...), which gives the standard label order.
Images are decoded with PIL and converted to the model's mode (grey or RGB), whatever they were stored as.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset

from ..errors import ConfigError, DatasetError
from .digits import take_fraction_per_class
from .registry import model_input, register_dataset
from .transforms import COLOUR_MODES, grey_conversion_note, image_transform, pil_mode

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "validation", "test")}
WNID = re.compile(r"^n\d{8}$")
LAYOUT = "data.root/train/<class>/*.JPEG and data.root/val/<class>/*.JPEG (one folder per class in each split)"


def split_folder(root: Path, split: str, name: str) -> Path:
    """``root/train`` or ``root/val`` (or its accepted aliases); a clear error when missing."""
    if not root.is_dir():
        raise DatasetError(f"data.root={root} does not exist or is not a folder; data.name={name} expects {LAYOUT}")
    for folder in SPLIT_FOLDERS[split]:
        if (root / folder).is_dir():
            return root / folder
    present = sorted(p.name for p in root.iterdir())[:8]
    raise DatasetError(f"data.root={root} has no {SPLIT_FOLDERS[split][0]}/ folder (it holds "
                       f"{', '.join(present) or 'nothing'}); data.name={name} expects {LAYOUT}")


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def class_folders(train_dir: Path, name: str) -> list[str]:
    """The sorted class folder names of the training split, checked."""
    classes = sorted(entry.name for entry in os.scandir(train_dir) if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        loose = [entry.name for entry in os.scandir(train_dir) if is_image(entry.name)]
        what = f"image files ({loose[0]} ...) directly" if loose else "no class folders"
        raise DatasetError(f"{train_dir} holds {what}; data.name={name} expects {LAYOUT}")
    if name == "imagenet":
        odd = [c for c in classes if not WNID.match(c)]
        if odd:
            raise DatasetError(f"{train_dir}: ImageNet class folders are WordNet IDs such as n01440764, but found "
                               f"{', '.join(odd[:3])}; for another image tree use data.name=folder")
    return classes


def scan_images(split_dir: Path, classes: list[str], name: str) -> list[tuple[str, int]]:
    """``(path, label)`` of every image under ``split_dir/<class>/``; every class folder of the split must be
    one of ``classes``."""
    index = {c: i for i, c in enumerate(classes)}
    samples: list[tuple[str, int]] = []
    loose, unknown = [], []
    for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            if is_image(entry.name):
                loose.append(entry.name)
            continue
        if entry.name not in index:
            unknown.append(entry.name)
            continue
        files = sorted(f.name for f in os.scandir(entry.path) if f.is_file() and is_image(f.name))
        samples.extend((os.path.join(entry.path, f), index[entry.name]) for f in files)
    if loose and not samples:
        hint = (" (ImageNet's val archive is flat: sort it into val/<wnid>/ folders with its ground-truth labels)"
                if name == "imagenet" else "")
        raise DatasetError(f"{split_dir} holds images directly ({loose[0]} ...) instead of one folder per class"
                           f"{hint}; data.name={name} expects {LAYOUT}")
    if unknown:
        raise DatasetError(f"{split_dir} has class folders that train/ lacks ({', '.join(unknown[:3])}); both "
                           f"splits must use the training split's classes")
    if not samples:
        raise DatasetError(f"{split_dir} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)} in its class "
                           f"folders); data.name={name} expects {LAYOUT}")
    return samples


SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def eight_bit_grey(image: Image.Image, path: str) -> Image.Image:
    """``image`` with its grey levels rescaled to 8 bits when it stores more: PIL's ``convert`` clips 16-bit
    levels at 255 (a ramp turns almost all white) and rounds floats to 0 or 1. 16-bit and 32-bit integer images
    span 0-65535, floating-point images 0-1; values outside that range are refused rather than clipped."""
    if image.mode not in (*SIXTEEN_BIT_MODES, "F"):
        return image
    values = np.asarray(image, dtype=np.float64)
    top = 1.0 if image.mode == "F" else 65535.0
    if values.size and not (np.isfinite(values).all() and values.min() >= 0 and values.max() <= top):
        kind = "a floating-point image with values outside [0, 1]" if image.mode == "F" else \
            f"a {image.mode} integer image with values outside [0, 65535]"
        raise DatasetError(f"{path}: {kind} (min {values.min():g}, max {values.max():g}); store it in that range "
                           f"or as 8-bit")
    return Image.fromarray(np.round(values * (255.0 / top)).astype(np.uint8), "L")


class ImageFolderDataset(Dataset):
    """``(transform(PIL image in ``mode``), label)`` for each image of a folder-per-class split."""

    name = "folder"  # the data.name it was built for, named in messages

    def __init__(self, samples: list[tuple[str, int]], classes: list[str], transform=None, mode: str = "RGB") -> None:
        self.samples = samples
        self.classes = classes
        self.num_classes = len(classes)
        self.transform = transform
        self.mode = mode

    @property
    def labels(self) -> np.ndarray:
        return np.array([label for _, label in self.samples], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def input_conversion(self, looked_at: int = 32) -> str | None:
        """One line when colour images are made grey for a 1-channel model, else None. Reads the headers (not
        the pixels) of up to ``looked_at`` images spread over the split."""
        if self.mode != "L" or not self.samples:
            return None
        step = max(1, len(self.samples) // looked_at)
        for path, _ in self.samples[::step][:looked_at]:
            try:
                with Image.open(path) as image:
                    mode = image.mode
            except Exception:  # noqa: BLE001 - an unreadable file is reported when it is loaded
                continue
            if mode in COLOUR_MODES:
                return grey_conversion_note(self.name, path, mode)
        return None

    def load(self, path: str) -> Image.Image:
        try:
            with Image.open(path) as image:
                # grey, RGBA, CMYK, palette -> the model's mode
                return eight_bit_grey(image, path).convert(self.mode)
        except DatasetError:
            raise
        except Image.DecompressionBombError as error:
            raise DatasetError(f"refused image {path}: {str(error).split('. ')[0]}, beyond PIL's decompression-bomb "
                               f"limit (a corrupt or hostile file); remove or replace it") from None
        except (UnidentifiedImageError, OSError) as error:
            raise DatasetError(f"cannot read image {path} ({error}); remove or replace the file") from None
        except Exception as error:  # noqa: BLE001 - PIL's decoders fail on hostile bytes with many exception types
            detail = str(error).splitlines()[0][:200] if str(error) else ""
            raise DatasetError(f"cannot read image {path} ({type(error).__name__} {detail}".rstrip() +
                               "); remove or replace the file") from None

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        image = self.load(path)
        return (self.transform(image) if self.transform else image), label


def build_image_folder(config, split: str, name: str) -> ImageFolderDataset:
    data = config.data
    if data.root is None:
        raise ConfigError(f"data.name={name} needs data.root, the folder holding {LAYOUT}")
    if data.download:
        raise ConfigError(f"data.name={name} cannot be downloaded automatically (ImageNet's licence requires a "
                          f"manual download from image-net.org); set data.download=false and data.root")
    root = Path(data.root).expanduser()
    classes = class_folders(split_folder(root, "train", name), name)
    samples = scan_images(split_folder(root, split, name), classes, name)
    train = split == "train"
    if train and data.train_fraction < 1.0:
        labels = np.array([label for _, label in samples])
        samples = [samples[i] for i in take_fraction_per_class(labels, data.train_fraction)]
    model = model_input(config)
    transform = image_transform(data, train, model["img_size"], model["in_chans"], IMAGENET_DEFAULT_MEAN,
                                IMAGENET_DEFAULT_STD, crop_pct=0.875)
    dataset = ImageFolderDataset(samples, classes, transform, pil_mode(model["in_chans"], name))
    dataset.name = name
    return dataset


@register_dataset("imagenet")
def build_imagenet(config, split: str) -> ImageFolderDataset:
    return build_image_folder(config, split, "imagenet")


@register_dataset("folder")
def build_folder(config, split: str) -> ImageFolderDataset:
    return build_image_folder(config, split, "folder")
