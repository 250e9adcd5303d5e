"""benchmarks/bench_gpu.py, the one-command GPU benchmark, runs its whole logic on the CPU with --dry-run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_gpu.py"


def test_gpu_benchmark_dry_run_measures_every_table_and_prints_the_anchors(tmp_path):
    pytest.importorskip("spikingjelly")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(SCRIPT), "--dry-run"], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    for row in ("ours, LIF", "ours, BatchNorm->LIF", "SpikingJelly ", "memory floor"):
        assert row in out, row
    for autocast in ("float16", "bfloat16"):
        for mode in ("train", "infer"):
            for path in ("ours", "reference"):
                assert f"| {mode} | {autocast} | {path} |" in out
    assert "70 images/s" in out and "133 images/s" in out
    assert not (tmp_path / "docs").exists()  # a dry run records nothing
