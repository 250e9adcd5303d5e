"""``spikformer doctor``: the machine as this package sees it, in a few lines: versions, devices, dtype
support, and which backend every fused op will use here and why.

Usage: ``spikformer doctor`` (``--json`` for the same facts as one JSON object).

The choices reported are the ones the ops make themselves (``neuron.default_backend``, ``kernels.cpu`` and
``kernels.triton_lif``), asked the same way, so a fallback shows here with its reason before it costs a run.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import warnings
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class OpChoice:
    """One fused op on one device: the backend it will use and why."""

    op: str
    backend: str
    reason: str


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="devices, dtype support and the backend of every fused op here",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    parser.set_defaults(func=run)


def c_kernel_status() -> tuple[bool, str]:
    """Whether the CPU C kernels are usable here, and why: the build's own status (``fast.kernels.cpu``)."""
    from ..fast.kernels import cpu

    if os.environ.get("SPIKFORMER_NO_CPU_KERNEL", "") not in ("", "0"):
        return False, "switched off by SPIKFORMER_NO_CPU_KERNEL"
    with warnings.catch_warnings():  # the build's warning is this command's report, said below
        warnings.simplefilter("ignore")
        status = cpu.build_status()
    if status["built"]:
        compiler = cpu._compiler() or "cc"
        return True, f"{os.path.basename(compiler)} -march={status['target']}"
    reason = " ".join(str(status["reason"] or "its build failed earlier in this process").split())
    if cpu._compiler() is not None and sys.platform.startswith("linux"):
        reason = "build failed: " + reason
    return False, reason.rstrip(":")[:300]


def cpu_choices() -> tuple[list[OpChoice], dict[str, Any]]:
    """The fused ops' backends for CPU tensors, and the CPU's facts."""
    import torch

    from ..fast.kernels import cpu
    from ..neurons import default_backend

    built, why = c_kernel_status()
    flags = cpu.cpu_flags()
    native_bf16 = sorted(flags & {"avx512_bf16", "amx_bf16"})
    facts = {
        "cpu": cpu.cpu_model_name(),
        "threads": torch.get_num_threads(),
        "pytorch_kernels": torch.backends.cpu.get_cpu_capability(),
        "bfloat16": f"native ({', '.join(native_bf16)})" if native_bf16 else "converted to float32 per operation",
        "c_kernels": "built" if built else "unavailable",
        "c_kernels_reason": why,
    }
    lif = default_backend("cpu", torch.float32)
    fallback = "pure PyTorch (no C kernel)"
    choices = [
        OpChoice("LIF", lif, "C kernel, one pass over memory each way" if lif == "c" else fallback),
        OpChoice(
            "BatchNorm->LIF",
            lif,
            "normalised inside the LIF kernel; its output recomputed in backward" if lif == "c" else fallback,
        ),
    ]
    if built and cpu.spike_attention_vectorised():
        choices.append(OpChoice("attention products", "c", "spike rows' nonzeros found with AVX-512, where N > d"))
    else:
        choices.append(
            OpChoice(
                "attention products",
                "torch",
                "matrix products"
                + (" (the C kernel lacks its AVX-512 paths on this CPU)" if built else " (no C kernel)"),
            )
        )
    choices.append(
        OpChoice(
            "max-pool",
            "c" if built else "torch",
            "channels-last maps in C, 1 byte per output kept for backward"
            if built
            else "argmax recomputed in backward (no C kernel)",
        )
    )
    choices.append(
        OpChoice(
            "1-bit spike packing",
            "c" if built else "torch",
            "saved spikes packed in C" if built else "PyTorch bit operations (no C kernel)",
        )
    )
    return choices, facts


