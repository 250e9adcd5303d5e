"""The GPU benchmark: whole-model training and inference throughput and absolute peak memory, row by row,
within a time budget (benchmarks/gpu_check.sh runs it after the GPU tests, in under 8 minutes on one H100).

Usage: python benchmarks/bench_gpu.py --out runs/gpu-check [--budget 330] [--row-seconds 30]
           [--compile-row-seconds 150] [--only 'spikformer_8_512|T4|*'] [--site reference=DIR --site peer=DIR]
       python benchmarks/bench_gpu.py --dry-run --out /tmp/x    # every row's set-up on the CPU at toy sizes

A row is one model x T x autocast dtype x execution (eager or ``torch.compile``) x path, measured for training
(forward, cross-entropy, backward, AdamW ``fused=True``; float16 with a GradScaler) and inference
(``inference_mode``): images per second (median step) and the absolute peak of ``torch.cuda.max_memory_allocated``.
Models: ``spikformer_cifar_4_384``, ``spikformer_8_512``, ``spikformer_v2_8_512``, ``spikformer_dvs_2_256``
(event frames), T in {1, 4}, float32 / bfloat16 / float16 autocast. Paths, each row naming its backend:

- ``ours``: this package's model (its LIF backend as ``"auto"`` picks it: Triton on CUDA);
- ``reference``: the same weights computed the way the original research code does (``bench_model.py``'s
  ``RefSpikformer``: SpikingJelly 0.0.0.0.14 ``MultiStepLIFNode``, cupy where cupy imports, else torch). Its
  cupy LIF takes float32/float16 only: a bfloat16 row records that and is not run. V2 has no original-code path;
- ``peer``: SpikingJelly 2.x's own ``Spikformer`` at the variant's sizes, its LIF forced to its Triton kernels
  (``SJ_LIF_CUDA_IMPLEMENTATION=triton``). V2 has no counterpart there.

Rows run in priority order (see :func:`plan`) in worker processes, one per run of consecutive rows of a path;
each row has a deadline (``--row-seconds``, ``--compile-row-seconds``) and the whole run a budget
(``--budget``). A row that raises records its error, one past its deadline records a timeout, and the worker is
restarted for the rest; rows the budget cannot reach are listed as not run (``--only`` reruns them). After every
row ``gpu_check.json`` (the record, with ``spikformer doctor``'s report) and ``gpu_check.md`` (the table) are
rewritten, so a killed run keeps everything measured so far.

Time, estimated for an H100 (none measured yet): ``spikformer_8_512`` costs 8.4 GMAC per image and time step
forward (PyTorch's FLOP counter; V2 9.7, CIFAR 0.93, DVS 0.38), so a training step at T=4, batch 32 is about
6.4 TFLOP: 0.02-0.03 s of bfloat16 products and about 0.15 s of float32 ones (TF32 off), plus the LIF and
BatchNorm passes over memory; say 0.05-0.1 s (bfloat16) and 0.15-0.25 s (float32) per step.
With 2 warm-up and up to 10 timed steps per mode an eager row then takes 3-8 s (the reference path about
twice that), a compiled one 40-120 s, and each worker start 5-10 s. The default budget (about 380 s inside
gpu_check.sh's 450) covers the 36 T=4 eager rows (about 240 s), the compiled ``spikformer_8_512`` row, and part
of the T=1 rows; the remaining rows follow in a second run with ``--only``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import fnmatch
import gc
import json
import os
import platform
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODELS = {  # name -> (train batch, infer batch)
    "spikformer_cifar_4_384": (64, 256),
    "spikformer_8_512": (32, 64),
    "spikformer_v2_8_512": (32, 64),
    "spikformer_dvs_2_256": (32, 64),
}
DTYPES = ("bfloat16", "float16", "float32")
TIME_STEPS = (4, 1)
PATHS = ("ours", "reference", "peer")
TOY = dict(embed_dim=32, depth=1, num_heads=2, img_size=32)  # --dry-run sizes (every patch size divides 32)
PEER_ENV = {"SJ_LIF_CUDA_IMPLEMENTATION": "triton"}
ANCHORS = (
    "Published anchors: Spikformer-8-512 (T=4), the original code: about 70 images/s of training per "
    "V100; Spike-driven Transformer 8-512: about 133 images/s per A800."
)
MISSING = {
    "reference": "spikingjelly 0.0.0.0.14 is not installed: pip install 'spikformer[dev]', or carry its wheel "
    "(benchmarks/gpu_wheels.sh)",
    "peer": "spikingjelly 2.x is not installed: carry its wheel (benchmarks/gpu_wheels.sh), --site peer=DIR",
}


@dataclasses.dataclass(frozen=True)
class Row:
    model: str
    T: int
    dtype: str
    compile: bool
    path: str

    @property
    def id(self) -> str:
        return f"{self.model}|T{self.T}|{self.dtype}|{'compile' if self.compile else 'eager'}|{self.path}"


def plan(only: list[str] | None = None) -> list[Row]:
    """Every row, most wanted first: T=4 eager (ours, reference, peer); ours compiled, bfloat16, T=4, on
    ``spikformer_8_512``; T=1 eager; the other compiled bfloat16 T=4 rows (ours, peer, reference); then the
    remaining compiled rows. ``only``: glob patterns on :attr:`Row.id`."""

    def rows(T, compile_, paths, dtypes=DTYPES, models=tuple(MODELS)):
        return [Row(m, T, d, compile_, p) for p in paths for m in models for d in dtypes]

    ordered = (
        rows(4, False, PATHS)
        + rows(4, True, ("ours",), ("bfloat16",), ("spikformer_8_512",))
        + rows(1, False, PATHS)
        + rows(4, True, ("ours", "peer", "reference"), ("bfloat16",))
        + rows(4, True, PATHS)
        + rows(1, True, PATHS)
    )
    seen, out = set(), []
    for row in ordered:
        if row not in seen and (not only or any(fnmatch.fnmatchcase(row.id, p) for p in only)):
            seen.add(row)
            out.append(row)
    return out


def dry_run_steps(row: Row) -> bool:
    """Whether ``--dry-run`` takes training and inference steps on ``row`` (every other row is set up only:
    model, inputs, optimizer, ``torch.compile`` wrapper): each model and path once at T=1, eager, the autocast
    dtypes taking turns over the models, and each path once compiled (dynamo tracing, no code generation)."""
    turn = DTYPES[list(MODELS).index(row.model) % len(DTYPES)]
    if row.compile:
        return row.T == 1 and row.model == "spikformer_cifar_4_384" and row.dtype == "bfloat16"
    return row.T == 1 and row.dtype == turn


def not_applicable(row: Row, reference_backend: str | None) -> str | None:
    """Why ``row`` is recorded without running, or None. ``reference_backend``: the reference path's LIF
    backend on this machine (``"cupy"``/``"torch"``), None when its SpikingJelly is missing."""
    if row.path in ("reference", "peer") and row.model.startswith("spikformer_v2"):
        return "no original-code path for V2" if row.path == "reference" else "SpikingJelly 2.x has no Spikformer V2"
    if row.path == "reference" and reference_backend == "cupy" and row.dtype == "bfloat16":
        return "SpikingJelly 0.0.0.0.14's cupy LIF takes float32/float16 only"
    return None


# --- one row, inside a worker ------------------------------------------------------------------------------


def _sj_version() -> str | None:
    try:
        from importlib import metadata

        return metadata.version("spikingjelly")
    except Exception:
        return None


def reference_backend(device_type: str) -> str | None:
    """The LIF backend the reference path gets here: cupy where it imports on CUDA, else torch; None without
    SpikingJelly 0.0.0.0.14 (its ``clock_driven`` package)."""
    try:
        import spikingjelly.clock_driven.neuron  # noqa: F401
    except ImportError:
        return None
    if device_type == "cuda":
        try:
            import cupy  # noqa: F401

            return "cupy"
        except ImportError:
            pass
    return "torch"


def _peer_model(name: str, T: int, toy: bool):
    """SpikingJelly 2.x's Spikformer at the sizes of our variant ``name``."""
    from spikingjelly.activation_based.model.spikformer import Spikformer as PeerSpikformer

    from spikformer.models import get_variant

    v = dataclasses.asdict(get_variant(name))
    if toy:
        v.update(TOY)
    return PeerSpikformer(
        T=T,
        in_channels=v["in_chans"],
        img_size_h=v["img_size"],
        img_size_w=v["img_size"],
        patch_size=v["patch_size"],
        num_classes=v["num_classes"],
        embed_dims=v["embed_dim"],
        num_heads=v["num_heads"],
        mlp_ratio=v["mlp_ratio"],
        depths=v["depth"],
    )


