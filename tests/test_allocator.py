"""The commands keep freed memory in the process (glibc's malloc tuned once at start), so the tensors of every
training step reuse buffers instead of paying page faults again; the library alone never touches it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from spikformer import allocator, cli

FAULTS_PER_STEP = textwrap.dedent("""
    import resource, sys, torch
    from spikformer import allocator
    if sys.argv[1] == "keep":
        assert allocator.keep_freed_memory()
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    per_step = []
    for _ in range(12):  # a "step": activations of 48 and 12 MiB, above any threshold glibc would pick
        before = faults()
        a = torch.empty(12 << 20).fill_(1.0)
        b = torch.empty(3 << 20).fill_(1.0)
        del a
        c = torch.empty(12 << 20).fill_(1.0)
        del b, c
        per_step.append(faults() - before)
    print(*per_step)
""")


def page_faults_per_step(mode: str) -> list[int]:
    result = subprocess.run([sys.executable, "-c", FAULTS_PER_STEP, mode], capture_output=True, text=True,
                            check=True, timeout=120)
    return [int(n) for n in result.stdout.split()]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_kept_memory_serves_a_steps_buffers_again_without_page_faults():
    defaults, kept = page_faults_per_step("defaults"), page_faults_per_step("keep")
    assert min(defaults[-4:]) > 10_000  # 48 MiB of fresh 4 KiB pages, every step
    # kept: the first steps grow the heap (PyTorch's 64-byte aligned requests take a few steps to fit into
    # freed buffers), then the buffers are reused
    assert max(kept[-4:]) < 100


def test_every_command_keeps_freed_memory_unless_switched_off(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(True) or True)
    monkeypatch.delenv(allocator.ENV_SWITCH, raising=False)  # (conftest switches it off for the test process)
    assert cli.main(["configs"]) == 0
    assert calls == [True]
    monkeypatch.setenv(allocator.ENV_SWITCH, "0")
    assert cli.main(["configs"]) == 0
    assert calls == [True]  # not called again


def test_only_the_command_line_entry_point_changes_the_allocator():
    import spikformer

    package = Path(spikformer.__file__).parent
    callers = sorted(p.name for p in package.rglob("*.py") if "keep_freed_memory" in p.read_text())
    assert callers == ["allocator.py", "cli.py"]