def cuda_choices() -> tuple[list[OpChoice], dict[str, Any]]:
    """The fused ops' backends for tensors on the current CUDA device (empty without one), and its facts."""
    import torch

    from ..neurons import default_backend

    triton = _triton_version()
    facts: dict[str, Any] = {"cuda_build": torch.version.cuda, "triton": triton or "not installed"}
    if not torch.cuda.is_available():
        facts["device"] = "none visible"
        return [], facts
    index = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    facts.update(
        device=f"cuda:{index} {props.name}",
        count=torch.cuda.device_count(),
        capability=f"sm_{props.major}{props.minor}",
        memory_gib=round(props.total_memory / 2**30, 1),
        bfloat16="native" if torch.cuda.is_bf16_supported() else "not supported",
        float16="native",
    )
    lif = default_backend("cuda", torch.float32)
    why = (
        f"Triton {triton} kernel"
        if lif == "triton"
        else "pure PyTorch: Triton is not installed"
        if triton is None
        else "pure PyTorch: Triton cannot run here"
    )
    return [
        OpChoice("LIF", lif, why),
        OpChoice("BatchNorm->LIF", lif, "BatchNorm output recomputed in backward, not stored"),
        OpChoice(
            "attention products",
            "torch",
            "cuBLAS products of spikes, in a dtype that holds their sums exactly (layers.exact_spike_product_dtype)",
        ),
        OpChoice("max-pool", "torch", "PyTorch max_pool2d, argmax recomputed in backward (no int64 indices kept)"),
        OpChoice("1-bit spike packing", "torch", "PyTorch bit operations on the device"),
    ], facts


def report() -> dict[str, Any]:
    """Everything ``spikformer doctor`` prints, as data."""
    import torch

    from .. import __version__

    cpu_ops, cpu_facts = cpu_choices()
    cuda_ops, cuda_facts = cuda_choices()
    return {
        "versions": {"spikformer": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "cpu": {**cpu_facts, "ops": [asdict(c) for c in cpu_ops]},
        "cuda": {**cuda_facts, "ops": [asdict(c) for c in cuda_ops]},
        "torch.compile": "LIF and BatchNorm->LIF stay one custom op each (no graph break); the CPU C kernels for "
        "attention and max-pool step aside for PyTorch's ops, which the compiler fuses",
    }


def lines(facts: dict[str, Any]) -> list[str]:
    v, c, g = facts["versions"], facts["cpu"], facts["cuda"]
    out = [
        f"spikformer {v['spikformer']}, torch {v['torch']} (CUDA build {g['cuda_build'] or 'none'}, "
        f"Triton {g['triton']}), Python {v['python']}",
        f"cpu: {c['cpu']}, {c['threads']} threads, PyTorch kernels {c['pytorch_kernels']}; bfloat16 "
        f"{c['bfloat16']}; C kernels "
        + (
            f"built ({c['c_kernels_reason']})" if c["c_kernels"] == "built" else f"unavailable: {c['c_kernels_reason']}"
        ),
    ]
    out += [f"  {o['op']:<20} {o['backend']:<7} {o['reason']}" for o in c["ops"]]
    if g["ops"]:
        out.append(
            f"{g['device']} ({g['capability']}, {g['memory_gib']} GiB, {g['count']} visible): bfloat16 "
            f"{g['bfloat16']}, float16 {g['float16']}"
        )
        out += [f"  {o['op']:<20} {o['backend']:<7} {o['reason']}" for o in g["ops"]]
    else:
        out.append(
            f"cuda: no device visible (on one, LIF and BatchNorm->LIF would run on "
            f"{'Triton' if g['triton'] != 'not installed' else 'pure PyTorch: Triton is not installed'})"
        )
    out.append(f"torch.compile: {facts['torch.compile']}")
    return out


def run(args) -> int:
    facts = report()
    if args.json:
        log.info(json.dumps(facts, indent=1))
    else:
        for line in lines(facts):
            log.info(line)
    return 0


def _triton_version() -> str | None:
    from ..fast.kernels import triton_lif

    return getattr(triton_lif.triton, "__version__", None) if triton_lif.triton is not None else None
