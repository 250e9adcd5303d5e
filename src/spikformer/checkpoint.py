"""Checkpoints: this project's own safe format, the original code's ``.pth`` files, and atomic writes.

Own format: one ``.safetensors`` file. A weights file (``best.safetensors``, an exported encoder) holds a plain
state dict, keys exactly as ``model.state_dict()`` names them, so ``safetensors.torch.load_file`` +
``load_state_dict`` and timm's ``checkpoint_path=`` read it directly. A training state (``last.safetensors``)
namespaces its tensors (``model.*``, ``ema.*``, ``optim.*``, ``rng.*``). Everything else (the resolved config,
epoch, step, metrics, scheduler state ...) is a JSON document stored in the safetensors header under the key
``spikformer``. Two SHA-256 checksums make the file one unit: ``tensor_sha256`` over the tensors, and
``metadata_sha256`` over every other field of that document (``tensor_sha256`` included) and every other entry
of the header's metadata. The metadata checksum covers fields generically, not a list of known keys, so a field
added later is covered too; it is verified whenever the header is read, the tensor checksum whenever the tensors
are. Both are mandatory in an own file: one without them, or of an earlier development format (1, 2: the metadata
had no checksum), is refused.

A file is data, never instructions: its header is validated before any tensor byte is read, the JSON is parsed
with a bounded nesting depth, only regular files are opened, weights must have the model's kind of dtype, and a
config stored in a checkpoint may not choose where to write, how many processes to start or how much memory to
allocate (``stored_config``).

Legacy ``.pth``/``.pth.tar`` files (the original research code, timm's saver) are read with
``torch.load(weights_only=True)``; the only extra type allowed is ``argparse.Namespace``, which timm's saver
stores as ``args``. A file that needs anything else to unpickle is refused, and nothing in it runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import pickle
import re
import stat
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as safetensors_load_file
from safetensors.torch import save as safetensors_save
from torch import nn

from .errors import CheckpointError, ConfigError
from .file_limits import STORED_SIZE_LIMITS, check_stored_sizes, check_zip_inflation  # noqa: F401
from .models.official import checkpoint_filter_fn

FORMAT_NAME = "spikformer"
FORMAT_VERSION = 3  # 3: every metadata field under metadata_sha256; both checksums mandatory
TENSOR_CHECKSUM, METADATA_CHECKSUM = "tensor_sha256", "metadata_sha256"
RESERVED_FIELDS = ("format", "version", TENSOR_CHECKSUM, METADATA_CHECKSUM)  # written by write_checkpoint only
SAFETENSORS_FORMAT = {"format": "pt"}  # what timm and the Hugging Face tools write and look for
SAFETENSORS_MAGIC_OFFSET = 8  # the header length (u64) comes first, then a JSON header starting with "{"
MAX_HEADER_BYTES = 64 * 2**20  # the JSON header of a real checkpoint is kilobytes; safetensors allows 100 MB
MAX_JSON_DEPTH = 32  # our metadata nests 5 deep; a deeper document is hostile (json recursion)
# Bytes per element of each safetensors dtype (the header must agree with the data it describes).
SAFETENSORS_DTYPES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
                      "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
WEIGHTS_LAYOUT = "state_dict"


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
        os.chmod(tmp, default_file_mode())  # mkstemp makes 0600; a checkpoint is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def default_file_mode() -> int:
    """The mode ``open()`` would give a new file under the process's umask (0644 under the usual 022)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


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
    payload = {key: value.detach().to("cpu").contiguous().clone() for key, value in tensors.items()}
    fields = {key: value for key, value in metadata.items() if key not in RESERVED_FIELDS}
    document = {"format": FORMAT_NAME, "version": FORMAT_VERSION, **fields, TENSOR_CHECKSUM: tensor_checksum(payload)}
    try:
        document = json.loads(json.dumps(document))  # as a reader parses it: tuples as lists, keys as strings
    except (TypeError, ValueError, RecursionError) as error:
        raise CheckpointError(f"checkpoint metadata is not JSON-serialisable: {error}") from None
    document[METADATA_CHECKSUM] = metadata_checksum(document, SAFETENSORS_FORMAT)
    try:
        header = {FORMAT_NAME: json.dumps(document), **SAFETENSORS_FORMAT}
        atomic_write_bytes(path, safetensors_save(payload, metadata=header))
    except OSError as error:  # still an OSError (the machine, not the input), with what to do about it
        raise OSError(error.errno, f"could not write checkpoint {path} ({error.strerror or error}); the "
                      f"previous file, if any, is intact. Free disk space or choose a writable "
                      f"train.out_dir") from error


