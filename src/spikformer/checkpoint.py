"""Checkpoints: this project's own safe format, the original code's ``.pth`` files, and atomic writes.

Own format: one ``.safetensors`` file. Tensors are namespaced (``model.*``, ``ema.*``, ``optim.*``,
``rng.*``); everything else (the resolved config, epoch, step, metrics, scheduler state ...) is a JSON
document stored in the safetensors header under the key ``spikformer``. Reading it never runs code.

Legacy ``.pth``/``.pth.tar`` files (the original research code, timm's saver) are read with
``torch.load(weights_only=True)``; the only extra type allowed is ``argparse.Namespace``, which timm's saver
stores as ``args``. A file that needs anything else to unpickle is refused, and nothing in it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import nn

from .errors import CheckpointError, ConfigError
from .models.official import checkpoint_filter_fn

FORMAT_NAME = "spikformer"
FORMAT_VERSION = 1
SAFETENSORS_MAGIC_OFFSET = 8  # the header length (u64) comes first, then a JSON header starting with "{"


# --- writing ---------------------------------------------------------------------------------------


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, flush it to disk, then rename it over ``path``.
    A crash or a full disk mid-write leaves the previous file untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Save ``tensors`` and a JSON-serialisable ``metadata`` mapping as one safetensors file, atomically."""
    document = {"format": FORMAT_NAME, "version": FORMAT_VERSION, **metadata}
    try:
        header = json.dumps(document)
    except TypeError as error:
        raise CheckpointError(f"checkpoint metadata is not JSON-serialisable: {error}") from None
    payload = {key: value.detach().to("cpu").contiguous().clone() for key, value in tensors.items()}
    try:
        atomic_write_bytes(path, safetensors_save(payload, metadata={FORMAT_NAME: header}))
    except OSError as error:  # still an OSError (the machine, not the input), with what to do about it
        raise OSError(error.errno, f"could not write checkpoint {path} ({error.strerror or error}); the "
                      f"previous file, if any, is intact. Free disk space or choose a writable "
                      f"train.out_dir") from error


def save_model(path: str | Path, model: nn.Module, config: dict[str, Any] | None = None,
               **metadata: Any) -> None:
    """Save a model's weights (and its config, so the file alone can rebuild it)."""
    tensors = {f"model.{k}": v for k, v in unwrap_model(model).state_dict().items()}
    write_checkpoint(path, tensors, {"config": config, **metadata})


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside DDP and ``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


# --- reading ---------------------------------------------------------------------------------------


def is_safetensors(path: str | Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(SAFETENSORS_MAGIC_OFFSET + 1)
    except OSError:
        return False
    return len(head) == SAFETENSORS_MAGIC_OFFSET + 1 and head[-1:] == b"{"


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read an own-format checkpoint: ``(tensors, metadata)``."""
    path = Path(path)
    _check_file(path)
    try:
        data = path.read_bytes()
        tensors = safetensors_load(data)
        header_size = int.from_bytes(data[:SAFETENSORS_MAGIC_OFFSET], "little")
        header = json.loads(data[SAFETENSORS_MAGIC_OFFSET:SAFETENSORS_MAGIC_OFFSET + header_size])
        header = header.get("__metadata__") or {}
    except (SafetensorError, ValueError, OSError) as error:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint (truncated or corrupt?): "
                              f"{error}") from None
    if FORMAT_NAME in header:
        try:
            metadata = json.loads(header[FORMAT_NAME])
        except json.JSONDecodeError:
            raise CheckpointError(f"{path}: the checkpoint's metadata is not valid JSON") from None
        if not isinstance(metadata, dict):
            raise CheckpointError(f"{path}: the checkpoint's metadata is not a JSON object")
    else:
        metadata = {}  # a plain safetensors weight file (e.g. exported by another tool)
    return tensors, metadata


def _check_file(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} is a directory; pass a file such as {path}/best.safetensors")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} is empty")


def read_legacy_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a ``.pth``/``.pth.tar`` file without executing code from it."""
    path = Path(path)
    _check_file(path)
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals([argparse.Namespace]):
            warnings.simplefilter("ignore")  # torch warns about pickle protocols on its way to an error
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        detail = _unpickler_detail(str(error))
        if "global" in detail.lower():  # the restricted unpickler met a class or function it does not allow
            raise CheckpointError(
                f"refused to load {path}: it needs code outside the allowed types to unpickle, and loading it "
                f"could run that code (nothing from it was executed). Details: {detail}"
            ) from None
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or not a checkpoint?): "
                              f"{detail}") from None
    except Exception as error:  # noqa: BLE001 - arbitrary bytes make torch.load fail in arbitrary ways
        detail = str(error).splitlines()[0] if str(error) else ""
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or not a checkpoint?): "
                              f"{type(error).__name__} {detail}".rstrip()) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict or checkpoint mapping")
    return obj


