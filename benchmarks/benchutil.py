"""Shared helpers of the benchmark scripts: timing, machine description, and the docs/benchmarks.md log."""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_it(fn: Callable[[], object], device: torch.device | str, repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` in seconds over ``repeats`` runs, after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_interleaved(fns: dict[str, Callable[[], object]], device: torch.device | str, repeats: int,
                     warmup: int = 1) -> dict[str, float]:
    """Median wall time of each function in seconds, the functions taking turns in every round, so that a
    noisy neighbour (a shared machine) slows all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def cpu_model() -> str:
    from spikformer.fast.kernels.cpu import cpu_model_name

    return cpu_model_name()


def machine(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        what = f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}"
    else:
        flags = ""
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                text = f.read()
            flags = ", ".join(f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in text) or "no AVX-512"
        except OSError:
            pass
        what = f"{cpu_model()} ({flags}), {torch.get_num_threads()} threads"
        caps = isa_caps()
        if caps:
            what += f", run as an older CPU: PyTorch's kernels at {torch.backends.cpu.get_cpu_capability()}, " + \
                ", ".join(f"{name}={value}" for name, value in caps.items())
    load = ""
    if hasattr(os, "getloadavg"):
        load = f", load average {os.getloadavg()[0]:.1f} at start"
    return f"{what}; torch {torch.__version__}, Python {platform.python_version()}{load}"


# What runs this machine as an older one (docs/performance.md, "AVX2"): PyTorch's own kernels, oneDNN's
# convolutions and bf16 products, MKL's float32 products, and our C kernels, each held to an instruction set.
ISA_CAP_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "SPIKFORMER_CPU_ARCH")


def isa_caps() -> dict[str, str]:
    return {name: os.environ[name] for name in ISA_CAP_VARIABLES if os.environ.get(name)}


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def record(title: str, device: torch.device | str, table: str, notes: list[str] | None = None,
           path: Path = RESULTS, write: bool = True) -> None:
    """Print ``table`` with the machine, the command and the date, and write it into docs/benchmarks.md
    (``write=False``, the scripts' ``--no-record``: print only): in place of the table with the same heading,
    else as a new table before the page's "Other measurements", so that each heading appears once."""
    settings = "".join(f"{name}={shlex.quote(value)} " for name, value in isa_caps().items())
    command = settings + "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0]), *sys.argv[1:]])
    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    block = [f"### {title}", "", f"- date: {stamp}", f"- machine: {machine(device)}", f"- command: `{command}`",
             "", table, ""]
    block += [f"{note}" for note in notes or []]
    text = "\n".join(block).rstrip() + "\n\n"
    print("\n" + text)
    if not write:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    page = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n\n## Current tables\n\n"
    path.write_text(replace_table(page, f"### {title}", text), encoding="utf-8")


OTHER_MEASUREMENTS = "## Other measurements"


def replace_table(page: str, heading: str, text: str) -> str:
    """``page`` with the block under ``heading`` (up to the next heading) replaced by ``text``; a new heading's
    block goes before :data:`OTHER_MEASUREMENTS`, or at the end of a page without it."""
    lines = page.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip("\n") == heading), None)
    if start is None:
        end = start = next((i for i, line in enumerate(lines) if line.rstrip("\n") == OTHER_MEASUREMENTS), len(lines))
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(("## ", "### "))), len(lines))
    before = "".join(lines[:start])
    if before and not before.endswith("\n\n"):
        before += "\n"
    return before + text + "".join(lines[end:])


def run_worker(script: str, cfg: dict) -> dict:
    """Run ``script --worker CFG_JSON`` in a fresh interpreter (a clean peak-memory reading per configuration)
    and return the JSON dict its last output line holds."""
    cmd = [sys.executable, os.path.abspath(script), "--worker", json.dumps(cfg)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"configuration {cfg} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def forward_and_backward(fn: Callable, x: torch.Tensor, x_grad: torch.Tensor, grad: torch.Tensor
                         ) -> tuple[Callable[[], None], Callable[[], None]]:
    """The two timed steps of a layer benchmark: ``fn(x)`` without autograd, and ``fn(x_grad)`` then backward
    of ``grad`` (``x_grad`` is a leaf that requires grad; its gradient is cleared each call)."""

    def forward() -> None:
        with torch.no_grad():
            fn(x)

    def forward_backward() -> None:
        x_grad.grad = None
        fn(x_grad).backward(grad)

    return forward, forward_backward
