"""Classify image files with a trained model: from an own checkpoint or from an exported ONNX file.

A model's input is prepared as its validation images were: resized so that the centre crop of ``crop_pct``
covers ``img_size``, centre-cropped, scaled to [0, 1], normalised with the dataset's mean and std.
:class:`Preprocessing` holds those numbers; a checkpoint's config gives them (:func:`preprocessing_of`), an
exported ONNX file carries them in its metadata (``export_onnx(..., metadata=prep.to_metadata())``).

Usage::

    classifier = Classifier.from_file("runs/digits/best.safetensors")   # or "model.onnx"
    for result in classify(classifier, image_files(["photos/"]), k=3):
        print(result.path, result.top)                                  # [("7", 0.91), ("1", 0.05), ...]
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError, SpikformerError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
EVENT_DATASETS = ("cifar10dvs", "dvs128gesture", "digits-dvs")


@dataclass(frozen=True)
class Preprocessing:
    """How an image file becomes the model's input ``[C, img_size, img_size]``, and what its outputs mean."""

    img_size: int
    in_chans: int
    T: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float = 1.0
    interpolation: str = "bilinear"
    class_names: tuple[str, ...] | None = None

    def to_metadata(self) -> dict[str, str]:
        """String metadata for an ONNX file (``mean``/``std``/``class_names`` as JSON lists)."""
        metadata = {
            "input": "images",
            "img_size": str(self.img_size),
            "in_chans": str(self.in_chans),
            "T": str(self.T),
            "mean": json.dumps(list(self.mean)),
            "std": json.dumps(list(self.std)),
            "crop_pct": str(self.crop_pct),
            "interpolation": self.interpolation,
        }
        if self.class_names is not None:
            metadata["class_names"] = json.dumps(list(self.class_names))
        return metadata

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], source: str = "the ONNX file") -> Preprocessing:
        if metadata.get("input", "images") != "images":
            raise ConfigError(
                f"{source} takes {metadata['input']} (an event-camera model), not images; "
                f"spikformer predict classifies image files"
            )
        missing = [key for key in ("img_size", "in_chans", "T", "mean", "std") if key not in metadata]
        if missing:
            raise ConfigError(
                f"{source} carries no {', '.join(missing)} in its metadata; export it again with "
                f"`spikformer export --checkpoint ... --out model.onnx`, which writes them"
            )
        try:
            names = metadata.get("class_names")
            return cls(
                int(metadata["img_size"]),
                int(metadata["in_chans"]),
                int(metadata["T"]),
                tuple(json.loads(metadata["mean"])),
                tuple(json.loads(metadata["std"])),
                float(metadata.get("crop_pct", 1.0)),
                metadata.get("interpolation", "bilinear"),
                tuple(json.loads(names)) if names else None,
            )
        except (ValueError, TypeError) as error:
            raise ConfigError(f"{source} has unreadable preprocessing metadata: {error}") from None


def class_names_of(metadata: dict[str, Any]) -> list[str] | None:
    """The class names a checkpoint's metadata stores (index order), or None when it stores none."""
    names = metadata.get("class_names")
    if isinstance(names, list) and names and all(isinstance(name, str) for name in names):
        return names
    return None


def _dataset_defaults(name: str) -> tuple[Sequence[float], Sequence[float], float, str | None] | None:
    """``(mean, std, crop_pct, interpolation or None for the config's)`` of a built-in image dataset."""
    if name == "digits":
        from .data.digits import DIGITS_MEAN, DIGITS_STD

        return (DIGITS_MEAN,), (DIGITS_STD,), 1.0, "bilinear"  # the dataset upsamples bilinearly
    if name in ("cifar10", "cifar100"):
        from .data.cifar import CIFAR_MEAN, CIFAR_STD

        return CIFAR_MEAN, CIFAR_STD, 1.0, None
    if name in ("imagenet", "folder"):
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        return IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, 0.875, None
    return None


def preprocessing_of(config, class_names: Sequence[str] | None = None) -> Preprocessing:
    """The validation preprocessing of a resolved run config (``data.mean``/``std``/``crop_pct`` win over the
    dataset's defaults). Refuses event-camera models and datasets whose statistics it does not know."""
    from .data.transforms import channel_statistics

    data, model = config.data, config.model
    if data.name in EVENT_DATASETS or model.in_chans == 2:
        raise ConfigError(
            f"model {model.name} takes event frames ({data.name}), not images; predict and the "
            f"ONNX preprocessing metadata are for image models"
        )
    defaults = _dataset_defaults(data.name)
    if defaults is None and (data.mean is None or data.std is None):
        raise ConfigError(
            f"the normalisation of data.name={data.name} is not known here; set data.mean and "
            f"data.std (one value per channel) as an override"
        )
    mean, std, crop_pct, interpolation = defaults or (data.mean, data.std, 1.0, None)
    return Preprocessing(
        img_size=model.img_size,
        in_chans=model.in_chans,
        T=model.T,
        mean=tuple(channel_statistics(data.mean if data.mean is not None else mean, model.in_chans)),
        std=tuple(channel_statistics(data.std if data.std is not None else std, model.in_chans)),
        crop_pct=data.crop_pct if data.crop_pct is not None else crop_pct,
        interpolation=interpolation or data.interpolation,
        class_names=tuple(class_names) if class_names is not None else None,
    )


