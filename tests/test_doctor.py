"""``spikformer doctor``: devices, dtype support, and the backend of every fused op on this machine with the
reason for it, in a few lines; a C build that fails is reported with its error, not hidden."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from spikformer import neurons as neuron
from spikformer.cli import main
from spikformer.commands import doctor

FUSED_OPS = ("LIF", "BatchNorm->LIF", "attention products", "max-pool", "1-bit spike packing")


def run_doctor(tmp_path, **env) -> subprocess.CompletedProcess:
    """The command in a fresh interpreter (the C kernel's build is cached per process)."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "SPIKFORMER_CACHE_DIR": str(tmp_path), **env}
    return subprocess.run(
        [sys.executable, "-m", "spikformer", "doctor", "--json"],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )


def test_doctor_names_versions_devices_and_the_backend_of_every_fused_op_in_a_few_lines(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) <= 16
    assert out[0].startswith("spikformer ") and f"torch {torch.__version__}" in out[0]
    assert out[1].startswith("cpu: ") and "bfloat16" in out[1]
    for op in FUSED_OPS:
        assert any(line.strip().startswith(op) for line in out), op
    lif = next(line for line in out if line.strip().startswith("LIF "))
    assert lif.split()[1] == neuron.default_backend("cpu", torch.float32)
    assert any(line.startswith("cuda") for line in out) and out[-1].startswith("torch.compile: ")


def test_doctor_json_holds_the_same_choices_as_the_ops_make():
    facts = doctor.report()
    json.dumps(facts)  # serialisable as it is
    cpu = {o["op"]: o for o in facts["cpu"]["ops"]}
    assert list(cpu) == list(FUSED_OPS)
    assert cpu["LIF"]["backend"] == neuron.default_backend("cpu", torch.float32)
    assert all(o["reason"] for o in cpu.values())


@pytest.mark.parametrize(
    "env, reason",
    [
        ({"CC": "false"}, "build failed: "),
        ({"SPIKFORMER_NO_CPU_KERNEL": "1"}, "switched off by SPIKFORMER_NO_CPU_KERNEL"),
    ],
    ids=["failing-compiler", "switched-off"],
)
def test_doctor_reports_the_fallback_and_its_reason_when_the_c_kernels_are_unavailable(tmp_path, env, reason):
    result = run_doctor(tmp_path, **env)
    assert result.returncode == 0, result.stderr[-2000:]
    cpu = json.loads(result.stdout)["cpu"]
    assert cpu["c_kernels"] == "unavailable" and cpu["c_kernels_reason"].startswith(reason)
    ops = {o["op"]: o for o in cpu["ops"]}
    assert ops["LIF"]["backend"] == "fused" and ops["BatchNorm->LIF"]["backend"] == "fused"
    assert all(ops[op]["backend"] == "torch" for op in ("attention products", "max-pool", "1-bit spike packing"))
    assert all("no C kernel" in o["reason"] for o in ops.values())


def fake_gpu(monkeypatch, backend: str) -> None:
    """A visible sm_90 device as torch.cuda describes it, and the LIF backend ``"auto"`` would pick on it."""
    props = SimpleNamespace(name="NVIDIA H100 80GB HBM3", major=9, minor=0, total_memory=80 * 2**30)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    monkeypatch.setattr(neuron, "default_backend", lambda device, dtype: backend if device == "cuda" else "c")


def test_doctor_describes_a_gpu_its_capability_and_the_triton_lif(monkeypatch):
    fake_gpu(monkeypatch, "triton")
    ops, facts = doctor.cuda_choices()
    assert facts["capability"] == "sm_90" and facts["bfloat16"] == "native" and facts["memory_gib"] == 80
    choices = {o.op: o for o in ops}
    assert list(choices) == list(FUSED_OPS)
    assert choices["LIF"].backend == "triton" and choices["LIF"].reason.startswith("Triton ")
    text = doctor.lines({**doctor.report(), "cuda": {**facts, "ops": [o.__dict__ for o in ops]}})
    assert any(line.startswith("cuda:0 NVIDIA H100 80GB HBM3 (sm_90, 80.0 GiB, 1 visible)") for line in text)


def test_doctor_says_why_a_gpu_falls_back_to_pure_pytorch_without_triton(monkeypatch):
    fake_gpu(monkeypatch, "fused")
    monkeypatch.setattr(doctor, "_triton_version", lambda: None)
    ops, facts = doctor.cuda_choices()
    lif = next(o for o in ops if o.op == "LIF")
    assert facts["triton"] == "not installed"
    assert lif.backend == "fused" and lif.reason == "pure PyTorch: Triton is not installed"
