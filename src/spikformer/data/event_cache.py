"""Caches of integrated event frames, so that only the first epoch parses event files.

A disk cache keeps one compressed ``.npz`` per recording under ``<cache_root>/<dataset>-<hash>/``, where the
hash covers everything that changes the frames (T, framing, input size, sensor, format version); a
``params.json`` beside the files says what they hold. Each file also stores the SHA-256 of the recording's
bytes it was computed from, and is used only for a recording with those bytes: a recording replaced under the
same name is framed again. Files are written atomically (temporary file, then
rename), so parallel loader workers and interrupted runs never leave a half-written frame file behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DatasetError

CACHE_FORMAT = 2  # bump when the framing code changes what a cached file holds (2: the recording's SHA-256)
logger = logging.getLogger(__name__)


def frame_cache_notice(text: str) -> None:
    """One line saying that a cached file was bad and is being rebuilt."""
    logger.warning("frame cache: %s", text)


MAX_EVENT_COUNT = 2**24  # the frames reach the model as float32, exact for integers up to 2^24


def cached_frames_problem(frames: np.ndarray, shape: tuple[int, ...]) -> str | None:
    """What is wrong with cached ``frames`` for the expected ``shape`` (event counts: integers in
    ``[0, MAX_EVENT_COUNT]``), or ``None``. A float array (where NaN could hide) is wrong by its dtype."""
    if not isinstance(frames, np.ndarray) or frames.dtype.kind not in "iu":
        return f"are {getattr(frames, 'dtype', type(frames).__name__)}, not integer event counts"
    if frames.shape != tuple(shape):
        return f"have the shape {list(frames.shape)} instead of {list(shape)}"
    if frames.size and frames.min() < 0:
        return "hold negative event counts"
    if frames.size and frames.max() > MAX_EVENT_COUNT:
        return f"hold {frames.max()} events in one pixel and frame, more than {MAX_EVENT_COUNT}"
    return None


def _new_file_mode() -> int:
    mask = os.umask(0o022)  # read and put back: the mode open() gives new files here
    os.umask(mask)
    return 0o666 & ~mask


def cache_folder_name(dataset: str, params: dict[str, Any]) -> str:
    """``<dataset>-<12 hex digits>``: a stable name for one combination of framing parameters."""
    text = json.dumps({"format": CACHE_FORMAT, **params}, sort_keys=True)
    return f"{dataset}-{hashlib.sha1(text.encode()).hexdigest()[:12]}"


class MemoryFrameCache:
    """Frames kept in this process (the embedded digits-dvs default; lost when the process ends)."""

    def __init__(self) -> None:
        self.frames: dict[str, tuple[str | None, np.ndarray]] = {}

    def get(self, key: str, source: str | None = None) -> np.ndarray | None:
        stored = self.frames.get(key)
        return stored[1] if stored is not None and stored[0] == source else None

    def put(self, key: str, frames: np.ndarray, source: str | None = None) -> None:
        self.frames[key] = (source, frames)


class DiskFrameCache:
    """One ``<key>.npz`` per recording in ``folder`` (keys may contain ``/``: sub-folders)."""

    def __init__(self, folder: str | Path, params: dict[str, Any]) -> None:
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            info = self.folder / "params.json"
            if not info.exists():
                info.write_text(json.dumps({"format": CACHE_FORMAT, **params}, indent=2, sort_keys=True) + "\n")
        except OSError as error:
            raise DatasetError(
                f"cannot create the frame cache {self.folder} ({error.strerror or error}); set data.cache_dir to a "
                f"writable folder"
            ) from None

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.npz"

    def describe(self, key: str) -> str:
        return f"cache file {self.path(key)}:"

    def get(self, key: str, source: str | None = None) -> np.ndarray | None:
        """The frames cached under ``key`` if they were computed from a recording whose bytes hash to
        ``source`` (``None``: a recording without a file)."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                cached_source = str(stored["source"]) if "source" in stored.files else ""
                if cached_source != (source or ""):
                    return None  # computed from other bytes (or by an older version): frame it again
                return stored["frames"]
        except Exception as error:  # noqa: BLE001 - NumPy and zipfile fail on damaged files in many ways
            # Truncated, CRC-damaged or not ours: recompute and overwrite, so that later runs do not meet it again.
            # (Only the first sentence of the error: NumPy's goes on to suggest loading pickles.)
            detail = str(error).split(". ")[0].splitlines()[0][:120] if str(error) else ""
            frame_cache_notice(f"{path} is unreadable ({type(error).__name__}: {detail}); recomputing it")
            return None

    def put(self, key: str, frames: np.ndarray, source: str | None = None) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
        try:
            with os.fdopen(handle, "wb") as out:
                np.savez_compressed(out, frames=frames, source=np.array(source or ""))
            os.chmod(temp, _new_file_mode())  # mkstemp makes 0600; the cache is shared like any other file
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
