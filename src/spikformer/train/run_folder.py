"""Run folders: one run writes into a folder at a time, an earlier run's output is never reused silently, and a
resumed run continues with the settings it was started with.

Used by the trainer and the pre-trainer, in this order:

- ``lock_run_folder(out_dir)`` (a context manager, rank 0): an exclusive ``flock`` on ``<out_dir>/.spikformer.lock``
  that holds this process's id; a second run into the folder is refused naming the first one's. The lock file is
  never opened through a link, and the lock is bound to the folder's identity: a run whose folder is renamed or
  removed under it stops (``RunFolderLock.check_in_place``) instead of writing into a new folder of the old name.
  The kernel drops the lock when its process dies, so the lock of a killed run is taken over, never stale. While
  holding it, the temporary files of writes a kill interrupted (``.last.safetensors.*.tmp``) are removed.
- ``replace_run_file(path, text)``: how the run rewrites its own text files (``config.yaml``, a trimmed
  ``metrics.csv``): whole or not at all, like a checkpoint.
- ``prepare_run_folder(out_dir, resume, overwrite, config)``: decides between a fresh start and a resume and
  refuses a fresh start in a folder holding any earlier output, whichever files are missing, unless
  ``overwrite``.
- ``check_resume_matches(path, config)``: refuses to resume when a setting that changes what the run computes
  differs from the checkpoint's; ``SAFE_ON_RESUME`` lists the keys that may change (each with its reason).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

LOCK_FILE = ".spikformer.lock"
# What a training or pre-training run writes into its folder.
RUN_OUTPUTS = ("config.yaml", "metrics.csv", "last.safetensors", "best.safetensors", "encoder.safetensors",
               "reconstructions.png", "tensorboard", "train.log")
# Appended to by every start of the run (a restart, a resume): the run's history, not a result to protect.
APPENDED_OUTPUTS = ("tensorboard", "train.log")
CHECKPOINT_NAMES = ("last.safetensors", "best.safetensors", "encoder.safetensors")
# The files written atomically (a temporary file renamed over the target), whose temporaries a kill can leave.
ATOMIC_NAMES = (*CHECKPOINT_NAMES, "config.yaml", "metrics.csv")

# Keys that may differ between a checkpoint's config and the resumed run's; the new value applies from the
# resume on and config.yaml records it. Every other key must be equal (see docs/robustness.md).
SAFE_ON_RESUME = {
    "train.progress": "display only",
    "train.log_interval": "display only",
    "train.tensorboard": "output only",
    "train.device": "where the same computation runs (results agree up to floating-point rounding)",
    "train.threads": "CPU threads of the same computation",
    "train.compile": "how the same model is executed",
    "train.deterministic": "whether PyTorch must choose deterministic kernels for the same computation",
    "train.eval_every": "when validation runs; it does not change the weights",
    "train.save_every_steps": "when last.safetensors is written",
    "train.nan_policy": "what happens at a non-finite loss, which a healthy run never meets",
    "train.epochs": "applied: the run continues to the new length, and its learning-rate schedule is laid over "
                    "that length from the resume on (each step gets the rate a run of that length has there)",
    "train.resume": "how this run is started",
    "train.overwrite": "how this run is started",
    "train.out_dir": "where the resumed run writes (resuming from a checkpoint in another folder)",
    "data.root": "where the same dataset lives now",
    "data.cache_dir": "where the same frames are cached",
    "data.download": "whether missing files are fetched",
    "data.num_workers": "loader processes; with workers each sample's augmentation is seeded by its position, "
                        "so the count does not change it",
    "data.eval_batch_size": "validation batches (BatchNorm is in eval mode there)",
    "model.lif_backend": "another kernel of the same LIF arithmetic",
    "model.pretrained": "ignored on resume: the checkpoint's own weights are loaded",
    "ssl.num_visualize": "the figure only",
}


# --- one run per folder ------------------------------------------------------------------------------


@contextlib.contextmanager
def lock_run_folder(out_dir: str | Path, enabled: bool = True) -> Iterator[RunFolderLock | None]:
    """Hold ``out_dir``'s run lock for the ``with`` block and yield it (``enabled=False``: yield None, for
    ranks > 0)."""
    if not enabled:
        yield None
        return
    lock = RunFolderLock(out_dir)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()


class RunFolderLock:
    """An exclusive lock on a run folder, held by one process; ``acquire()`` refuses with ``ConfigError``
    naming the holder's process id.

    The lock is bound to the folder it was taken in (its device and inode), not to its name: the lock file is
    opened through the folder's own descriptor, without following links, and ``check_in_place()`` tells the
    run when the folder under its name is no longer that folder (renamed, removed, replaced), so that it stops
    instead of writing into a new folder of the old name that nobody has locked."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / LOCK_FILE
        self.fd: int | None = None
        self.dir_fd: int | None = None
        self.identity: tuple[int, int] | None = None

    def acquire(self) -> RunFolderLock:
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise ConfigError(f"train.out_dir {self.out_dir} is a file, not a folder; choose another train.out_dir")
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            dir_fd = os.open(self.out_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as error:
            raise ConfigError(f"cannot create the run folder train.out_dir={self.out_dir}: "
                              f"{error.strerror or error}; choose a writable train.out_dir") from None
        try:
            fd = self._lock_file(dir_fd)
        except BaseException:
            os.close(dir_fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        info = os.fstat(dir_fd)
        self.fd, self.dir_fd, self.identity = fd, dir_fd, (info.st_dev, info.st_ino)
        remove_orphan_temporaries(self.out_dir)
        return self

    def _lock_file(self, dir_fd: int) -> int:
        """The locked lock file inside the folder ``dir_fd``, opened as a regular file of one name (never
        through a link: its content is overwritten)."""
        for _ in range(10):  # the file may be replaced between open and flock by a run that just ended
            fd = self._open_lock_file(dir_fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise ConfigError(f"run folder {self.out_dir} is in use by another run (process {holder}); wait "
                                  f"for it to finish or stop it, or choose another train.out_dir") from None
            except OSError as error:  # a filesystem without flock: fall back to the process id in the file
                if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                    os.close(fd)
                    raise
                self._check_holder_alive(fd)
            if _same_file(fd, dir_fd):
                return fd
            os.close(fd)
        raise ConfigError(f"could not lock the run folder {self.out_dir}: its lock file keeps changing")

    def _open_lock_file(self, dir_fd: int) -> int:
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # O_NONBLOCK: a FIFO does not hang open
        try:
            try:
                fd = os.open(LOCK_FILE, flags | os.O_CREAT | os.O_EXCL, 0o666, dir_fd=dir_fd)
            except FileExistsError:
                fd = os.open(LOCK_FILE, flags, dir_fd=dir_fd)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise ConfigError(f"{self.path} is a symbolic link, and a run writes its lock file: remove it "
                                  f"(nothing else in {self.out_dir} needs it)") from None
            raise ConfigError(f"cannot open the run folder's lock file {self.path}: {error.strerror or error}; "
                              f"remove it, or choose a writable train.out_dir") from None
        info = os.fstat(fd)
        problem = ("is not a regular file" if not stat.S_ISREG(info.st_mode)
                   else "has other names (hard links)" if info.st_nlink > 1 else None)
        if problem:
            os.close(fd)
            raise ConfigError(f"{self.path} {problem}, and a run writes its lock file: remove it (nothing else in "
                              f"{self.out_dir} needs it)")
        return fd

    def _check_holder_alive(self, fd: int) -> None:
        holder = _read_holder(fd)
        pid = int(holder.split()[0]) if holder.split() and holder.split()[0].isdigit() else None
        if pid is not None and pid != os.getpid() and _alive(pid):
            os.close(fd)
            raise ConfigError(f"run folder {self.out_dir} is in use by another run (process {holder}); wait for "
                              f"it to finish or stop it, or choose another train.out_dir")

    def check_in_place(self) -> None:
        """Raise ``ConfigError`` unless ``out_dir`` still names the folder this lock was taken in."""
        if self.identity is None:
            return
        try:
            info = os.stat(self.out_dir)
            here = (info.st_dev, info.st_ino)
        except OSError:
            here = None
        if here == self.identity:
            return
        now = _current_path(self.dir_fd)
        where = f"it is now {now}" if now else "it is no longer there"
        hint = f"train.out_dir={now} train.resume=auto" if now else "train.resume=auto in a folder of its files"
        raise ConfigError(f"run folder {self.out_dir} was moved or removed while this run wrote it ({where}); the "
                          f"run stopped rather than write into another folder of that name. Continue it with "
                          f"{hint}")

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            # Through the folder's descriptor (wherever the folder is now), and only while it is still our file;
            # before unlocking: a waiting run then creates a fresh file (see acquire).
            if _same_file(self.fd, self.dir_fd):
                os.unlink(LOCK_FILE, dir_fd=self.dir_fd)
        os.close(self.fd)  # closing drops the flock
        os.close(self.dir_fd)
        self.fd = self.dir_fd = None


def _read_holder(fd: int) -> str:
    with contextlib.suppress(OSError):
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 200).decode(errors="replace").strip()
        if text:
            return text
    return "unknown"


def _same_file(fd: int, dir_fd: int) -> bool:
    """Whether ``fd`` is the file named ``LOCK_FILE`` in the folder ``dir_fd`` (not replaced since opened)."""
    try:
        mine, named = os.fstat(fd), os.stat(LOCK_FILE, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (mine.st_dev, mine.st_ino) == (named.st_dev, named.st_ino)


def _current_path(dir_fd: int | None) -> str | None:
    """Where the folder open as ``dir_fd`` is now (Linux's ``/proc``); None if it was removed or unknown."""
    if dir_fd is None:
        return None
    try:
        path = os.readlink(f"/proc/self/fd/{dir_fd}")
    except OSError:
        return None
    return None if path.endswith(" (deleted)") or not os.path.isdir(path) else path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def replace_run_file(path: str | Path, text: str) -> None:
    """Write a text file of the run folder whole or not at all. Rewritten in place, a kill or a full disk
    half-way would leave it cut short: a ``config.yaml`` that no longer matches the run (so the restart of a run
    killed before its first checkpoint is refused) or a ``metrics.csv`` without the rows of finished epochs."""
    from ..checkpoint import atomic_write_bytes

    atomic_write_bytes(path, text.encode())


def remove_orphan_temporaries(out_dir: Path) -> list[str]:
    """Delete the temporary files that atomic writes leave when a kill interrupts them
    (``.last.safetensors.<random>.tmp``). Only call it while holding the folder's lock: no write is running."""
    removed = []
    for name in ATOMIC_NAMES:
        for orphan in out_dir.glob(f".{name}.*.tmp"):
            with contextlib.suppress(OSError):
                orphan.unlink()
                removed.append(orphan.name)
    return removed


# --- fresh start or resume -----------------------------------------------------------------------------


def earlier_outputs(out_dir: Path) -> list[str]:
    """The names in ``out_dir`` that an earlier run wrote."""
    return [name for name in RUN_OUTPUTS if (out_dir / name).exists()]


def prepare_run_folder(out_dir: str | Path, resume: str | None, overwrite: bool,
                       config: dict[str, Any] | None = None) -> Path | None:
    """The checkpoint to resume from, or ``None`` for a fresh start in a folder that holds no earlier output
    (``overwrite`` deletes it first). ``config`` (the run's, as a dict) lets a restart of a run that was killed
    before its first checkpoint (only an identical ``config.yaml`` there) start again without ``overwrite``."""
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"train.out_dir {out_dir} is a file, not a folder; choose another train.out_dir")
    last = out_dir / "last.safetensors"
    if resume == "auto" and last.exists():
        return last
    if resume not in (None, "auto"):
        path = Path(resume).expanduser()
        if not path.exists():
            raise ConfigError(f"train.resume={resume}: no such checkpoint")
        found = [name for name in earlier_outputs(out_dir) if name != "config.yaml"]
        if found and path.resolve() != last.resolve() and not overwrite:
            raise ConfigError(f"train.resume={resume} continues another folder's run in {out_dir}, which holds an "
                              f"earlier run ({', '.join(found)}); choose an empty train.out_dir, or add "
                              f"--overwrite (train.overwrite=true) to replace that run")
        return path
    found = earlier_outputs(out_dir)
    # This very run, killed before it saved anything: nothing to lose. (Its TensorBoard folder holds at most
    # the first epoch's curves of the same run, which the restart writes again; its train.log continues.)
    saved = _saved_config(out_dir)
    # (compared as a resume compares: how the run is started, e.g. train.resume=auto, may differ)
    if [name for name in found if name not in APPENDED_OUTPUTS] == ["config.yaml"] and config is not None \
            and isinstance(saved, dict) and not resume_differences(saved, config):
        return None
    if found:
        if not overwrite:
            how = ("continue it with train.resume=auto, or start over with train.overwrite=true (--overwrite; "
                   "deletes its checkpoints)") if resume is None and last.exists() else (
                "it has no last.safetensors to continue from, so starting over would overwrite it: add "
                "--overwrite (train.overwrite=true; deletes its checkpoints), or choose another train.out_dir")
            raise ConfigError(f"run folder {out_dir} already holds a run ({', '.join(found)}); {how}")
        for name in found:
            target = out_dir / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot create the run folder train.out_dir={out_dir}: {error.strerror or error}; "
                          f"choose a writable train.out_dir") from None
    return None


def _saved_config(out_dir: Path) -> Any:
    try:
        return yaml.safe_load((out_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None


# --- resuming with the same settings ----------------------------------------------------------------------


def resume_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"section.key: saved -> current"`` for every key outside ``SAFE_ON_RESUME`` whose value differs. Keys
    the saved config lacks (written by an older version) cannot be compared and are skipped."""
    changes = []
    for section, values in current.items():
        stored = saved.get(section)
        if not isinstance(values, dict) or not isinstance(stored, dict):
            continue
        for key, value in values.items():
            name = f"{section}.{key}"
            if name in SAFE_ON_RESUME or key not in stored or _plain(stored[key]) == _plain(value):
                continue
            changes.append(f"{name} {_show(stored[key])} -> {_show(value)}")
    return changes


def check_resume_matches(path: str | Path, config: dict[str, Any]) -> None:
    """Raise ``ConfigError`` when the run's ``config`` differs from the one stored in checkpoint ``path`` in a
    key that changes what the run computes (model, data, batch, schedule, optimizer, seed ...)."""
    from ..checkpoint import read_checkpoint_metadata

    saved = read_checkpoint_metadata(path).get("config")
    if not isinstance(saved, dict):
        return  # no config to compare against (load_training_state says what is wrong with the file)
    changes = resume_differences(_resolved(saved), config)
    if changes:
        raise ConfigError(
            f"cannot resume from {path}: the run was started with other settings ({'; '.join(changes)}). Resume "
            f"with the checkpoint's settings (drop those overrides), or start a new run (another train.out_dir, "
            f"or --overwrite) - to begin from its weights, use model.pretrained={path}")


def _resolved(saved: dict[str, Any]) -> dict[str, Any]:
    """A stored config with its architecture written out, as today's runs store it: a checkpoint from before
    the architecture was resolved (``num_heads: null`` ...) then compares equal to the same run resumed now.
    A class count left open stays open (the run takes it from its data); a config that no longer validates
    is compared as it is (its differences are then named)."""
    from ..config import config_from_dict, config_to_dict
    from ..models import resolve_config

    try:
        resolved = config_to_dict(resolve_config(config_from_dict(saved), leave_num_classes_open=True))
    except (ConfigError, ValueError, TypeError):
        return saved
    if resolved["model"].get("num_classes") is None:
        resolved["model"].pop("num_classes")  # not comparable: decided by the data when the run started
    return resolved


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(_plain(value))
    return text if len(text) <= 60 else text[:57] + "..."
