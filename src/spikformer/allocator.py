"""Freed memory kept in the process: no page faults for every activation tensor of every step.

glibc's ``malloc`` serves buffers above its mmap threshold (at most 32 MiB, adjusted as it goes) with fresh
pages from the kernel and unmaps them when freed, and trims the heap's free top beyond its trim threshold;
PyTorch's CPU allocator calls ``malloc`` for every tensor. A training step of ``spikformer_cifar_4_384`` at
batch 32 allocates its activations afresh every step, and so takes about 40,000 page faults a step
(1 to 5% of its CPU time; docs/performance.md, "The CPU allocator", measured by
benchmarks/bench_cpu_kernels.py). :func:`keep_freed_memory` raises
both thresholds, so freed buffers are reused: the resident set stays at the step's peak instead of
following its allocations down and up again.

The ``spikformer`` commands call it when they start (``SPIKFORMER_KEEP_FREED_MEMORY=0`` leaves glibc's
defaults); the library never changes the allocator of a process it is imported into: a program that wants
the same calls :func:`keep_freed_memory` itself. Elsewhere (macOS, musl, Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1  # glibc's mallopt() parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
KEEP_BYTES = 1 << 30  # buffers up to 1 GiB come from the heap; up to 1 GiB of free heap top is kept
ENV_SWITCH = "SPIKFORMER_KEEP_FREED_MEMORY"


def keep_freed_memory(keep_bytes: int = KEEP_BYTES) -> bool:
    """Ask glibc's ``malloc`` to keep freed memory of this process for reuse (see the module docstring).

    Returns whether it took effect: False off glibc or where ``mallopt`` refuses."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, keep_bytes)) and bool(mallopt(_M_TRIM_THRESHOLD, keep_bytes))


def keep_freed_memory_unless_disabled() -> bool:
    """:func:`keep_freed_memory`, unless ``SPIKFORMER_KEEP_FREED_MEMORY=0`` (what the commands call)."""
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return keep_freed_memory()