def save_model(path: str | Path, model: nn.Module, config: dict[str, Any] | None = None,
               **metadata: Any) -> None:
    """Save a model's weights as a plain state dict (and its config, so the file alone can rebuild it)."""
    write_checkpoint(path, dict(unwrap_model(model).state_dict()),
                     {"layout": WEIGHTS_LAYOUT, "config": config, **metadata})


def tensor_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes (in name order)."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        value = tensors[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{str(value.dtype)}|{list(value.shape)}|".encode())
        if value.numel():
            digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def metadata_checksum(document: dict[str, Any], header_metadata: dict[str, str]) -> str:
    """SHA-256 over every field of an own checkpoint's metadata ``document`` but ``metadata_sha256`` itself, and
    every other entry of the safetensors header's ``__metadata__``, as canonical JSON (sorted keys)."""
    fields = {key: value for key, value in document.items() if key != METADATA_CHECKSUM}
    others = {key: value for key, value in header_metadata.items() if key != FORMAT_NAME}
    text = json.dumps([fields, others], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


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
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        with open(path, "rb") as handle:
            head = handle.read(SAFETENSORS_MAGIC_OFFSET + 1)
    except OSError:
        return False
    return len(head) == SAFETENSORS_MAGIC_OFFSET + 1 and head[-1:] == b"{"


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read an own-format checkpoint: ``(tensors, metadata)``. The header is validated first (sizes, dtypes,
    offsets against the file's length), so no tensor byte is read from a file whose structure is wrong; both
    checksums of an own file are verified."""
    path = Path(path)
    header, metadata = read_checkpoint_header(path)
    try:
        tensors = safetensors_load_file(str(path))
    except (SafetensorError, ValueError, OSError, RuntimeError) as error:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint (truncated or corrupt?): "
                              f"{_first_line(error)}") from None
    if metadata and tensor_checksum(tensors) != metadata[TENSOR_CHECKSUM]:
        raise CheckpointError(f"{path} is corrupt: its tensor bytes do not match the checksum stored in it "
                              f"(damaged on disk or in transfer); copy or download it again")
    return tensors, metadata


def read_checkpoint_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of an own checkpoint, read from its header alone (no tensor is loaded; the metadata
    checksum is verified)."""
    return read_checkpoint_header(Path(path))[1]


def read_checkpoint_header(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(tensor entries, metadata)`` of a safetensors file, checked against the file before any tensor is
    read: a length that fits the file, a bounded JSON, known dtypes, and offsets that tile the data exactly."""
    size = _check_file(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(SAFETENSORS_MAGIC_OFFSET)
            header_size = int.from_bytes(head, "little") if len(head) == SAFETENSORS_MAGIC_OFFSET else -1
            if not 2 <= header_size <= min(MAX_HEADER_BYTES, size - SAFETENSORS_MAGIC_OFFSET):
                raise _unreadable(path, f"its header length {header_size} does not fit a {size}-byte file")
            text = handle.read(header_size)
    except OSError as error:
        raise CheckpointError(f"{path} cannot be read: {error.strerror or error}") from None
    header = _bounded_json(text, path, "header")
    if not isinstance(header, dict):
        raise _unreadable(path, "the header is not a JSON object")
    extra = header.get("__metadata__") or {}
    if not isinstance(extra, dict) or not all(isinstance(v, str) for v in extra.values()):
        raise _unreadable(path, "the header's metadata does not map names to strings")
    _check_tensor_entries(path, header, size - SAFETENSORS_MAGIC_OFFSET - header_size)
    if FORMAT_NAME not in extra:
        if any(TENSOR_CHECKSUM in value or METADATA_CHECKSUM in value for value in extra.values()):
            raise CheckpointError(f"{path} is corrupt: its header holds spikformer metadata under another name (a "
                                  f"damaged own checkpoint); copy or download it again")
        return header, {}  # a plain safetensors weight file (e.g. exported by another tool)
    metadata = _bounded_json(extra[FORMAT_NAME].encode(), path, "metadata")
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path}: the checkpoint's metadata is not a JSON object")
    _check_own_metadata(path, metadata, extra)
    return header, metadata


def _check_own_metadata(path: Path, metadata: dict[str, Any], extra: dict[str, str]) -> None:
    """Refuse an own checkpoint of another format version, without both checksums, or whose metadata does not
    match its checksum."""
    version = metadata.get("version")
    if metadata.get("format") == FORMAT_NAME and type(version) is int and version != FORMAT_VERSION:
        why = ("a development version of spikformer wrote it, before checkpoint metadata had a checksum" if
               version < FORMAT_VERSION else "a newer spikformer wrote it")
        raise CheckpointError(f"{path} is in checkpoint format {version} ({why}); this version reads format "
                              f"{FORMAT_VERSION} only: train again, or upgrade spikformer")
    for key in (TENSOR_CHECKSUM, METADATA_CHECKSUM):
        value = metadata.get(key)
        if not (isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value)):
            raise CheckpointError(f"{path} carries no {key} (every own checkpoint has one): it is damaged or was "
                                  f"edited; copy or download it again")
    if metadata_checksum(metadata, extra) != metadata[METADATA_CHECKSUM]:
        raise CheckpointError(f"{path} is corrupt: its metadata (position, optimizer, schedule, config ...) does not "
                              f"match the checksum stored in it (damaged, or edited by hand); copy or download it "
                              f"again, or resume from another checkpoint")
    if metadata.get("format") != FORMAT_NAME or version != FORMAT_VERSION:
        raise CheckpointError(f"{path} is corrupt: its metadata names checkpoint format "
                              f"{str(metadata.get('format'))[:20]!r} version {str(version)[:20]}")


def _check_tensor_entries(path: Path, header: dict[str, Any], data_bytes: int) -> None:
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        where = f"tensor {name[:80]!r}"
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise _unreadable(path, f"{where} is not described by dtype, shape and data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in SAFETENSORS_DTYPES:
            raise _unreadable(path, f"{where} has the unknown dtype {str(dtype)[:20]!r}")
        if (not isinstance(shape, list) or len(shape) > 16
                or not all(type(d) is int and d >= 0 for d in shape)):
            raise _unreadable(path, f"{where} has an invalid shape {str(shape)[:60]}")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= data_bytes):
            raise _unreadable(path, f"{where} has data offsets {str(offsets)[:60]} outside the file's "
                                    f"{data_bytes} data bytes")
        if math.prod(shape) * SAFETENSORS_DTYPES[dtype] != offsets[1] - offsets[0]:
            raise _unreadable(path, f"{where}: shape {shape} of {dtype} does not match its "
                                    f"{offsets[1] - offsets[0]} bytes")
        spans.append(offsets)
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            raise _unreadable(path, "its tensors overlap or leave gaps in the data")
        position = end
    if position != data_bytes:
        raise _unreadable(path, f"its header describes {position} data bytes but the file holds {data_bytes}")


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_JSON_BRACKET = re.compile(rb"[\[\]{}]")


def _bounded_json(text: bytes, path: Path, what: str) -> Any:
    """``json.loads`` that refuses a document nested deeper than ``MAX_JSON_DEPTH`` (before parsing it, so a
    hostile ``[[[[...`` never reaches the recursive parser)."""
    depth = deepest = 0
    for match in _JSON_BRACKET.finditer(_JSON_STRING.sub(b"", text)):
        depth += 1 if match.group() in b"[{" else -1
        deepest = max(deepest, depth)
    if deepest > MAX_JSON_DEPTH:
        raise CheckpointError(f"{path}: the checkpoint's {what} JSON nests {deepest} levels deep (at most "
                              f"{MAX_JSON_DEPTH}); the file is corrupt or hostile")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise _unreadable(path, f"its {what} is not valid JSON") from None


def _unreadable(path: Path, detail: str) -> CheckpointError:
    return CheckpointError(f"{path} is not a readable safetensors checkpoint (truncated or corrupt?): {detail}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def _check_file(path: Path) -> int:
    """The size of ``path``, a regular, non-empty file (checked with ``stat``, so a FIFO is never opened)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist") from None
    except OSError as error:
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read: {error.strerror or error}") from None
    if stat.S_ISDIR(info.st_mode):
        raise CheckpointError(f"checkpoint {str(path)!r} is a directory; pass a file such as {path}/best.safetensors")
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointError(f"checkpoint {str(path)!r} is not a regular file (a FIFO, device or socket); pass "
                              f"the checkpoint file itself")
    if info.st_size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} is empty")
    return info.st_size


def read_legacy_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a ``.pth``/``.pth.tar`` file without executing code from it."""
    path = Path(path)
    _check_file(path)
    check_zip_inflation(path)
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
        detail = _without_unsafe_advice(_first_line(error))
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or not a checkpoint?): "
                              f"{type(error).__name__} {detail}".rstrip()) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict or checkpoint mapping")
    return obj


def _unpickler_detail(message: str) -> str:
    """The informative sentence of torch's weights-only error (its message is mostly advice to load unsafely,
    which we do not give), e.g. "Trying to load unsupported GLOBAL posix.system ..." or "Unsupported operand"."""
    marker = "WeightsUnpickler error:"
    if marker in message:
        message = message.split(marker, 1)[1]
    for line in message.splitlines():
        line = line.strip()
        if not line or line.startswith(("Weights only load failed", "Check the documentation", "Please file")):
            continue
        detail = _without_unsafe_advice(line[:300])
        if detail:
            return detail
    return "unpickling failed"


_UNSAFE_ADVICE = re.compile(r"weights_only|This file can still be loaded|safe_globals|add_safe_globals|"
                            r"trust the source|arbitrary code", re.IGNORECASE)


def _without_unsafe_advice(text: str) -> str:
    """``text`` without torch's sentences that suggest loading the file unsafely (``weights_only=False``,
    allow-listing its globals): for a file we refused, that advice is the attack."""
    sentences = re.split(r"(?<=[.!?])\s+", text)
    return " ".join(sentence for sentence in sentences if not _UNSAFE_ADVICE.search(sentence)).strip()


def extract_state_dict(obj: dict[str, Any], path: str | Path = "checkpoint") -> dict[str, torch.Tensor]:
    """The model state dict inside a legacy checkpoint mapping (raw, or under ``state_dict``/``model``)."""
    for key in ("state_dict", "model", "state_dict_ema", "model_ema"):
        inner = obj.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return _named_tensors(inner, path)
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return _named_tensors(obj, path)
    raise CheckpointError(f"{path}: no model state dict found (looked for the keys 'state_dict' and "
                          f"'model', and for a raw mapping of tensors); top-level keys: "
                          f"{sorted(map(repr, obj))[:10]}")


def _named_tensors(state: dict[Any, torch.Tensor], path: str | Path) -> dict[str, torch.Tensor]:
    """``state`` if every key is a parameter name (a string); a pickle may use any hashable."""
    odd = [key for key in state if not isinstance(key, str)]
    if odd:
        raise CheckpointError(f"{path}: the state dict has non-string keys ({', '.join(map(repr, odd[:4]))}); "
                              f"parameter names are strings: the file is not a model's state dict")
    return state


def read_model_state(path: str | Path, use_ema: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A model state dict in this package's names, from any supported file, and its metadata."""
    if is_safetensors(path):
        tensors, metadata = read_checkpoint(path)
        state = _model_tensors(tensors, metadata, use_ema)
    else:
        obj = read_legacy_checkpoint(path)
        state, metadata = extract_state_dict(obj, path), {}
    return checkpoint_filter_fn(state), metadata


def _model_tensors(tensors: dict[str, torch.Tensor], metadata: dict[str, Any], use_ema: bool
                   ) -> dict[str, torch.Tensor]:
    """The model's part of an own file's tensors: all of a weights file, ``model.*`` (or ``ema.*``) of a
    training state."""
    prefix = "ema." if use_ema and any(k.startswith("ema.") for k in tensors) else "model."
    if metadata.get("layout") == WEIGHTS_LAYOUT:
        return tensors  # a plain state dict
    if any(key.startswith(prefix) for key in tensors):  # a training state, or a weights file before v2
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    return tensors


_SAFETENSORS_TORCH_DTYPES = {"BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16,
                             "U16": torch.uint16, "F16": torch.float16, "BF16": torch.bfloat16, "I32": torch.int32,
                             "U32": torch.uint32, "F32": torch.float32, "I64": torch.int64, "U64": torch.uint64,
                             "F64": torch.float64, "F8_E5M2": torch.float8_e5m2, "F8_E4M3": torch.float8_e4m3fn}


def described_model_state(path: str | Path, use_ema: bool = False
                          ) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The model state an own safetensors file describes, as ``meta`` tensors read from its header alone (no
    data byte is read), and its metadata; ``None`` for other files. Lets names and shapes be checked against
    a model before a file of any length is read."""
    if not is_safetensors(path):
        return None
    header, metadata = read_checkpoint_header(Path(path))
    tensors = {name: torch.empty(entry["shape"], dtype=_SAFETENSORS_TORCH_DTYPES[entry["dtype"]], device="meta")
               for name, entry in header.items() if name != "__metadata__"}
    return checkpoint_filter_fn(_model_tensors(tensors, metadata, use_ema)), metadata


def match_state_dict(model: nn.Module, state: dict[str, torch.Tensor], strict: bool = True,
                     source: str = "checkpoint", ignore: tuple[str, ...] = ()) -> None:
    """Load ``state`` into ``model``; on a mismatch raise ``CheckpointError`` naming keys and shapes."""
    expected = model.state_dict()
    check_state_fits(model, state, strict, source, ignore)
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)


def _dtype_kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "bool"
    if dtype.is_complex:
        return "complex"
    return "floating-point" if dtype.is_floating_point else "integer"


def check_state_fits(model: nn.Module, state: dict[str, torch.Tensor], strict: bool = True,
                     source: str = "checkpoint", ignore: tuple[str, ...] = ()) -> None:
    """Raise ``CheckpointError`` unless ``state`` fits ``model``: names, shapes, and the kind of dtype (float
    weights stored as int64 or bool would be cast silently and evaluate garbage). Works on a ``meta`` model."""
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
    wrong_kind = [f"{k} ({state[k].dtype}, the model has {expected[k].dtype})" for k in expected
                  if k in state and _dtype_kind(state[k].dtype) != _dtype_kind(expected[k].dtype)]
    if wrong_kind:
        shown = ", ".join(wrong_kind[:4]) + (f", ... ({len(wrong_kind)} in all)" if len(wrong_kind) > 4 else "")
        raise CheckpointError(f"{source}: tensors of the wrong kind of dtype: {shown}; the file was not written "
                              f"from this model's weights (corrupt or forged)")
    non_finite = [k for k in expected if k in state and state[k].is_floating_point()
                  and state[k].device.type != "meta" and not bool(torch.isfinite(state[k]).all())]
    if non_finite:
        shown = ", ".join(non_finite[:4]) + (f", ... ({len(non_finite)} in all)" if len(non_finite) > 4 else "")
        raise CheckpointError(f"{source}: non-finite values (NaN or infinite) in {shown}; these weights would "
                              f"evaluate to NaN: use a checkpoint saved before the run diverged")


def load_checkpoint(model: nn.Module, path: str | Path, strict: bool = True, use_ema: bool = False
                    ) -> dict[str, Any]:
    """Load weights from an own or official checkpoint into ``model``; returns the file's metadata."""
    state, metadata = read_model_state(path, use_ema=use_ema)
    match_state_dict(unwrap_model(model), state, strict=strict, source=str(path))
    return metadata


# A config stored in a checkpoint describes a model; it does not get to pick this machine's paths, process
# count or memory. Keys a file may not set (reset to these values unless an override sets them here):
LOCAL_ONLY = {("data", "cache_dir"): None, ("train", "out_dir"): "runs/default", ("train", "resume"): None,
              ("model", "pretrained"): None, ("data", "download"): False, ("train", "threads"): None,
              ("train", "compile"): False, ("train", "tensorboard"): False}
def local_worker_limit() -> int:
    """The most loader workers a checkpoint's config may start here: this machine's cores, at most 8."""
    return max(0, min(8, os.cpu_count() or 1))


def stored_config(path: str | Path, metadata: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()):
    """The validated ``Config`` stored in a checkpoint, made safe to act on here: ``LOCAL_ONLY`` keys reset,
    ``data.num_workers`` capped at ``local_worker_limit()``, sizes beyond ``STORED_SIZE_LIMITS`` refused.
    ``overrides`` are this user's choices and win over all of it."""
    from .config import apply_overrides, config_from_dict, parse_override

    raw = metadata.get("config")
    if not raw:
        raise CheckpointError(f"{path} carries no config (an official or plain weight file): build the model "
                              f"with spikformer.create_model(...) and use spikformer.load_checkpoint(model, path)")
    if isinstance(raw, dict) and all(isinstance(v, dict | None) for v in raw.values()):
        raw = _bounded_locally(path, raw, {parse_override(text)[:2] for text in overrides})
    # (anything else is refused by apply_overrides below, with the file named)
    try:
        config = config_from_dict(apply_overrides(raw, list(overrides)))
    except ConfigError as error:
        raise ConfigError(f"{path}: {error} (in the config stored in the checkpoint, overrides applied; a "
                          f"section.key=value override can change it)") from None
    config.model.pretrained = None
    return config


MAX_CLASS_NAME_CHARS = 256


def stored_class_names(path: str | Path, metadata: dict[str, Any]) -> list[str] | None:
    """The class names in label order that a checkpoint's metadata stores under ``class_names`` (written by
    training when its dataset names its classes), or None when it stores none. Checked: a list of at most
    ``STORED_SIZE_LIMITS``' class count of distinct, non-empty strings of bounded length."""
    names = metadata.get("class_names")
    if names is None:
        return None
    limit = STORED_SIZE_LIMITS[("model", "num_classes")]
    if not (isinstance(names, list) and 0 < len(names) <= limit
            and all(isinstance(n, str) and 0 < len(n) <= MAX_CLASS_NAME_CHARS for n in names)
            and len(set(names)) == len(names)):
        raise CheckpointError(f"{path}: its class_names are not a list of 1 to {limit} distinct names of 1 to "
                              f"{MAX_CLASS_NAME_CHARS} characters; the file is damaged or was not written by "
                              f"spikformer")
    return names


def checkpoint_class_names(path: str | Path) -> list[str] | None:
    """``stored_class_names`` of any checkpoint file (None for files that cannot store them: official and
    legacy ``.pth`` weights)."""
    return stored_class_names(path, read_checkpoint_metadata(path)) if is_safetensors(path) else None


def _bounded_locally(path: str | Path, raw: dict[str, Any], chosen: set[tuple[str, str]]) -> dict[str, Any]:
    raw = {name: dict(values or {}) for name, values in raw.items()}
    for (section, key), value in LOCAL_ONLY.items():
        if section in raw:
            raw[section].pop(key, None)
            if value is not None:
                raw[section][key] = value
    check_stored_sizes(path, raw, chosen)
    workers = raw.get("data", {}).get("num_workers")
    if ("data", "num_workers") not in chosen and isinstance(workers, int) and workers > local_worker_limit():
        raw["data"]["num_workers"] = local_worker_limit()
    return raw


def load_model_from_checkpoint(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
                               use_ema: bool = True):
    """Rebuild the model an own checkpoint describes and load its weights: ``(model, config)``.
    ``overrides`` (``section.key=value``) change the stored config, e.g. ``model.T=8``."""
    from .models import build_model

    described = described_model_state(path, use_ema=use_ema)
    if described is not None:
        # The weights, not the config's word, say how big the model is: check the config's model against the
        # file's header on the meta device (no memory) before a byte of tensor data is read.
        config = stored_config(path, described[1], overrides)
        with torch.device("meta"):
            check_state_fits(build_model(config.model), described[0], strict=True, source=str(path))
    state, metadata = read_model_state(path, use_ema=use_ema)
    config = stored_config(path, metadata, overrides)
    with torch.device("meta"):
        check_state_fits(build_model(config.model), state, strict=True, source=str(path))
    model = build_model(config.model)
    match_state_dict(model, state, strict=True, source=str(path))
    return model, config
