"""The C kernels' build: one header declares what the library exports, the ctypes side is read from it, and a
build that cannot happen says why (``spikformer.fast.status()``, ``spikformer build-kernels``)."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import resources

import pytest
import torch

from spikformer import fast
from spikformer.fast.kernels import cpu

KERNELS = resources.files("spikformer.fast.kernels")


def c_parameters(params: str) -> list[str]:
    return [" ".join(p.split()) for p in params.split(",")]


def test_every_function_the_c_source_exports_is_declared_in_the_header_with_the_same_parameters():
    source = KERNELS.joinpath("lif_cpu.c").read_text()
    header = KERNELS.joinpath(cpu.HEADER).read_text()
    defined = {name: c_parameters(params) for name, params in re.findall(r"^int (\w+)\(([^)]*)\)\s*\{", source, re.M)}
    declared = {name: c_parameters(params) for name, params in re.findall(r"^int (\w+)\(([^)]*)\);", header, re.M)}
    assert defined and defined == declared


def test_the_dtype_codes_are_the_headers():
    header = KERNELS.joinpath(cpu.HEADER).read_text()
    codes = dict(re.findall(r"LIF_(\w+) = (\d+)", header))
    names = {"F32": torch.float32, "F64": torch.float64, "BF16": torch.bfloat16, "F16": torch.float16}
    assert {names[k]: int(v) for k, v in codes.items()} == cpu._DTYPE_CODES


def test_the_ctypes_signatures_are_read_from_the_header():
    header = "int f(int dtype, const void *x, int64_t n, double tau, float s);\nint g(void);\n"
    import ctypes

    assert cpu.header_signatures(header) == {
        "f": [ctypes.c_int, ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_float],
        "g": [],
    }


@pytest.mark.skipif(not cpu.available(), reason="needs the C kernels")
def test_the_loaded_library_declares_every_header_function_as_the_header_says():
    lib = cpu._library()
    for name, argtypes in cpu.header_signatures(KERNELS.joinpath(cpu.HEADER).read_text()).items():
        assert getattr(lib, name).argtypes == argtypes, name


def test_a_kernel_build_that_cannot_happen_is_reported_with_its_reason(monkeypatch):
    monkeypatch.setenv("SPIKFORMER_NO_CPU_KERNEL", "1")
    cpu._library.cache_clear()
    try:
        status = fast.status()["cpu_kernels"]
    finally:
        monkeypatch.delenv("SPIKFORMER_NO_CPU_KERNEL")
        cpu._library.cache_clear()
    assert status["built"] is False and "SPIKFORMER_NO_CPU_KERNEL" in status["reason"]
    assert status["target"] == "native"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernels build on Linux")
def test_build_kernels_builds_into_the_cache_and_names_the_target(tmp_path):
    env = {"SPIKFORMER_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)}
    result = subprocess.run(
        [sys.executable, "-m", "spikformer", "build-kernels"], capture_output=True, text=True, env=env, timeout=600
    )
    built = list(tmp_path.glob("lif_cpu_*.so"))
    if cpu.available():
        assert result.returncode == 0, result.stderr
        assert len(built) == 1 and str(built[0]) in result.stdout and "target native" in result.stdout
    else:
        assert result.returncode != 0 and not built


@pytest.mark.skipif(not cpu.available(torch.float32), reason="needs the C kernels")
def test_the_max_pool_kernel_is_a_custom_op_that_fake_tensors_and_autograd_see_as_one_op():
    from spikformer.fast.memory import _max_pool_cpu

    x = (torch.rand(2, 8, 9, 9) < 0.3).float().contiguous(memory_format=torch.channels_last).requires_grad_()
    torch.library.opcheck(
        _max_pool_cpu,
        (x, [3, 3], [2, 2], [1, 1], True),
        test_utils=("test_schema", "test_faketensor", "test_autograd_registration"),
    )


@pytest.mark.skipif(not cpu.spike_attention_vectorised(), reason="the attention kernel runs with AVX-512 only")
def test_the_attention_kernel_is_a_custom_op_that_fake_tensors_and_autograd_see_as_one_op():
    from spikformer.fast.attention import _spike_attention_cpu

    q, k, v = ((torch.rand(2, 1, 64, 16) < 0.3).float().requires_grad_() for _ in range(3))
    torch.library.opcheck(
        _spike_attention_cpu,
        (q, k, v, 2, 0.125),
        test_utils=("test_schema", "test_faketensor", "test_autograd_registration"),
    )