def _peer_backend() -> str:
    """The LIF implementation SpikingJelly 2.x selected on ``device`` (after a forward), as it names it."""
    try:
        from spikingjelly._ops.lif import _selection

        chosen = [
            *getattr(_selection, "_selections", {}).values(),
            *getattr(_selection, "_compiled_selections", {}).values(),
        ]
        names = {"torch reference (fallback)" if c is None else getattr(c, "name", str(c)) for c in chosen}
        return ", ".join(sorted(names)) or "none selected"
    except Exception as error:  # a private table: name what was asked if it moved
        return f"{PEER_ENV['SJ_LIF_CUDA_IMPLEMENTATION']} requested ({type(error).__name__} reading the choice)"


def build(row: Row, device, toy: bool):
    """``(net, params, reset, backend, sequence)``: the module to call, the module whose parameters train,
    a per-step state reset (or None), the row's backend in words, and whether inputs are event frames."""
    import torch

    from spikformer import create_model
    from spikformer.neurons import default_backend

    sequence = row.model.startswith("spikformer_dvs")
    kwargs = dict(TOY) if toy else {}
    if row.path == "peer":
        from spikingjelly.activation_based import functional

        peer = _peer_model(row.model, row.T, toy)

        class Peer(torch.nn.Module):  # its head gives logits per time step [T, B, classes]; ours, their mean
            def __init__(self) -> None:
                super().__init__()
                self.model = peer

            def forward(self, x):
                return self.model(x).mean(0)

        label = f"SpikingJelly {_sj_version()} Spikformer, LIF: {PEER_ENV['SJ_LIF_CUDA_IMPLEMENTATION']} requested"
        return Peer(), peer, lambda: functional.reset_net(peer), label, sequence
    model = create_model(row.model, T=row.T, **kwargs)
    if row.path == "ours":
        return model, model, None, f"spikformer, LIF: {default_backend(device.type, torch.float32)}", sequence
    backend = reference_backend(device.type)
    from bench_model import RefSpikformer

    class Reference(RefSpikformer):  # event frames [B, T, C, H, W] go in time-first, as the original code's
        def forward(self, x):
            if x.ndim == 4:
                return super().forward(x)
            from spikingjelly.clock_driven import functional

            functional.reset_net(self)
            x = self.patch_embed(x.transpose(0, 1).contiguous())
            for block in self.blocks:
                x = block(x)
            return self.head(x.mean(2).mean(0))

    ref = Reference(model, backend)
    return ref, model, None, f"original layout + SpikingJelly {_sj_version()} MultiStepLIFNode, {backend}", sequence


