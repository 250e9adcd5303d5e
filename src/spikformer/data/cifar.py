"""CIFAR-10 and CIFAR-100 from the official "python version" archives (``data.name: cifar10 | cifar100``).

``data.root`` is the extracted folder (``cifar-10-batches-py`` / ``cifar-100-python``) or the folder holding
it. The pickles are read with an unpickler that only builds NumPy arrays, so a tampered file cannot run code.
``data.download: true`` fetches the archive with torchvision when it is not there yet.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import ConfigError, DatasetError
from .digits import take_fraction_per_class
from .registry import model_input, register_dataset
from .transforms import grey_conversion_note, image_transform, pil_mode

# The original CIFAR recipe normalises both CIFAR-10 and CIFAR-100 with CIFAR-10's statistics (SPEC §2).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGE_SHAPE = (3, 32, 32)  # each row of ``data`` is 1024 red, then 1024 green, then 1024 blue bytes


@dataclass(frozen=True)
class CifarLayout:
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    num_classes: int
    torchvision_class: str

    def describe(self) -> str:
        files = ", ".join((*self.train_files, *self.test_files, self.meta_file))
        return f"{self.folder}/ with the pickles {files} (the 'python version' from https://www.cs.toronto.edu/~kriz/cifar.html)"


LAYOUTS = {
    "cifar10": CifarLayout("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                           "batches.meta", "labels", "label_names", 10, "CIFAR10"),
    "cifar100": CifarLayout("cifar-100-python", ("train",), ("test",), "meta", "fine_labels", "fine_label_names", 100,
                            "CIFAR100"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Builds dicts, lists, strings and NumPy arrays, and refuses every other global."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module == "numpy.core.multiarray":  # the name NumPy 1.x wrote; NumPy 2 keeps it as numpy._core
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        found = super().find_class(module, name)
        if name == "_reconstruct":
            return _bounded_reconstruct(found)
        return _dtype_without_objects if name == "dtype" else found


def _bounded_reconstruct(reconstruct):
    """NumPy's ``_reconstruct(cls, shape, dtype)`` allocates the shape it is given, uninitialised: NumPy's own
    pickles pass the empty shape ``(0,)`` and then set the real shape together with its bytes (which the file
    must hold). A declared shape with elements (terabytes, a sub-array dtype multiplying it, or 10,000 images
    never filled) is refused before anything is allocated."""

    def checked(cls, shape, dtype):
        dims = list(shape) if isinstance(shape, tuple | list) else [shape]
        if not all(isinstance(d, int) and d >= 0 for d in dims) or np.prod(dims, dtype=object) != 0:
            raise pickle.UnpicklingError(f"an array declares the shape {str(shape)[:60]} without the data to fill "
                                         f"it")
        return reconstruct(cls, shape, dtype)

    return checked


def _dtype_without_objects(*args: Any) -> np.dtype:
    """``numpy.dtype(...)`` for the dtypes of plain data; an object dtype would make NumPy unpickle a list of
    Python objects into the array (a short list for a long shape crashes the interpreter)."""
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError("an array of Python objects, where CIFAR stores numbers")
    return dtype


def read_pickle(path: Path) -> dict[str, Any]:
    """One CIFAR pickle as a dict with ``str`` keys (the files were written by Python 2; latin-1 keeps their
    byte strings and NumPy buffers intact)."""
    try:
        with path.open("rb") as handle:
            obj = _ArrayUnpickler(handle, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError,
            KeyError, MemoryError, OverflowError, RecursionError, UnicodeDecodeError) as error:
        detail = str(error).splitlines()[0][:200] if str(error) else ""
        raise DatasetError(f"{path} is not a CIFAR pickle ({type(error).__name__}: {detail}); re-extract the "
                           f"'python version' archive") from None
    except OSError as error:
        raise DatasetError(f"cannot read {path}: {error.strerror or error}") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{path} holds a {type(obj).__name__}, not the dict of a CIFAR pickle")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def class_numbers(values: Any, path: Path, key: str) -> np.ndarray:
    """``values`` as an int64 vector of class numbers; anything else (strings, floats, booleans, nested or
    scalar values) is refused, never truncated or cast."""
    try:
        array = np.asarray(values)
    except (ValueError, TypeError):
        array = None
    if array is None or array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        what = f"{array.dtype} {list(array.shape)}" if array is not None else type(values).__name__
        raise DatasetError(f"{path}: {key!r} should be a list of integer class numbers, got {what}; is this a "
                           f"CIFAR pickle?")
    return array.astype(np.int64)


def find_folder(root: str | Path | None, layout: CifarLayout, name: str) -> Path:
    """The folder holding ``layout``'s files: ``root`` itself or ``root/<layout.folder>``."""
    if root is None:
        raise ConfigError(f"data.name={name} needs data.root: the folder holding {layout.describe()}; or add "
                          f"data.download=true to fetch it there")
    root = Path(root).expanduser()
    for candidate in (root, root / layout.folder):
        if all((candidate / f).is_file() for f in (*layout.train_files, *layout.test_files)):
            return candidate
    present = sorted(p.name for p in root.iterdir())[:8] if root.is_dir() else []
    found = f"it holds {', '.join(present)}" if present else ("it is empty" if root.is_dir() else "it does not exist")
    raise DatasetError(f"data.root={root} is not a {name} folder ({found}); expected {layout.describe()} in it or "
                       f"in data.root itself, or set data.download=true")


