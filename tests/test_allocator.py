"""The commands keep freed memory in the process (glibc's malloc tuned once at start), so the tensors of every
training step reuse buffers instead of paying page faults again; the library alone never touches it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from spikformer import allocator, cli

FAULTS_OF_A_REALLOCATION = textwrap.dedent("""
    import resource, sys, torch
    from spikformer import allocator
    if sys.argv[1] == "keep":
        assert allocator.keep_freed_memory()
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(2):  # a step's activation: 48 MiB, above any threshold glibc would pick itself
        before = faults()
        torch.empty(12 << 20).fill_(1.0)  # allocated, touched, freed
        used = faults() - before
    print(used)
""")


def page_faults_of_the_second_allocation(mode: str) -> int:
    result = subprocess.run([sys.executable, "-c", FAULTS_OF_A_REALLOCATION, mode], capture_output=True, text=True,
                            check=True, timeout=120)
    return int(result.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_kept_memory_serves_a_steps_buffers_again_without_page_faults():
    defaults, kept = page_faults_of_the_second_allocation("defaults"), page_faults_of_the_second_allocation("keep")
    assert defaults > 10_000  # 48 MiB of fresh 4 KiB pages, every time
    assert kept < 100


def test_every_command_keeps_freed_memory_unless_switched_off(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(True) or True)
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