def _unpickler_detail(message: str) -> str:
    """The informative sentence of torch's weights-only error (its message is mostly advice to load unsafely,
    which we do not give)."""
    marker = "WeightsUnpickler error:"
    if marker in message:
        rest = message.split(marker, 1)[1].strip()
        return rest.split("\n")[0].split(". Please")[0].strip() or "unpickling failed"
    return message.splitlines()[0] if message else "unpickling failed"


def extract_state_dict(obj: dict[str, Any], path: str | Path = "checkpoint") -> dict[str, torch.Tensor]:
    """The model state dict inside a legacy checkpoint mapping (raw, or under ``state_dict``/``model``)."""
    for key in ("state_dict", "model", "state_dict_ema", "model_ema"):
        inner = obj.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return inner
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise CheckpointError(f"{path}: no model state dict found (looked for the keys 'state_dict' and "
                          f"'model', and for a raw mapping of tensors); top-level keys: {sorted(obj)[:10]}")


def read_model_state(path: str | Path, use_ema: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A model state dict in this package's names, from any supported file, and its metadata."""
    if is_safetensors(path):
        tensors, metadata = read_checkpoint(path)
        prefix = "ema." if use_ema and any(k.startswith("ema.") for k in tensors) else "model."
        if any(key.startswith(prefix) for key in tensors):
            state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        else:
            state = tensors
    else:
        obj = read_legacy_checkpoint(path)
        state, metadata = extract_state_dict(obj, path), {}
    return checkpoint_filter_fn(state), metadata


def match_state_dict(model: nn.Module, state: dict[str, torch.Tensor], strict: bool = True,
                     source: str = "checkpoint", ignore: tuple[str, ...] = ()) -> None:
    """Load ``state`` into ``model``; on a mismatch raise ``CheckpointError`` naming keys and shapes."""
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in state and not k.startswith(ignore))
    unexpected = sorted(k for k in state if k not in expected)
    wrong_shape = [f"{k}: checkpoint {list(state[k].shape)} vs model {list(expected[k].shape)}"
                   for k in expected if k in state and state[k].shape != expected[k].shape]
    if wrong_shape or (strict and (missing or unexpected)):
        lines = [f"{source} does not fit the model ({type(model).__name__}):"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", wrong_shape)):
            if items:
                shown = ", ".join(items[:12]) + (f", ... ({len(items)} in all)" if len(items) > 12 else "")
                lines.append(f"  {title}: {shown}")
        lines.append("  Build the same variant and overrides the checkpoint was trained with (its config is "
                     "stored in own checkpoints), or pass strict=False to load the matching part.")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)


def load_checkpoint(model: nn.Module, path: str | Path, strict: bool = True, use_ema: bool = False
                    ) -> dict[str, Any]:
    """Load weights from an own or official checkpoint into ``model``; returns the file's metadata."""
    state, metadata = read_model_state(path, use_ema=use_ema)
    match_state_dict(unwrap_model(model), state, strict=strict, source=str(path))
    return metadata


def load_model_from_checkpoint(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
                               use_ema: bool = True):
    """Rebuild the model an own checkpoint describes and load its weights: ``(model, config)``.
    ``overrides`` (``section.key=value``) change the stored config, e.g. ``model.T=8``."""
    from .config import apply_overrides, config_from_dict
    from .models import build_model

    state, metadata = read_model_state(path, use_ema=use_ema)
    if not metadata.get("config"):
        raise CheckpointError(f"{path} carries no config (an official or plain weight file): build the model "
                              f"with spikformer.create_model(...) and use spikformer.load_checkpoint(model, path)")
    try:
        config = config_from_dict(apply_overrides(metadata["config"], list(overrides)))
    except ConfigError as error:
        raise ConfigError(f"{path}: {error} (in the config stored in the checkpoint, overrides applied; a "
                          f"section.key=value override can change it)") from None
    config.model.pretrained = None
    model = build_model(config.model)
    match_state_dict(model, state, strict=True, source=str(path))
    return model, config