def download(root: str | Path, layout: CifarLayout, name: str) -> None:
    """Fetch and extract the official archive into ``root`` with torchvision (needs the internet)."""
    import torchvision

    try:
        getattr(torchvision.datasets, layout.torchvision_class)(str(root), train=True, download=True)
    except Exception as error:  # no network, a proxy, a full disk: all end the same way for the user
        raise DatasetError(f"could not download {name} to {root} ({type(error).__name__}: {error}); download the "
                           f"'python version' from https://www.cs.toronto.edu/~kriz/cifar.html and extract it "
                           f"there, then set data.download=false") from None


class CifarDataset(Dataset):
    """A CIFAR split in memory: ``images`` ``[N, 32, 32, 3]`` uint8, ``labels`` ``[N]``; items are
    ``(transform(PIL image), label)``."""

    def __init__(self, folder: Path, layout: CifarLayout, train: bool, transform=None, mode: str = "RGB") -> None:
        images, labels = [], []
        for name in layout.train_files if train else layout.test_files:
            batch = read_pickle(folder / name)
            data, batch_labels = batch.get("data"), batch.get(layout.label_key)
            if data is None or batch_labels is None:
                raise DatasetError(f"{folder / name} lacks the keys 'data' and {layout.label_key!r} of a "
                                   f"{layout.folder} pickle (it has {sorted(batch)[:6]}); is this the right dataset?")
            try:
                data = np.asarray(data)
            except (ValueError, TypeError):  # ragged nested lists
                data = np.asarray(None)
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != np.prod(IMAGE_SHAPE):
                raise DatasetError(f"{folder / name}: 'data' should be uint8 rows of 3072 pixels, got "
                                   f"{data.dtype} {list(data.shape)}")
            batch_labels = class_numbers(batch_labels, folder / name, layout.label_key)
            if len(batch_labels) != len(data):
                raise DatasetError(f"{folder / name}: {len(data)} images but {len(batch_labels)} labels")
            images.append(data.reshape(-1, *IMAGE_SHAPE).transpose(0, 2, 3, 1))
            labels.append(batch_labels)
        self.images = np.ascontiguousarray(np.concatenate(images))
        self.labels = np.concatenate(labels)
        if self.labels.size and not 0 <= self.labels.min() <= self.labels.max() < layout.num_classes:
            raise DatasetError(f"{folder}: labels outside 0..{layout.num_classes - 1}; is this {layout.folder}?")
        self.num_classes = layout.num_classes
        meta_path = folder / layout.meta_file
        names = read_pickle(meta_path).get(layout.names_key, []) if meta_path.is_file() else []
        if not isinstance(names, list | tuple):
            raise DatasetError(f"{meta_path}: {layout.names_key!r} should be a list of class names, got a "
                               f"{type(names).__name__}")
        self.classes = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]
        self.transform = transform
        self.mode = mode

    name = "cifar10"  # the data.name it was built for, named in messages

    def input_conversion(self) -> str | None:
        """One line when the stored RGB images are made grey for a 1-channel model, else None."""
        return grey_conversion_note(self.name, f"image 0 of {self.name}", "RGB") if self.mode == "L" else None

    def keep(self, indices: np.ndarray) -> None:
        """Restrict the split to ``indices`` (e.g. a labelled fraction for fine-tuning)."""
        self.images, self.labels = self.images[indices], self.labels[indices]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = Image.fromarray(self.images[index], "RGB")
        if self.mode != "RGB":
            image = image.convert(self.mode)
        return (self.transform(image) if self.transform else image), int(self.labels[index])


def build_cifar(config, split: str, name: str) -> CifarDataset:
    layout = LAYOUTS[name]
    data = config.data
    if data.download and data.root is None:
        raise ConfigError(f"data.download=true needs data.root: where to put {name}")
    try:
        folder = find_folder(data.root, layout, name)
    except DatasetError:
        if not data.download:
            raise
        download(data.root, layout, name)
        folder = find_folder(data.root, layout, name)
    model = model_input(config)
    train = split == "train"
    transform = image_transform(data, train, model["img_size"], model["in_chans"], CIFAR_MEAN, CIFAR_STD,
                                crop_pct=1.0)
    dataset = CifarDataset(folder, layout, train, transform, pil_mode(model["in_chans"], name))
    dataset.name = name
    if train and data.train_fraction < 1.0:
        dataset.keep(take_fraction_per_class(dataset.labels, data.train_fraction))
    return dataset


@register_dataset("cifar10")
def build_cifar10(config, split: str) -> CifarDataset:
    return build_cifar(config, split, "cifar10")


@register_dataset("cifar100")
def build_cifar100(config, split: str) -> CifarDataset:
    return build_cifar(config, split, "cifar100")
