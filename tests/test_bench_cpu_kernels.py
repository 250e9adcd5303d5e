"""benchmarks/bench_cpu_kernels.py (the figures docs/performance.md quotes for the CPU kernels and the
allocator) runs end to end on a tiny batch and reports every row."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from spikformer.fast.kernels import cpu

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not (sys.platform.startswith("linux") and cpu.available()), reason="the CPU kernels, /proc")
def test_the_kernel_benchmark_measures_both_kernels_both_dtypes_and_both_allocators(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "bench_cpu_kernels.py", "--batch", "2", "--repeats", "1", "--steps", "2",
                             "--no-record"], cwd=ROOT / "benchmarks", env=env, capture_output=True, text=True,
                            timeout=300, check=True)
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith("| ")]
    kernels = [r for r in rows if r[0].strip().startswith(("max-pool", "SSA"))]
    assert len(kernels) == 8  # 2 operations x 2 dtypes x (forward, forward+backward)
    assert all(float(r[-1].strip().rstrip("x")) > 0 for r in kernels)
    assert [r[0].strip() for r in rows if "glibc" in r[0] or "kept" in r[0]] == ["glibc defaults",
                                                                                 "kept (the commands)"]
