"""``spikformer.from_pretrained(source)``: a model with its weights from a file, a folder or a Hub id.

- a file: an own checkpoint (``best.safetensors``/``last.safetensors``/an exported weights file) carries its
  config and is rebuilt from it; a plain weight file (an official ``.pth``, a bare state dict) needs ``name=``.
- a folder: timm's ``save_for_hf`` layout (``config.json`` + ``model.safetensors``) is built by
  ``timm.create_model("local-dir:...")``; a run folder is read through its ``best.safetensors``.
- ``hf-hub:ORG/NAME`` or ``ORG/NAME``: the repository is fetched with ``huggingface_hub.snapshot_download``
  (cached; offline when ``HF_HUB_OFFLINE=1``) and read as a folder.
Every path goes through ``official.timm_filter_fn``, so original-code and ``model.``-prefixed files load too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import CheckpointError

HUB_PREFIX = "hf-hub:"
_HUB_FILES = ["config.json", "*.safetensors", "*.json", "*.md"]


def from_pretrained(source: str | Path, name: str | None = None, **kwargs: Any) -> nn.Module:
    """Build a model and load its weights from ``source`` (file, folder or Hub id); ``kwargs`` are
    ``timm.create_model`` keywords (``num_classes=`` replaces the head, ``device=``, ``features_only=`` ...)."""
    path = Path(source)
    if path.is_file():
        return _from_file(path, name, **kwargs)
    if path.is_dir():
        return _from_folder(path, name, **kwargs)
    text = str(source)
    looks_like_a_file = path.suffix in (".safetensors", ".pth", ".pt", ".bin", ".tar")
    if text.startswith(HUB_PREFIX) or (text.count("/") == 1 and not text.startswith((".", "/"))
                                       and not looks_like_a_file):
        return _from_folder(Path(_download(text.removeprefix(HUB_PREFIX))), name, **kwargs)
    raise CheckpointError(f"{source}: no such file or folder, and not a Hub id (hf-hub:ORG/NAME); pass an own "
                          f"checkpoint, a save_for_hf folder or a Hub repository")


def _download(repo_id: str) -> str:
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id=repo_id, allow_patterns=_HUB_FILES)
    except Exception as error:  # offline, no such repository, no access: one line that names both readings
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{repo_id}: not a local file or folder, and the Hub repository could not be "
                              f"fetched ({type(error).__name__}: {first_line})") from None


def _from_folder(folder: Path, name: str | None, **kwargs: Any) -> nn.Module:
    import timm

    from . import zoo  # noqa: F401  (registers the names timm's config.json refers to)

    if (folder / "config.json").is_file():
        _check_timm_folder(folder, kwargs)
        try:
            return timm.create_model(f"local-dir:{folder}", pretrained=True, **kwargs)
        except (RuntimeError, TypeError, ValueError, KeyError) as error:  # what the checks above cannot foresee
            raise CheckpointError(f"{folder}: timm could not build the model its config.json describes "
                                  f"({type(error).__name__}: {_first_line(error)})") from None
    for candidate in ("best.safetensors", "last.safetensors", "encoder.safetensors"):
        if (folder / candidate).is_file():
            return _from_file(folder / candidate, name, **kwargs)
    raise CheckpointError(f"{folder} holds neither a timm config.json (timm.models.save_for_hf) nor a run's "
                          f"best.safetensors; pass the weight file itself")


# The weight files timm's local-dir loader may pick: these names first, else any file of these suffixes.
_HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors",
                    "open_clip_pytorch_model.bin")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".pth.tar", ".ckpt")


def _check_timm_folder(folder: Path, kwargs: dict[str, Any]) -> None:
    """Put a ``save_for_hf`` folder through this package's guards before timm reads it: a bounded, valid
    ``config.json`` whose ``model_args`` ask for bounded sizes, and weight files that pass the checkpoint
    readers (no code, no lies in the header) and fit the model the config describes (names, shapes, the kind
    of dtype, finite values), checked on a ``meta`` model."""
    import timm
    import torch

    from ..checkpoint import check_state_fits, described_model_state, read_model_state
    from ..file_limits import MAX_JSON_FILE_BYTES, check_stored_sizes, read_bounded_bytes

    where = folder / "config.json"
    try:
        config = json.loads(read_bounded_bytes(where, MAX_JSON_FILE_BYTES, "config.json"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise CheckpointError(f"{where} is not valid JSON ({type(error).__name__}: {_first_line(error)})") from None
    if not isinstance(config, dict) or not isinstance(config.get("architecture"), str):
        raise CheckpointError(f"{where} names no 'architecture' (timm's save_for_hf writes one); is this a timm "
                              f"model folder?")
    model_args = config.get("model_args", {})
    if not isinstance(model_args, dict):
        raise CheckpointError(f"{where}: 'model_args' must be a mapping of keyword arguments, got "
                              f"{type(model_args).__name__}")
    sizes = {key: max(value) if isinstance(value, list) and value and all(isinstance(v, int) for v in value)
             else value for key, value in model_args.items()}
    check_stored_sizes(where, {"model": sizes}, {("model", key) for key in kwargs})
    try:
        with torch.device("meta"):
            meta = timm.create_model(config["architecture"], **model_args)
    except (RuntimeError, TypeError, ValueError, KeyError, RecursionError) as error:
        raise CheckpointError(f"{where}: cannot build {config['architecture']!r} from its model_args "
                              f"({type(error).__name__}: {_first_line(error)})") from None
    named = [folder / name for name in _HF_WEIGHT_FILES if (folder / name).is_file()]
    candidates = named or sorted(p for p in folder.iterdir() if p.name.endswith(_WEIGHT_SUFFIXES) and p.is_file())
    for weights in candidates:
        described = described_model_state(weights)
        if described is not None:  # names and shapes from the header, before the data is read
            check_state_fits(meta, described[0], strict=True, source=str(weights))
        check_state_fits(meta, read_model_state(weights)[0], strict=True, source=str(weights))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def _from_file(path: Path, name: str | None, **kwargs: Any) -> nn.Module:
    import timm
    import torch

    from ..checkpoint import check_state_fits, described_model_state, read_model_state, stored_config
    from ..config import model_overrides
    from . import build_model
    from .resolve import resolve_model_config

    described = described_model_state(path)
    metadata = described[1] if described is not None else read_model_state(path)[1]
    config = metadata.get("config")
    if config:
        # the checkpoint's own guards: bounded sizes, then names, shapes, dtype kinds and finite values against
        # the model it describes (meta: nothing allocated) before timm reads the file
        chosen = [f"model.{key}={value}" for key, value in kwargs.items()
                  if key in ("T", "img_size", "embed_dim") and type(value) is int]
        model_config = resolve_model_config(stored_config(path, metadata, chosen).model)
        with torch.device("meta"):
            meta = build_model(model_config)
        if described is not None:
            check_state_fits(meta, described[0], strict=True, source=str(path))
        check_state_fits(meta, read_model_state(path)[0], strict=True, source=str(path))
        name = name or model_config.name
        stored = {key: value for key, value in model_overrides(model_config).items() if key != "drop_path_rate"}
        overlay = dict(file=str(path), num_classes=model_config.num_classes)
        wanted = {**stored, **kwargs}
        # timm drops the stored head when the requested class count differs (num_classes= on load)
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **wanted)
    if name is None:
        raise CheckpointError(f"{path} carries no config (an official or plain weight file): name its variant, "
                              f"e.g. spikformer.from_pretrained(path, name='spikformer_cifar_4_384')")
    overlay = dict(file=str(path))
    if "num_classes" in kwargs:  # the file's head size: taken from its weights
        state, _ = read_model_state(path)
        if "head.weight" in state:
            overlay["num_classes"] = int(state["head.weight"].shape[0])
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
