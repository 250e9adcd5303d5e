"""Shared test set-up."""

from __future__ import annotations

import os

import pytest
import torch

# Under pytest-xdist each worker owns one core: one intra-op thread each, because torch's thread pool on an
# oversubscribed core spends its time waiting on the other threads (tens of times slower).
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# The commands tune glibc's malloc of their process (spikformer.allocator). Tests call them inside the test
# process, which must keep glibc's defaults for the tests after them (the memory soak reads the resident
# set): the allocator's own tests switch it on where they measure it.
os.environ.setdefault("SPIKFORMER_KEEP_FREED_MEMORY", "0")


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; skipped without one (benchmarks/gpu_check.sh runs "
                            "exactly these: pytest -m gpu)")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(no_gpu)
