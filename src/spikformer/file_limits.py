"""Bounds on what a file may make this process allocate, checked before the allocation.

A file is small on disk and large in memory in three ways: it is sparse or lies about its length (a 6 GiB
safetensors file of zeros, a 4 GiB ``config.json``), it is compressed (a 1 MB zip ``.pth`` inflating to 1 GiB),
or it asks for sizes (a stored config's ``T x img_size x batch_size``). Readers call these checks first and
raise one line naming the file and the bound.
"""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path
from typing import Any

from .errors import CheckpointError

MAX_JSON_FILE_BYTES = 16 * 2**20  # a timm config.json is a few kilobytes
# torch.save stores zip members uncompressed; a member that inflates more than this is not one of its files.
MAX_ZIP_INFLATION = 4
# Sizes a file may state, at most (an override may choose larger ones). Above them a model or a batch would
# take more memory than any machine has, far beyond every published Spikformer (T <= 16, width <= 768).
STORED_SIZE_LIMITS = {("model", "T"): 256, ("model", "embed_dim"): 4096, ("model", "depth"): 64,
                      ("model", "img_size"): 1024, ("model", "num_heads"): 64, ("model", "num_classes"): 100_000,
                      ("model", "in_chans"): 16, ("model", "patch_size"): 256, ("model", "mlp_ratio"): 16,
                      ("data", "batch_size"): 4096, ("data", "eval_batch_size"): 4096, ("ssl", "T"): 256,
                      ("ssl", "decoder_dim"): 4096, ("ssl", "decoder_depth"): 64, ("ssl", "decoder_heads"): 64,
                      ("ssl", "num_visualize"): 64}
# The largest activation a stored config may imply: the stem's first feature map, T x batch x embed_dim / 8 x
# img_size^2 elements (ImageNet 8-768 at T=4 and batch 64: 1.2e9). 2^33 float32 values are 32 GiB.
MAX_STORED_ACTIVATION = 2**33


def file_size(path: str | Path, limit: int, what: str) -> int:
    """The size of the regular file ``path``; ``CheckpointError`` if it is larger than ``limit`` bytes (its
    length is what counts: a sparse file is refused as well)."""
    try:
        info = os.stat(path)
    except OSError as error:
        raise CheckpointError(f"{what} {path} cannot be read: {error.strerror or error}") from None
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointError(f"{what} {path} is not a regular file")
    if info.st_size > limit:
        raise CheckpointError(f"{what} {path} is {info.st_size} bytes, more than the {limit} such a file can "
                              f"need; the file is corrupt or not what its name says")
    return info.st_size


def read_bounded_bytes(path: str | Path, limit: int, what: str) -> bytes:
    """The bytes of ``path``, refused above ``limit`` before any is read."""
    file_size(path, limit, what)
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:  # grew since it was measured
        raise CheckpointError(f"{what} {path} is more than {limit} bytes; the file is corrupt")
    return data


def check_zip_inflation(path: str | Path) -> None:
    """Refuse a zip file (a ``torch.save`` archive) whose members inflate to more than ``MAX_ZIP_INFLATION``
    times the file's size, before ``torch.load`` inflates them."""
    path = Path(path)
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as archive:
            inflated = sum(member.file_size for member in archive.infolist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return  # torch.load reports the damage in its own words
    size = path.stat().st_size
    if inflated > MAX_ZIP_INFLATION * size + 2**20:
        raise CheckpointError(f"{path}: its zip members inflate to {inflated} bytes from a {size}-byte file; "
                              f"torch.save stores them uncompressed, so this is not a PyTorch checkpoint (or a "
                              f"hostile one)")


def check_stored_sizes(path: str | Path, raw: dict[str, Any], chosen: set[tuple[str, str]]) -> None:
    """Refuse sizes a stored config (``{section: {key: value}}``) asks for beyond ``STORED_SIZE_LIMITS``, one by
    one and by the product they multiply to (``MAX_STORED_ACTIVATION``), unless this user ``chose`` them."""
    for (section, key), limit in STORED_SIZE_LIMITS.items():
        value = (raw.get(section) or {}).get(key)
        if (section, key) not in chosen and isinstance(value, int | float) and value > limit:
            raise CheckpointError(f"{path}: its stored config asks for {section}.{key}={str(value)[:30]}, more "
                                  f"than the {limit} a checkpoint may ask for; choose it yourself with the "
                                  f"override {section}.{key}=N if you mean it")
    model, data = raw.get("model") or {}, raw.get("data") or {}
    batch_key = max(("batch_size", "eval_batch_size"), key=lambda k: data.get(k) if _positive(data.get(k)) else 0)
    factors = {("model", "T"): model.get("T"), ("model", "embed_dim"): model.get("embed_dim"),
               ("model", "img_size"): model.get("img_size"), ("data", batch_key): data.get(batch_key)}
    # What the file asks for: its own factors (a size this user chose counts as 1, the default when absent)
    stored = {where: value for where, value in factors.items() if where not in chosen and _positive(value)}
    values = {key: stored.get((section, key), 1) for section, key in factors}
    activation = (values["T"] * values[batch_key] * max(1, values["embed_dim"] // 8)) * values["img_size"] ** 2
    if activation > MAX_STORED_ACTIVATION:
        named = " x ".join(f"{section}.{key}={value}" for (section, key), value in stored.items())
        raise CheckpointError(f"{path}: its stored config asks for {named}: a first feature map of "
                              f"{activation:.2g} values (T x batch x embed_dim/8 x img_size^2), more than the "
                              f"{MAX_STORED_ACTIVATION:.2g} a checkpoint may ask for; choose the sizes yourself "
                              f"with overrides (e.g. data.{batch_key}=N) if you mean it")


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0
