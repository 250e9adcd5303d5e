"""PyTorch's own distributed engine: process-group set-up from ``torchrun``'s environment, reductions, and
the global-batch rule.

``torchrun --nproc_per_node=N -m spikformer train ...`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``;
a plain ``spikformer train`` runs as a world of one.

The batch of one optimizer step over all processes is ``batch_size x world_size x accum_steps``. A config
that names ``data.global_batch_size`` (the paper's batch) gets ``accum_steps`` derived from the number of
processes, so one recipe reaches the same batch on 8 GPUs without accumulation or on 1 GPU with 8 steps.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..errors import ConfigError

PR_SET_PDEATHSIG = 1  # prctl(2) option: the signal this process gets when its parent dies


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group ``torchrun`` describes (NCCL on GPUs, gloo on the CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if "TORCHELASTIC_RUN_ID" in os.environ:  # started by torchrun, in a session of its own
        stop_with_parent()
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return DistInfo(rank, local_rank, world_size)


def stop_with_parent(signum: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send ``signum`` to this process when its parent dies (Linux; False elsewhere).

    torchrun starts each worker in a session of its own, so a launcher killed outright (SIGKILL, an OOM kill)
    takes no worker with it and they would wait on each other forever. With this, every worker gets SIGTERM:
    the run loop saves and stops as it does for a SIGTERM sent by a scheduler (the kernel may repeat the signal
    as each thread of the dead launcher exits; the loop's handler ignores the repeats)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signum)
    return True


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], device: torch.device, info: DistInfo) -> list[float]:
    """Sum a few scalars over all ranks (identity in a world of one)."""
    return _all_reduce(values, device, info, dist.ReduceOp.SUM)


def all_reduce_max(values: list[float], device: torch.device, info: DistInfo) -> list[float]:
    """The largest of a few scalars over all ranks (identity in a world of one): a flag raised on any rank."""
    return _all_reduce(values, device, info, dist.ReduceOp.MAX)


def _all_reduce(values: list[float], device: torch.device, info: DistInfo, op) -> list[float]:
    if not info.enabled:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=op)
    return tensor.tolist()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def gradient_accumulation_steps(batch_size: int, world_size: int, accum_steps: int,
                                global_batch_size: int | None) -> int:
    """Micro-batches per optimizer step: ``accum_steps``, or derived from ``global_batch_size`` when set."""
    if global_batch_size is None:
        return accum_steps
    per_step = batch_size * world_size
    if global_batch_size % per_step:
        fits = [b for b in range(1, batch_size + 1) if global_batch_size % (b * world_size) == 0][-1:]
        hint = f" (e.g. data.batch_size={fits[0]})" if fits else ""
        raise ConfigError(f"data.global_batch_size={global_batch_size} is not a multiple of data.batch_size x "
                          f"processes = {batch_size} x {world_size}; choose a batch size that divides it{hint}")
    derived = global_batch_size // per_step
    if accum_steps not in (1, derived):
        raise ConfigError(f"train.accum_steps={accum_steps} contradicts data.global_batch_size={global_batch_size} "
                          f"with data.batch_size={batch_size} on {world_size} processes (that needs {derived}); "
                          f"leave train.accum_steps at 1 when data.global_batch_size is set")
    return derived

