"""Tiny datasets written in the real on-disk formats, for the tests of the static-image datasets and recipes.

CIFAR: the official "python version" pickles (dicts with the real keys, ``data`` as uint8 rows of 3072
pixels in R, G, B planes, written with pickle protocol 2 and byte-string keys as Python 2 left them).
ImageNet / folder trees: real JPEG (and PNG) files of mixed sizes and colour modes in ``train/<class>/`` and
``val/<class>/``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

WNIDS = ("n01440764", "n01443537", "n01484850")


def _dump(path: Path, obj: dict) -> None:
    with path.open("wb") as handle:
        pickle.dump(obj, handle, protocol=2)


def _batch(rng: np.random.Generator, count: int, label_key: bytes, num_classes: int, name: bytes) -> dict:
    labels = [int(i % num_classes) for i in rng.permutation(count)]
    # Learnable on purpose: the mean brightness of an image grows with its label.
    base = np.array(labels, dtype=np.float32)[:, None] * (200.0 / max(num_classes - 1, 1))
    noise = rng.standard_normal((count, 3072), dtype=np.float32)  # float32: a 50,000-image set in seconds
    noise *= 25
    noise += base
    data = np.clip(noise, 0, 255, out=noise).astype(np.uint8)
    return {b"batch_label": name, label_key: labels, b"data": data,
            b"filenames": [f"img_{i:05d}.png".encode() for i in range(count)]}


def write_cifar10(root: Path, per_batch: int = 4, test: int = 6, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py`` with ``data_batch_1..5``, ``test_batch`` and ``batches.meta``."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        _dump(folder / f"data_batch_{i}", _batch(rng, per_batch, b"labels", 10, f"training batch {i} of 5".encode()))
    _dump(folder / "test_batch", _batch(rng, test, b"labels", 10, b"testing batch 1 of 1"))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    _dump(folder / "batches.meta", {b"label_names": names, b"num_cases_per_batch": per_batch, b"num_vis": 3072})
    return folder


def write_cifar100(root: Path, train: int = 20, test: int = 6, seed: int = 0) -> Path:
    """``root/cifar-100-python`` with ``train``, ``test`` and ``meta`` (fine and coarse labels)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, count in (("train", train), ("test", test)):
        batch = _batch(rng, count, b"fine_labels", 100, name.encode())
        batch[b"coarse_labels"] = [label // 5 for label in batch[b"fine_labels"]]
        _dump(folder / name, batch)
    _dump(folder / "meta", {b"fine_label_names": [f"class{i}".encode() for i in range(100)],
                            b"coarse_label_names": [f"super{i}".encode() for i in range(20)]})
    return folder


def write_image_tree(root: Path, classes: tuple[str, ...] = WNIDS, train_per_class: int = 4, val_per_class: int = 2,
                     seed: int = 0, extension: str = ".JPEG", odd_modes: bool = True) -> Path:
    """``root/train/<class>/*`` and ``root/val/<class>/*``: JPEG files of different sizes; with ``odd_modes``
    some are stored grey (``L``) and CMYK, as a few ImageNet files are."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                height, width = int(rng.integers(20, 60)), int(rng.integers(20, 60))
                pixels = np.clip(40 + 70 * label + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8)
                image = Image.fromarray(pixels, "RGB")
                if odd_modes and i == 1:
                    image = image.convert("L")
                elif odd_modes and i == 2:
                    image = image.convert("CMYK")
                image.save(folder / f"{name}_{i:04d}{extension}", format="JPEG", quality=90)
    return root
