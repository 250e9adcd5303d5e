"""Loader worker processes and signals: a SIGTERM or SIGINT from outside (a scheduler signalling the whole job)
leaves them working, so the main process can finish its step and save; their own parent still stops them,
and a main process that exits with an iteration unfinished does not wait on them forever."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from spikformer.data import build_loader

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sender of a signal is Linux's")
SOURCE = str(Path(__file__).resolve().parents[1] / "src")
HANG = 60  # seconds: far beyond the second these take; past it, a process is waiting forever


class Numbers(Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, index: int):
        return torch.tensor([float(index)]), index


@pytest.fixture
def worker_iterator(monkeypatch):
    """A training loader's iteration over ``Numbers`` with 2 workers: PyTorch's own iterator (which lists its
    workers), as the loader returns it with ``SPIKFORMER_DEBUG`` set."""
    monkeypatch.setenv("SPIKFORMER_DEBUG", "1")
    return lambda: iter(build_loader(Numbers(), 4, train=True, num_workers=2))


def alive(process) -> bool:
    process.join(timeout=0)
    return process.is_alive()


def test_a_signal_from_outside_leaves_the_workers_serving_batches(worker_iterator):
    iterator = worker_iterator()
    # Sent by another process, at once: the workers may not have run their init yet (each epoch starts new ones).
    subprocess.run(["kill", "-TERM", *(str(worker.pid) for worker in iterator._workers)], check=True)
    first = next(iterator)
    for worker in iterator._workers:
        for signum in (signal.SIGTERM, signal.SIGINT):
            subprocess.run(["kill", f"-{signum.name[3:]}", str(worker.pid)], check=True)
    time.sleep(0.5)
    assert all(alive(worker) for worker in iterator._workers)
    assert len([first, *iterator]) == 16  # every batch of the epoch still arrives
    del iterator


def test_the_workers_parent_still_stops_them_with_sigterm(worker_iterator):
    iterator = worker_iterator()
    next(iterator)
    workers = list(iterator._workers)
    for worker in workers:
        worker.terminate()  # what multiprocessing does to daemon processes when their parent exits
    for worker in workers:
        worker.join(timeout=HANG)
    assert not any(worker.is_alive() for worker in workers)


def test_a_process_that_exits_with_an_unfinished_epoch_does_not_wait_on_its_workers():
    # A loader iteration still referenced when the interpreter exits (an exception kept in a reference cycle
    # does that to a run stopped mid-epoch): multiprocessing then stops its daemonic workers with terminate()
    # and waits for them.
    script = textwrap.dedent("""
        import sys, torch
        from spikformer.data import build_loader

        class Numbers(torch.utils.data.Dataset):
            def __len__(self):
                return 64
            def __getitem__(self, index):
                return torch.tensor([float(index)]), index

        unfinished = iter(build_loader(Numbers(), 4, train=True, num_workers=2))
        next(unfinished)
        sys.exit(3)
    """)
    result = subprocess.run([sys.executable, "-c", script], env={"PYTHONPATH": SOURCE, "OMP_NUM_THREADS": "1"},
                            timeout=HANG, capture_output=True, text=True)
    assert result.returncode == 3, result.stderr[-2000:]
