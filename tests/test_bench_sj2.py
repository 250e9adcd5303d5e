"""benchmarks/bench_sj2.py, the side-by-side run against SpikingJelly 2.x's Spikformer, on a tiny config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
pytest.importorskip("spikingjelly.activation_based.model.spikformer")  # SpikingJelly 2.x


def test_cifar10_4_384_is_spikingjellys_own_spikformer_cifar10():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from bench_sj2 import sj2_model
    finally:
        sys.path.remove(str(BENCHMARKS))
    sizes = dict(name="spikformer_cifar_4_384", T=4, in_chans=3, img_size=32, patch_size=4, num_classes=10,
                 embed_dim=384, num_heads=12, mlp_ratio=4.0, depth=4)
    model, built = sj2_model(sizes)
    assert built == "spikformer_cifar10()"
    assert (model.embed_dims, model.num_heads, model.depths, model.T) == (384, 12, 4, 4)
    _, other = sj2_model({**sizes, "depth": 2})
    assert other.startswith("Spikformer(")


def test_tiny_side_by_side_run_prints_every_setting_and_records_nothing(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    tiny = ["--set", "model.embed_dim=16", "--set", "model.depth=1", "--set", "model.num_heads=2",
            "--set", "model.T=2", "--train-batch", "2", "--infer-batch", "2", "--repeats", "1", "--no-record"]
    done = subprocess.run([sys.executable, str(BENCHMARKS / "bench_sj2.py"), *tiny], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith(("| commands |", "| library |"))]
    assert [row.split(" | ")[:2] for row in rows] == [["| commands", "ours"], ["| commands", "spikingjelly 2.x"],
                                                      ["| library", "ours"], ["| library", "spikingjelly 2.x"]]
    assert all(" | 1.00x | " in row for row in rows if "| ours |" in row)
    assert "width 16, 1 blocks, 2 heads, T=2" in done.stdout
