"""The GPU check (benchmarks/gpu_check.sh, benchmarks/bench_gpu.py) proven on the CPU: its dry run resolves the
wheels, installs nothing, collects the GPU tests and sets up every benchmark row at toy size; each row is
isolated (an error, a dead worker or a hang costs that row only) and the record survives a killed run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks" / "bench_gpu.py"

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_gpu  # noqa: E402

sys.path.pop(0)


def env(**extra) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1", **extra}


def bench(out: Path, *args: str, **extra) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCH), "--dry-run", "--out", str(out), *args],
        capture_output=True,
        text=True,
        env=env(**extra),
        timeout=900,
    )


def rows(out: Path) -> dict[str, dict]:
    return {r["id"]: r for r in json.loads((out / "gpu_check.json").read_text())["rows"]}


def test_the_plan_covers_every_model_time_steps_dtype_execution_and_path_most_wanted_first():
    plan = bench_gpu.plan()
    assert len(plan) == len(set(plan)) == 4 * 2 * 3 * 2 * 3
    assert {r.model for r in plan} == {
        "spikformer_cifar_4_384",
        "spikformer_8_512",
        "spikformer_v2_8_512",
        "spikformer_dvs_2_256",
    }
    assert {(r.T, r.dtype, r.compile, r.path) for r in plan} >= {
        (1, "float16", True, "peer"),
        (4, "float32", False, "reference"),
    }
    assert plan[0].id == "spikformer_cifar_4_384|T4|bfloat16|eager|ours"
    first_compiled = next(i for i, r in enumerate(plan) if r.compile)
    assert all(r.T == 4 for r in plan[:first_compiled])  # every T=4 eager row before any compilation
    assert [r.id for r in bench_gpu.plan(["spikformer_8_512|T1|*|compile|ours"])] == [
        f"spikformer_8_512|T1|{d}|compile|ours" for d in ("bfloat16", "float16", "float32")
    ]


def test_a_bfloat16_row_of_the_cupy_reference_is_recorded_as_unsupported_never_run():
    row = bench_gpu.Row("spikformer_8_512", 4, "bfloat16", False, "reference")
    assert "float32/float16 only" in bench_gpu.not_applicable(row, "cupy")
    assert bench_gpu.not_applicable(row, "torch") is None  # SpikingJelly's torch LIF takes bfloat16
    assert bench_gpu.not_applicable(bench_gpu.Row("spikformer_8_512", 4, "float16", False, "reference"), "cupy") is None
    v2 = bench_gpu.Row("spikformer_v2_8_512", 4, "float16", False, "peer")
    assert "no Spikformer V2" in bench_gpu.not_applicable(v2, "cupy")


def test_gpu_check_dry_run_resolves_the_wheels_installs_nothing_and_sets_up_every_row(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "spikingjelly-0.0.0.0.14-py3-none-any.whl").write_bytes(b"")  # present; the others are missing
    out, sites = tmp_path / "out", tmp_path / "sites"
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", str(out)],
        capture_output=True,
        text=True,
        timeout=1500,
        cwd=tmp_path,
        env=env(PYTHON=sys.executable, GPU_CHECK_WHEELS=str(wheels), GPU_CHECK_SITES=str(sites)),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = result.stdout
    assert f"spikingjelly==0.0.0.0.14 -> reference: {wheels}/spikingjelly-0.0.0.0.14-py3-none-any.whl" in text
    assert "spikingjelly==2.0.0 -> peer: missing" in text and "setuptools==80.9.0 -> build: missing" in text
    assert f"would run: {sys.executable} -m pip install --no-deps --no-index --find-links {wheels} ." in text
    assert f"--target {sites}/reference {wheels}/spikingjelly-0.0.0.0.14-py3-none-any.whl" in text
    assert not sites.exists()  # nothing installed
    assert "LIF" in (out / "doctor.txt").read_text()
    collected = (out / "tests.log").read_text()
    assert (
        "test_triton_lif_matches_reference_on_gpu" in collected and "test_gpu_fast_path_matches_the_oracle" in collected
    )
    record = rows(out)
    assert len(record) == len(bench_gpu.plan())
    statuses = {r["status"] for r in record.values()}
    assert statuses <= {"ok", "set up", "not applicable", "not installed"}, statuses
    assert all(
        record[r.id]["status"] == "ok" for r in bench_gpu.plan() if r.path == "ours" and bench_gpu.dry_run_steps(r)
    )
    table = (out / "gpu_check.md").read_text()
    assert "| `spikformer_dvs_2_256` | 4 | float16 | compile | ours | spikformer, LIF: " in table


def test_without_spikingjelly_its_rows_say_how_to_install_it_and_the_rest_run(tmp_path):
    shadow = tmp_path / "shadow" / "spikingjelly"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'spikingjelly'\", name='spikingjelly')\n"
    )
    result = bench(
        tmp_path / "out",
        "--only",
        "spikformer_cifar_4_384|T1|bfloat16|eager|*",
        PYTHONPATH=os.pathsep.join([str(shadow.parent), *sys.path]),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stdout + result.stderr
    record = rows(tmp_path / "out")
    reference = record["spikformer_cifar_4_384|T1|bfloat16|eager|reference"]
    assert reference["status"] == "not installed" and "pip install 'spikformer[dev]'" in reference["error"]
    assert record["spikformer_cifar_4_384|T1|bfloat16|eager|peer"]["status"] == "not installed"
    assert record["spikformer_cifar_4_384|T1|bfloat16|eager|ours"]["status"] == "ok"


def test_a_row_that_raises_kills_its_worker_or_hangs_costs_that_row_only(tmp_path):
    cifar, dvs = "spikformer_cifar_4_384|T1|{}|eager|ours", "spikformer_dvs_2_256|T1|{}|eager|ours"
    faults = {cifar.format("bfloat16"): "raise", cifar.format("float16"): "exit", dvs.format("bfloat16"): "hang"}
    result = bench(
        tmp_path / "out",
        "--only",
        cifar.format("*"),
        "--only",
        dvs.format("*"),
        "--row-seconds",
        "20",
        *[a for row, kind in faults.items() for a in ("--inject-fault", f"{row}={kind}")],
    )
    assert result.returncode == 0, result.stderr[-2000:]
    record = rows(tmp_path / "out")
    assert record[cifar.format("bfloat16")]["status"] == "error"
    assert "RuntimeError: injected fault" in record[cifar.format("bfloat16")]["error"]
    assert record[cifar.format("float16")]["status"] == "error"
    assert record[cifar.format("float16")]["error"].startswith("worker died (exit 9)")
    assert record[dvs.format("bfloat16")]["status"] == "timeout"
    for row in (cifar.format("float32"), dvs.format("float16"), dvs.format("float32")):
        assert record[row]["status"] == "set up", record[row]
    table = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "error: RuntimeError: injected fault" in table and "timeout: stopped at row deadline" in table


def test_rows_the_budget_cannot_reach_are_listed_as_not_run(tmp_path):
    result = bench(tmp_path / "out", "--only", "spikformer_8_512|T4|*|eager|ours", "--budget", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert {r["status"] for r in rows(tmp_path / "out").values()} == {"not run"}
    assert (
        "Not run within the budget (3 rows; rerun them with `--only`)"
        in (tmp_path / "out" / "gpu_check.md").read_text()
    )


def test_a_killed_run_keeps_every_row_finished_before_it(tmp_path):
    out = tmp_path / "out"
    hung = "spikformer_cifar_4_384|T1|float16|eager|ours"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(BENCH),
            "--dry-run",
            "--out",
            str(out),
            "--only",
            "spikformer_cifar_4_384|T1|*|eager|ours",
            "--inject-fault",
            f"{hung}=hang",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env(),
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if (out / "gpu_check.json").exists() and rows(out)[hung]["status"] == "running":
                break
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    record = rows(out)
    assert record["spikformer_cifar_4_384|T1|bfloat16|eager|ours"]["status"] == "ok"
    assert record[hung]["status"] == "running"
    assert record["spikformer_cifar_4_384|T1|float32|eager|ours"]["status"] == "not run"