def _timed(step: Callable[[], None], sync: Callable[[], None], steps: int, seconds: float, warmup: int) -> float:
    """Median seconds per step: ``warmup`` untimed steps, then up to ``steps`` timed ones while ``seconds``
    last (at least one)."""
    for _ in range(warmup):
        step()
    sync()
    times: list[float] = []
    end = time.perf_counter() + seconds
    while len(times) < steps and (not times or time.perf_counter() < end):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_row(row: Row, cfg: dict) -> dict:
    import torch
    import torch.nn.functional as F

    device = torch.device(cfg["device"])
    toy = cfg["dry_run"]
    cuda = device.type == "cuda"
    dtype = getattr(torch, row.dtype)
    torch.manual_seed(0)
    net, params_of, reset, backend, sequence = build(row, device, toy)
    net, params_of = net.to(device), params_of.to(device)
    if row.compile:
        net = torch.compile(net, backend="eager") if toy else torch.compile(net)
    train_batch, infer_batch = (2, 2) if toy else MODELS[row.model]
    size, chans, classes = (32, 3, 10) if toy else (None, None, None)
    if not toy:
        from spikformer.models import get_variant

        v = get_variant(row.model)
        size, chans, classes = v.img_size, v.in_chans, v.num_classes
    if sequence:
        chans = 2

    def inputs(batch: int):
        gen = torch.Generator(device=device).manual_seed(0)
        if sequence:  # event counts per polarity, [B, T, 2, H, W]
            x = torch.randint(0, 3, (batch, row.T, chans, size, size), device=device, generator=gen).float()
        else:
            x = torch.randn(batch, chans, size, size, device=device, generator=gen)
        if row.path == "peer" and sequence:
            x = x.transpose(0, 1).contiguous()  # SpikingJelly 2.x takes sequences time-first
        return x, torch.randint(0, classes, (batch,), device=device, generator=gen)

    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    steps, warmup = (1, 1) if toy else (cfg["steps"], 2)
    share = cfg["row_seconds"] / 3  # timed steps of each mode; warm-up (and compilation) has the rest
    x_infer, _ = inputs(infer_batch)
    x, y = inputs(train_batch)
    optimizer = torch.optim.AdamW(params_of.parameters(), lr=1e-4, fused=cuda)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    if toy and not dry_run_steps(row):
        return {"status": "set up", "backend": backend, "note": "dry run: model, inputs and optimizer built, no step"}

    def infer() -> None:
        if reset:
            reset()
        with torch.inference_mode(), autocast:
            net(x_infer)

    def train() -> None:
        if reset:
            reset()
        with autocast:
            loss = F.cross_entropy(net(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    result: dict = {}
    params_of.eval(), net.eval()  # inference first: its peak is the weights' and the pass's, no optimizer state
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    seconds = _timed(infer, sync, steps, share, warmup)
    result["infer_images_per_s"] = infer_batch / seconds
    result["infer_peak_bytes"] = torch.cuda.max_memory_allocated(device) if cuda else None

    params_of.train(), net.train()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    seconds = _timed(train, sync, steps, share, warmup)
    result["train_images_per_s"] = train_batch / seconds
    result["train_peak_bytes"] = torch.cuda.max_memory_allocated(device) if cuda else None
    if row.path == "peer" and cuda:
        backend = f"SpikingJelly {_sj_version()} Spikformer, LIF: {_peer_backend()}"
    result.update(backend=backend, train_batch=train_batch, infer_batch=infer_batch)
    return result


def worker(cfg: dict) -> int:
    """Run ``cfg["rows"]`` in order, printing one ``RESULT {json}`` line per row. Exits 3 after an error that
    leaves CUDA unusable (the parent restarts a worker for the rest)."""
    import torch

    sys.path.insert(0, str(HERE))  # bench_model
    for row in (Row(**r) for r in cfg["rows"]):
        print("START " + row.id, flush=True)
        started = time.perf_counter()
        try:
            fault = cfg.get("faults", {}).get(row.id)
            if fault == "raise":
                raise RuntimeError("injected fault")
            if fault == "exit":
                os._exit(9)
            if fault == "hang":
                time.sleep(10**6)
            result = {"status": "ok", **run_row(row, cfg)}
        except Exception as error:
            text = "".join(traceback.format_exception_only(type(error), error)).strip()
            result = {"status": "error", "error": text[-1500:]}
        result["seconds"] = round(time.perf_counter() - started, 2)
        print("RESULT " + json.dumps({"id": row.id, **result}), flush=True)
        gc.collect()  # the row's model, optimizer and compiled graphs, before the next row's peak is read
        if torch.cuda.is_available():
            torch._dynamo.reset()
            try:
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
            except Exception:
                return 3
        elif row.compile:
            torch._dynamo.reset()
    return 0


# --- the parent: workers, deadlines, the record ------------------------------------------------------------


def _fmt(value, scale=1.0, digits=1) -> str:
    return "-" if value is None else f"{value / scale:.{digits}f}"


def markdown(record: dict) -> str:
    header = [
        "model",
        "T",
        "autocast",
        "exec",
        "path",
        "backend",
        "train img/s",
        "infer img/s",
        "train peak GiB",
        "infer peak GiB",
        "status",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    skipped = []
    for r in record["rows"]:
        if r["status"] == "not run":
            skipped.append(r["id"])
            continue
        model, T, dtype, execution, path = r["id"].split("|")
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r.get('error', '')}"
        status = status.replace("|", "/").replace("\n", " ")[:160]
        lines.append(
            "| "
            + " | ".join(
                [
                    f"`{model}`",
                    T[1:],
                    dtype,
                    execution,
                    path,
                    r.get("backend", "-"),
                    _fmt(r.get("train_images_per_s")),
                    _fmt(r.get("infer_images_per_s")),
                    _fmt(r.get("train_peak_bytes"), 2**30, 2),
                    _fmt(r.get("infer_peak_bytes"), 2**30, 2),
                    status,
                ]
            )
            + " |"
        )
    out = [
        f"# GPU check: {record['machine']}",
        "",
        f"- date: {record['date']}",
        f"- command: `{record['command']}`",
        "",
    ]
    if record.get("tests"):
        out += [f"- GPU tests: {record['tests']}", ""]
    out += lines
    if skipped:
        out += [
            "",
            f"Not run within the budget ({len(skipped)} rows; rerun them with `--only`): "
            + ", ".join(f"`{s}`" for s in skipped),
        ]
    out += ["", record["notes"], "", ANCHORS]
    return "\n".join(out) + "\n"


def _machine(device_type: str) -> str:
    import torch

    if device_type == "cuda":
        p = torch.cuda.get_device_properties(0)
        what = (
            f"{p.name} (sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}, "
            f"TF32 matmul {torch.backends.cuda.matmul.allow_tf32}"
        )
    else:
        what = f"CPU ({platform.machine()}), dry run at toy sizes: no figure here is a measurement"
    return f"{what}; torch {torch.__version__}, Python {platform.python_version()}"


def worker_env(path: str, sites: dict[str, str]) -> dict[str, str]:
    """The environment of a worker for ``path``'s rows: its SpikingJelly folder first on the path (the two
    versions share a package name), then this interpreter's path; the peer's LIF forced to Triton."""
    env = {**os.environ, **(PEER_ENV if path == "peer" else {})}
    env["PYTHONPATH"] = os.pathsep.join(([sites[path]] if path in sites else []) + [p for p in sys.path if p])
    return env


class Runner:
    """Runs the rows of one group (path, execution) in workers, enforcing the deadlines."""

    def __init__(self, args, record: dict, write: Callable[[], None]) -> None:
        self.args, self.record, self.write = args, record, write
        self.by_id = {r["id"]: r for r in record["rows"]}
        self.end = time.monotonic() + args.budget

    def finish(self, row_id: str, result: dict) -> None:
        self.by_id[row_id].update(result)
        self.write()

    def run_group(self, rows: list[Row]) -> None:
        pending = list(rows)
        while pending:
            if self.end - time.monotonic() < self.args.min_row_seconds:
                return  # the rest stay "not run"
            cfg = {
                "rows": [dataclasses.asdict(r) for r in pending],
                "device": self.args.device,
                "dry_run": self.args.dry_run,
                "steps": self.args.steps,
                "row_seconds": self.args.row_seconds,
                "faults": self.args.faults,
            }
            log = self.args.out / "workers.log"  # a file, not a pipe: a chatty worker never blocks on it
            with log.open("a", encoding="utf-8") as err:
                err.write(f"--- worker for {pending[0].id} and {len(pending) - 1} more\n")
                err.flush()
                offset = err.tell()
                proc = subprocess.Popen(
                    [sys.executable, __file__, "--worker", json.dumps(cfg)],
                    stdout=subprocess.PIPE,
                    stderr=err,
                    text=True,
                    start_new_session=True,
                    env=worker_env(pending[0].path, self.args.sites),
                )
                pending = self._follow(proc, pending, log, offset)

    def _follow(self, proc: subprocess.Popen, pending: list[Row], log: Path, offset: int) -> list[Row]:
        """Read the worker's results; return the rows still to run after it ends (or is killed)."""
        lines: queue.Queue[str] = queue.Queue()  # a thread reads, so a deadline never waits on a blocked read

        def read() -> None:
            for text in proc.stdout:
                lines.put(text)
            lines.put("")  # end of output

        threading.Thread(target=read, daemon=True).start()
        current: Row | None = None
        deadline = time.monotonic() + max(60.0, self.args.row_seconds)  # start-up: imports, CUDA initialisation
        started = time.monotonic()
        while True:
            now = time.monotonic()
            limit = min(deadline, self.end)
            if now >= limit:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                why = "row deadline" if limit == deadline else "the run's budget"
                if current is None:
                    self._fail_all(pending, "error", f"worker did not start within {why}")
                    return []
                if self.by_id[current.id]["status"] == "running":  # (else it hung between rows)
                    self.finish(
                        current.id,
                        {"status": "timeout", "error": f"stopped at {why}", "seconds": round(now - started, 1)},
                    )
                return pending[pending.index(current) + 1 :]
            try:
                line = lines.get(timeout=min(1.0, limit - now))
            except queue.Empty:
                continue
            if not line:  # the worker ended
                proc.wait()
                with log.open(encoding="utf-8", errors="replace") as f:
                    f.seek(offset)
                    tail = f.read().strip().splitlines() or ["no message"]
                if current is None:
                    self._fail_all(pending, "error", f"worker failed to start (exit {proc.returncode}): {tail[-1]}")
                    return []
                if self.by_id[current.id]["status"] == "running":
                    self.finish(
                        current.id, {"status": "error", "error": f"worker died (exit {proc.returncode}): {tail[-1]}"}
                    )
                return pending[pending.index(current) + 1 :]
            if line.startswith("START "):
                current = next(r for r in pending if r.id == line[6:].strip())
                started = time.monotonic()
                self.by_id[current.id]["status"] = "running"
                self.write()  # a run killed now still says which row it was in
                seconds = self.args.compile_row_seconds if current.compile else self.args.row_seconds
                deadline = started + seconds
            elif line.startswith("RESULT "):
                result = json.loads(line[7:])
                self.finish(result.pop("id"), result)

    def _fail_all(self, rows: list[Row], status: str, message: str) -> None:
        for r in rows:
            self.by_id[r.id].update(status=status, error=message)
        self.write()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-check"), help="folder for the JSON and table")
    parser.add_argument("--budget", type=float, help="seconds for the whole benchmark (330; dry run 900)")
    parser.add_argument("--row-seconds", type=float, help="deadline of an eager row (30; dry run 300)")
    parser.add_argument("--compile-row-seconds", type=float, help="deadline of a compiled row (150; dry run 300)")
    parser.add_argument("--min-row-seconds", type=float, default=8.0, help="start no row with less budget left")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per mode (fewer if the row's time ends)")
    parser.add_argument("--only", action="append", help="glob on row ids, e.g. 'spikformer_8_512|T4|*|ours'")
    parser.add_argument(
        "--site",
        action="append",
        default=[],
        metavar="PATH=DIR",
        help="a folder put first on the workers' path for that path's rows (reference, peer)",
    )
    parser.add_argument("--tests", default="", help="the GPU tests' summary line, copied into the record")
    parser.add_argument("--dry-run", action="store_true", help="CPU, toy sizes: check every row's set-up")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    # ROW_ID=raise|exit|hang: make a row fail in one of the ways a GPU row can (tests of the isolation)
    parser.add_argument("--inject-fault", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    try:
        import torch  # noqa: F401

        import spikformer  # noqa: F401
    except ModuleNotFoundError as error:
        raise SystemExit(
            f"bench_gpu.py: {error.name} is not importable: install the package (pip install -e . "
            "from the repository root, or benchmarks/gpu_check.sh on a GPU machine)"
        ) from None
    import torch

    from spikformer.commands import doctor

    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA GPU; use --dry-run to check it on the CPU")
    args.device = "cpu" if args.dry_run else "cuda"
    try:
        args.sites = dict(s.split("=", 1) for s in args.site)
    except ValueError:
        raise SystemExit("--site takes PATH=DIR, e.g. --site peer=/tmp/site-peer") from None
    # a dry run's deadlines are a slow shared CPU's, not a GPU's
    args.budget = args.budget or (900.0 if args.dry_run else 330.0)
    args.row_seconds = args.row_seconds or (300.0 if args.dry_run else 30.0)
    args.compile_row_seconds = args.compile_row_seconds or (300.0 if args.dry_run else 150.0)
    args.faults = dict(f.split("=", 1) for f in args.inject_fault)

    rows = plan(args.only)
    backends = {p: _probe(p, args) for p in ("reference", "peer")}
    record = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": _machine(args.device),
        "command": "python " + " ".join([os.path.relpath(sys.argv[0]), *sys.argv[1:]]),
        "tests": args.tests,
        "doctor": doctor.report(),  # the backends this machine gives every fused op, and why
        "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "out", "inject_fault")},
        "notes": (
            f"Per row: the median of up to {args.steps} timed steps per mode after 2 warm-up steps, within "
            f"{args.row_seconds:.0f} s ({args.compile_row_seconds:.0f} s compiled); train batch / infer batch "
            + ", ".join(f"{m} {b[0]}/{b[1]}" for m, b in MODELS.items())
            + "; peak = torch.cuda.max_memory_allocated over the mode's steps (absolute: weights, optimizer "
            "state and activations). peer: SpikingJelly 2.x's Spikformer at the variant's sizes (its stem "
            "and biases are its own)."
        ),
        "rows": [],
    }
    for row in rows:
        entry = {"id": row.id, "status": "pending"}
        why = not_applicable(row, backends["reference"])
        if why is not None:
            entry.update(status="not applicable", error=why)
        elif row.path in backends and backends[row.path] is None:
            entry.update(status="not installed", error=MISSING[row.path])
        record["rows"].append(entry)
    args.out.mkdir(parents=True, exist_ok=True)

    def write() -> None:
        shown = {
            **record,
            "rows": [{**r, "status": "not run"} if r["status"] == "pending" else r for r in record["rows"]],
        }
        for name, text in (("gpu_check.json", json.dumps(shown, indent=1)), ("gpu_check.md", markdown(shown))):
            tmp = args.out / (name + ".tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, args.out / name)

    write()
    runner = Runner(args, record, write)
    groups: list[list[Row]] = []
    # A dry run has no budget to keep in order: one worker per path saves a dozen interpreter starts.
    for row in sorted(rows, key=lambda r: PATHS.index(r.path)) if args.dry_run else rows:
        if runner.by_id[row.id]["status"] != "pending":
            continue
        if groups and groups[-1][0].path == row.path:
            groups[-1].append(row)
        else:
            groups.append([row])
    for group in groups:
        runner.run_group(group)
    write()
    counts: dict[str, int] = {}
    for r in record["rows"]:
        status = "not run" if r["status"] == "pending" else r["status"]
        counts[status] = counts.get(status, 0) + 1
    print(markdown({**record, "rows": json.loads((args.out / "gpu_check.json").read_text())["rows"]}))
    print("rows: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + f"; written to {args.out}/")
    return 0


def _probe(path: str, args) -> str | None:
    """What ``path``'s SpikingJelly gives in a worker's environment (None: not installed)."""
    code = "import sys; sys.path.insert(0, sys.argv[1]); from bench_gpu import reference_backend as r; " + (
        "print(r(sys.argv[2]) or '')"
        if path == "reference"
        else "import spikingjelly.activation_based.model.spikformer; print('triton')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(HERE), args.device],
        capture_output=True,
        text=True,
        env=worker_env(path, args.sites),
    )
    return result.stdout.strip() or None if result.returncode == 0 else None


if __name__ == "__main__":
    sys.exit(main())