def image_files(inputs: Iterable[str | Path]) -> list[Path]:
    """The image files named by ``inputs``: files as given, folders searched recursively (sorted)."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise ConfigError(f"folder {str(item)!r} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise ConfigError(f"{str(item)!r} is neither an image file nor a folder")
    return files


def load_image(path: str | Path, prep: Preprocessing) -> torch.Tensor:
    """One image file as the model's normalised input ``[C, img_size, img_size]``."""
    import torchvision.transforms.functional as TF
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms import InterpolationMode

    try:
        with Image.open(path) as image:
            image = image.convert("L" if prep.in_chans == 1 else "RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise ConfigError(f"{path} is not a readable image: {error}") from None
    if prep.in_chans not in (1, 3):
        raise ConfigError(f"the model takes {prep.in_chans} channels; image files give 1 (grey) or 3 (RGB)")
    mode = InterpolationMode.BILINEAR if prep.interpolation == "random" else InterpolationMode(prep.interpolation)
    resized = int(prep.img_size / prep.crop_pct)
    image = TF.center_crop(TF.resize(image, resized, interpolation=mode), [prep.img_size, prep.img_size])
    return TF.normalize(TF.to_tensor(image), list(prep.mean), list(prep.std))


class Classifier:
    """A trained model and its preprocessing: ``logits(batch [B, C, H, W]) -> [B, classes]``."""

    def __init__(self, prep: Preprocessing, run: Any, source: str) -> None:
        self.preprocessing, self._run, self.source = prep, run, source

    @classmethod
    def from_checkpoint(cls, path: str | Path, overrides: Sequence[str] = ()) -> Classifier:
        from .checkpoint import load_model_from_checkpoint, read_checkpoint_metadata
        from .models import resolve_config

        model, config = load_model_from_checkpoint(path, list(overrides))
        prep = preprocessing_of(resolve_config(config), class_names_of(read_checkpoint_metadata(path)))
        model.eval()

        def run(batch: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return model(batch)

        return cls(prep, run, str(path))

    @classmethod
    def from_onnx(cls, path: str | Path) -> Classifier:
        from .extras import require

        onnx = require("onnx", "reading an ONNX file's metadata")
        onnxruntime = require("onnxruntime", "running an ONNX file")
        try:
            props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        except Exception as error:  # onnx raises DecodeError, OSError ... for a file that is not a model
            raise ConfigError(f"{path} is not a readable ONNX model: {str(error).splitlines()[0]}") from None
        prep = Preprocessing.from_metadata(props, str(path))
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def run(batch: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(None, {name: batch.numpy()})[0])

        return cls(prep, run, str(path))

    @classmethod
    def from_file(cls, path: str | Path, overrides: Sequence[str] = ()) -> Classifier:
        """An ``.onnx`` file through onnxruntime; anything else as an own checkpoint."""
        if Path(path).suffix.lower() == ".onnx":
            if overrides:
                raise ConfigError("an ONNX file is a fixed graph: section.key=value overrides need a checkpoint")
            return cls.from_onnx(path)
        return cls.from_checkpoint(path, overrides)

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        return self._run(batch.float())


@dataclass(frozen=True)
class Prediction:
    """The ``k`` most probable classes of one image: ``top`` is ``[(class name, probability), ...]``."""

    path: Path
    top: list[tuple[str, float]]


def classify(classifier: Classifier, files: Sequence[str | Path], k: int = 5, batch_size: int = 32) -> list[Prediction]:
    """The top-``k`` classes of each file (``k`` is capped at the number of classes). Classes without names
    are called by their index."""
    if k < 1:
        raise ConfigError(f"top-k needs k >= 1, got {k}")
    results = []
    for start in range(0, len(files), batch_size):
        chunk = [Path(f) for f in files[start : start + batch_size]]
        batch = torch.stack([load_image(f, classifier.preprocessing) for f in chunk])
        probabilities = classifier.logits(batch).softmax(-1)
        names = classifier.preprocessing.class_names
        if names is not None and len(names) != probabilities.shape[-1]:
            raise SpikformerError(
                f"{classifier.source} names {len(names)} classes but its model has {probabilities.shape[-1]} outputs"
            )
        values, indices = probabilities.topk(min(k, probabilities.shape[-1]), dim=-1)
        for path, row_values, row_indices in zip(chunk, values.tolist(), indices.tolist()):
            top = [(names[i] if names is not None else str(i), p) for i, p in zip(row_indices, row_values)]
            results.append(Prediction(path, top))
    return results
