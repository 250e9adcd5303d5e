"""Recordings of the real event datasets on disk, indexed and read by tonic's own dataset classes.

tonic's classes download when their files are missing; ``TonicFiles`` opens them with the download switched
off (the files are where ``data.root`` says), keeps the index as plain paths and labels, and reads recording
``i`` through the class's ``__getitem__`` — so the on-disk format is exactly the one tonic reads. The tonic
object is dropped when the reader is sent to a loader worker and re-opened there on first use.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DatasetError


def tonic_module():
    try:
        import tonic
    except ImportError:
        raise DatasetError("the event-camera datasets need the tonic package: pip install 'spikformer[events]'") \
            from None
    return tonic


def refuse_download(download: bool, dataset: str, layout: str) -> None:
    """``data.download=true`` is refused for the real event datasets, not ignored: we read the extracted layout
    that the tests cover and do not run tonic's downloader, so the archives are fetched by hand (docs/events.md)."""
    if download:
        raise ConfigError(f"data.download=true cannot fetch {dataset}: download its release by hand and extract it "
                          f"so that data.root holds {layout} (docs/events.md), then set data.download=false")


def locate_release(root: str | None, folder: str, dataset: str, layout: str) -> Path:
    """The folder that holds ``folder/`` (tonic's ``save_to``), given ``data.root`` pointing at it or at
    ``folder`` itself."""
    if root is None:
        raise ConfigError(f"data.name={dataset} needs data.root: the folder that holds {layout} "
                          f"(e.g. data.root=/data/neuromorphic)")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetError(f"data.root {path} is not a folder; {dataset} expects {layout}")
    if (path / folder).is_dir():
        return path
    if path.name == folder:
        return path.parent
    raise DatasetError(f"data.root {path} holds no {folder}/ folder; {dataset} expects {layout}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def natural_key(text: str) -> list:
    """Sort key that orders ``x_2`` before ``x_10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


class TonicFiles:
    """The recordings of one tonic dataset object: ``paths``, ``labels``, and ``read(i)`` / ``describe(i)``.

    ``open_dataset()`` builds the tonic object (a picklable callable, e.g. a ``functools.partial``);
    ``read_error`` turns a reader exception into the message shown to the user (the path is added).
    """

    def __init__(self, dataset: str, open_dataset: Callable[[], Any], folder: Path, hint: str) -> None:
        self.dataset = dataset
        self.open_dataset = open_dataset
        self.folder = folder
        self.hint = hint
        self._tonic = open_dataset()
        self.paths = [Path(p) for p in self._tonic.data]
        self.labels = [int(t) for t in self._tonic.targets]
        self._position = {str(p): i for i, p in enumerate(self.paths)}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_tonic"] = None  # re-opened in the worker: tonic objects may hold unpicklable classes
        return state

    def tonic_dataset(self) -> Any:
        if self._tonic is None:
            self._tonic = self.open_dataset()
            self._position = {str(p): i for i, p in enumerate(self._tonic.data)}
        return self._tonic

    def read(self, index: int) -> np.ndarray:
        path = self.paths[index]
        dataset = self.tonic_dataset()
        if str(path) not in self._position:
            raise DatasetError(f"the recording {path} disappeared since the dataset was indexed")
        try:
            events, _ = dataset[self._position[str(path)]]
        except DatasetError:
            raise
        except ImportError as error:
            raise DatasetError(f"reading {path} needs the {error.name or 'missing'} package: "
                               f"pip install 'spikformer[events]'") from None
        except Exception as error:  # the readers' own errors (RuntimeError, ValueError, OSError ...) name no file
            raise DatasetError(f"cannot read the {self.dataset} recording {path}: {_first_line(error)}. "
                               f"{self.hint}") from None
        except BaseException as error:
            # The aedat decoder (Rust) panics on some corrupt files with pyo3's PanicException, which derives
            # from BaseException; only that is caught here (KeyboardInterrupt and SystemExit pass).
            if type(error).__name__ != "PanicException":
                raise
            raise DatasetError(f"cannot read the {self.dataset} recording {path}: its decoder failed "
                               f"({_first_line(error)}). {self.hint}") from None
        return events

    def describe(self, index: int) -> str:
        return str(self.paths[index])

    def fingerprint(self, index: int) -> str:
        """The SHA-256 of recording ``index``'s file: its cached frames are used only for these bytes."""
        path = self.paths[index]
        digest = hashlib.sha256()
        try:
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(2**20), b""):
                    digest.update(block)
        except OSError as error:
            raise DatasetError(f"cannot read the {self.dataset} recording {path}: {error.strerror or error}") \
                from None
        return digest.hexdigest()

    def key(self, index: int) -> str:
        """The cache name of recording ``index``: its path below the dataset folder, without extension."""
        return self.paths[index].relative_to(self.folder).with_suffix("").as_posix()
