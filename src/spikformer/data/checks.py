"""A dataset checked against the model it feeds, before any training or evaluation: the class count, the class
names a checkpoint was trained with, and whether the images are changed to fit the model's channels.

A dataset says what it holds through two optional attributes: ``classes`` (the class names, in label order)
and ``num_classes``; a dataset without them (a custom one) is not checked. A lossy conversion of the stored
images (colour to grey) is described by the dataset's ``input_conversion()``, one line or None.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch.utils.data import Dataset

from ..errors import ConfigError


def dataset_classes(dataset: Dataset) -> list[str] | None:
    """The dataset's class names in label order, or None when it does not name them."""
    classes = getattr(dataset, "classes", None)
    if classes is None or isinstance(classes, str):
        return None
    try:
        names = [str(name) for name in classes]
    except TypeError:
        return None
    count = getattr(dataset, "num_classes", None)
    if not names or (isinstance(count, int) and count != len(names)):
        return None  # no names, or names that do not cover the labels (e.g. a CIFAR folder without its meta file)
    return names


def dataset_class_count(dataset: Dataset) -> int | None:
    count = getattr(dataset, "num_classes", None)
    if isinstance(count, int) and not isinstance(count, bool):
        return count
    classes = dataset_classes(dataset)
    return len(classes) if classes is not None else None


def _some(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return f"{shown}, ..." if len(names) > limit else shown


def check_class_count(dataset: Dataset, num_classes: int | None, data_name: str) -> None:
    """Refuse a model whose head has another number of outputs than the dataset has classes. A larger head
    would train without a word (its extra outputs only ever pushed down), report top-5 over classes that do
    not exist and save a model that claims classes it never saw; a smaller one cannot represent the labels."""
    found = dataset_class_count(dataset)
    if found is None or num_classes is None or found == num_classes:
        return
    classes = dataset_classes(dataset)
    named = f" ({_some(classes)})" if classes else ""
    raise ConfigError(f"data.name={data_name} has {found} classes{named} but model.num_classes={num_classes}; set "
                      f"model.num_classes={found}, or leave it unset to take it from the data")


def check_class_names(dataset: Dataset, trained_on: list[str] | None, checkpoint: str, data_name: str) -> None:
    """Refuse to evaluate a checkpoint on data whose classes are not the ones it was trained on, in the same
    order: label i would mean another class than the model's output i, and the accuracy would be wrong
    without a sign of it."""
    classes = dataset_classes(dataset)
    if trained_on is None or classes is None or classes == trained_on:
        return
    if sorted(classes) == sorted(trained_on):
        detail = "the same names in another order"
    else:
        missing = [c for c in trained_on if c not in classes]
        extra = [c for c in classes if c not in trained_on]
        detail = "; ".join(part for part in (f"lacks {_some(missing)}" if missing else "",
                                             f"adds {_some(extra)}" if extra else "") if part)
    raise ConfigError(f"{checkpoint} was trained on {len(trained_on)} classes ({_some(trained_on)}) but "
                      f"data.name={data_name} gives {len(classes)} ({detail}); evaluate on the data it was trained "
                      f"for (data.root=...)")


def input_conversion(dataset: Dataset) -> str | None:
    """The dataset's one-line description of a lossy change of its stored images, or None."""
    describe = getattr(dataset, "input_conversion", None)
    return describe() if callable(describe) else None
