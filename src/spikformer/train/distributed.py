"""PyTorch's own distributed engine: process-group set-up from ``torchrun``'s environment, reductions, and
the global-batch rule.

``torchrun --nproc_per_node=N -m spikformer train ...`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``;
a plain ``spikformer train`` runs as a world of one.

The batch of one optimizer step over all processes is ``batch_size x world_size x accum_steps``. A config
that names ``data.global_batch_size`` (the paper's batch) gets ``accum_steps`` derived from the number of
processes, so one recipe reaches the same batch on 8 GPUs without accumulation or on 1 GPU with 8 steps.

Every process must run the same config: launchers that start each node's processes with their own command line
can start them with different overrides, and then different batch counts hang a collective and different
learning rates train different models. ``agree_on_config`` compares a digest of every rank's config at start and
refuses, on every rank, naming the keys that differ (``RANK_LOCAL_KEYS`` may differ: they say where this
machine keeps things, not what is computed).
"""

from __future__ import annotations

import hashlib
import json
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


# Keys that may differ between processes: where each machine finds or keeps things, how many loader processes it
# starts (a sample is augmented the same whatever the count: data/loader.py), and what it displays.
RANK_LOCAL_KEYS = ("data.root", "data.cache_dir", "data.download", "data.num_workers", "train.threads",
                   "train.progress", "train.log_interval", "train.tensorboard")


def config_digest(config: dict[str, Any]) -> str:
    """SHA-256 of a config (as ``config_to_dict`` gives it), ``RANK_LOCAL_KEYS`` left out."""
    text = json.dumps(_shared_part(config), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _shared_part(config: dict[str, Any]) -> dict[str, Any]:
    return {section: {key: value for key, value in values.items() if f"{section}.{key}" not in RANK_LOCAL_KEYS}
            if isinstance(values, dict) else values for section, values in config.items()}


def config_differences(configs: list[dict[str, Any]]) -> list[str]:
    """``"section.key (rank 0: a, rank r: b)"`` for each key whose value differs between the ranks' configs (the
    first rank that differs from rank 0 is named)."""
    flat = [{f"{section}.{key}": value for section, values in _shared_part(config).items()
             for key, value in (values.items() if isinstance(values, dict) else [("", values)])}
            for config in configs]
    differences = []
    for name in sorted(set().union(*flat)):
        values = [json.dumps(ranks.get(name, "<missing>"), sort_keys=True, default=str) for ranks in flat]
        other = next((rank for rank, value in enumerate(values) if value != values[0]), None)
        if other is not None:
            differences.append(f"{name} (rank 0: {_show(flat[0].get(name))}, rank {other}: "
                               f"{_show(flat[other].get(name))})")
    return differences


def _show(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def agree_on_config(config: dict[str, Any], info: DistInfo) -> None:
    """Raise ``ConfigError`` on every rank unless all ranks run the same ``config`` (``RANK_LOCAL_KEYS`` aside):
    digests are compared first, the whole configs only when they differ."""
    if not info.enabled:
        return
    digests = gather_objects(config_digest(config), info)
    if len(set(digests)) == 1:
        return
    differences = config_differences(gather_objects(config, info))
    shown = "; ".join(differences[:8]) + (f"; ... ({len(differences)} keys in all)" if len(differences) > 8 else "")
    raise ConfigError(f"the processes were started with different configs: {shown}; start every process with the "
                      f"same config file and overrides")


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

