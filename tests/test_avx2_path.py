"""An AVX2-only machine's code paths, run on whatever x86 machine the tests have (docs/performance.md, "AVX2").

The sessions' machines are sometimes AVX2-only and sometimes AVX-512 with native bfloat16. The AVX-512 one
runs the other's paths when PyTorch's kernels are held at AVX2 (``ATEN_CPU_CAPABILITY``), oneDNN's too
(``ONEDNN_MAX_CPU_ISA``) and our C kernels are built for ``x86-64-v3`` (``SPIKFORMER_CPU_ARCH``): then the
attention kernel is off (it needs AVX-512), ``amp=auto`` keeps float32, and every kernel equivalence test
must pass as it does on the native build.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from spikformer.fast.kernels import cpu

ROOT = Path(__file__).resolve().parents[1]
AVX2_MACHINE = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                "SPIKFORMER_CPU_ARCH": "x86-64-v3"}
KERNEL_TESTS = ["tests/test_lif_backends.py", "tests/test_training_memory.py", "tests/test_attention_kernel.py",
                "tests/test_bf16_path.py", "tests/test_fast_model_path.py", "tests/test_amp_choice.py"]

pytestmark = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64") and cpu.available()
         and "avx2" in cpu.cpu_flags()),
    reason="needs the C kernels on an x86-64 CPU with AVX2")


def _run(args: list[str], tmp_path: Path, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, **AVX2_MACHINE, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1",
           "SPIKFORMER_CACHE_DIR": str(tmp_path / "kernels")}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_the_avx2_machine_has_float32_amp_and_a_kernel_without_avx512(tmp_path):
    probe = _run(["-c", "import torch; from spikformer.fast.kernels import cpu; from spikformer.train import engine; "
                  "print(torch.backends.cpu.get_cpu_capability(), cpu.available(torch.bfloat16), "
                  "cpu.spike_attention_vectorised(), engine.autocast_dtype(torch.device('cpu'), 'auto'))"],
                 tmp_path)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == ["AVX2", "True", "False", "None"]
    built = list((tmp_path / "kernels").glob("lif_cpu_*.so"))
    assert len(built) == 1
    assert built[0].name not in {p.name for p in cpu.cache_dir().glob("lif_cpu_*.so")}, \
        "the x86-64-v3 build must have its own cache key, not reuse the native library"


def test_every_kernel_equivalence_test_passes_on_the_avx2_build(tmp_path):
    result = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", *KERNEL_TESTS], tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout.splitlines()[-1]


def test_the_float32_benchmark_runs_as_the_avx2_machine_and_says_so(tmp_path, monkeypatch):
    result = _run(["bench_bf16.py", "--model", "spikformer_cifar_2_384", "--amp", "off", "--train-batch", "1",
                   "--infer-batch", "1", "--rounds", "1", "--threads", "1", "--no-record"], tmp_path,
                  cwd=ROOT / "benchmarks")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith("| ")]
    assert [(r[0].strip(), r[1].strip()) for r in rows[1:]] == [
        ("train", "ours"), ("train", "ours, spikes unpacked"), ("train", "ours, PyTorch's SSA products and max-pool"),
        ("train", "floor"), ("infer", "ours"), ("infer", "ours, BN folded"), ("infer", "floor")]
    assert "float32, eager" in result.stdout

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import benchutil

    for name, value in AVX2_MACHINE.items():
        monkeypatch.setenv(name, value)
    benchutil.record("a table", "cpu", "| a |\n|---|\n| 1 |", path=tmp_path / "unwritten.md", write=False)
    assert not (tmp_path / "unwritten.md").exists()  # --no-record prints only
    out = tmp_path / "benchmarks.md"
    benchutil.record("a table", "cpu", "| a |\n|---|\n| 1 |", path=out)
    text = out.read_text()
    assert "run as an older CPU: PyTorch's kernels at" in text and "ONEDNN_MAX_CPU_ISA=AVX2" in text
    assert "- command: `ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 " \
           "SPIKFORMER_CPU_ARCH=x86-64-v3 python " in text



def test_the_kernel_benchmark_runs_as_the_avx2_machine_without_its_bfloat16_allocator_rows(tmp_path):
    result = _run(["bench_cpu_kernels.py", "--batch", "2", "--repeats", "1", "--steps", "0", "--no-record"],
                  tmp_path, cwd=ROOT / "benchmarks")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith("| ")]
    assert len([r for r in rows if r[0].strip().startswith(("max-pool", "SSA"))]) == 8
    assert not any("glibc" in r[0] for r in rows)


AVX2_CPU_FLAGS = {"sse4_2", "avx", "avx2", "fma", "f16c", "bmi1", "bmi2"}


def test_a_target_the_cpu_cannot_run_is_refused_before_it_is_loaded(monkeypatch, tmp_path):
    compiler = cpu._compiler()
    monkeypatch.setattr(cpu, "cpu_flags", lambda: AVX2_CPU_FLAGS)
    cpu._check_arch_runs_here(compiler, "x86-64-v3")
    cpu._check_arch_runs_here(compiler, "native")
    with pytest.raises(RuntimeError, match=r"SPIKFORMER_CPU_ARCH=x86-64-v4 uses instructions this CPU lacks "
                                           r"\(avx512bw, avx512cd, avx512dq, avx512f, avx512vl\)"):
        cpu._check_arch_runs_here(compiler, "x86-64-v4")

    # As a user meets it: a warning that says why, and the pure-PyTorch backend; never an illegal instruction.
    monkeypatch.setenv("SPIKFORMER_CPU_ARCH", "x86-64-v4")
    monkeypatch.setenv("SPIKFORMER_CACHE_DIR", str(tmp_path))
    cpu._library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="lacks .*avx512f.*'fused' backend"):
            assert not cpu.available()
        assert not list(tmp_path.glob("*.so")), "nothing is built for a target that cannot run here"
    finally:
        monkeypatch.undo()
        cpu._library.cache_clear()
    assert cpu.available()


def test_a_build_for_a_named_target_is_shared_by_every_cpu_and_a_native_one_is_not(monkeypatch, tmp_path):
    monkeypatch.setenv("SPIKFORMER_CACHE_DIR", str(tmp_path))
    source, compiler = "int f(void) { return 1; }\n", cpu._compiler()
    monkeypatch.setenv("SPIKFORMER_CPU_ARCH", "x86-64-v3")
    monkeypatch.setattr(cpu, "_cpu_fingerprint", lambda: "model name: one CPU")
    v3_here = cpu._build(source, compiler)
    monkeypatch.setattr(cpu, "_cpu_fingerprint", lambda: "model name: another CPU")
    assert cpu._build(source, compiler) == v3_here
    monkeypatch.delenv("SPIKFORMER_CPU_ARCH")
    native_there = cpu._build(source, compiler)
    monkeypatch.setattr(cpu, "_cpu_fingerprint", lambda: "model name: one CPU")
    assert len({v3_here, native_there, cpu._build(source, compiler)}) == 3
