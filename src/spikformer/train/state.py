"""Everything a run needs to continue exactly, packed into one own-format checkpoint and back.

Tensors: ``model.*``, ``ema.*``, ``optim.<param>.<name>`` and ``rng.*``. JSON metadata: the config, the
position (epoch, batches done in it, optimizer steps), the optimizer's hyper-parameter groups, the
scheduler, the loss scaler, the Python and NumPy RNG states, the best metric so far.

In a distributed run every rank draws its own random numbers (augmentation, mixup, stochastic depth), so
the RNG states of ranks 1.. are stored too (``rng.rank<r>.*``, metadata ``rng_ranks``) and each rank gets
its own back on resume.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checkpoint import match_state_dict, read_checkpoint, unwrap_model, write_checkpoint
from ..errors import CheckpointError


@dataclass
class Position:
    """Where a run is: ``epoch`` in progress (0-based), ``batch`` batches of it done, ``step`` optimizer
    steps in all. A finished epoch ``e`` is stored as ``epoch=e+1, batch=0``."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    best_top1: float = float("-inf")
    best_epoch: int = -1
    # Running sums of the epoch in progress, so its logged training loss/accuracy survive a resume.
    epoch_sums: dict[str, float] = field(default_factory=dict)
    # In a distributed run, every rank's own ``epoch_sums`` (rank order): each rank resumes its own.
    rank_epoch_sums: list[dict[str, float]] = field(default_factory=list)


def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.uint32).astype(np.int64))
    version, internal, gauss = random.getstate()
    meta = {"numpy": [kind, int(pos), int(has_gauss), float(cached)], "python": [version, list(internal), gauss]}
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    # by device number: "rng.cuda.10" sorts before "rng.cuda.2" as a string
    indices = sorted(int(k.removeprefix("rng.cuda.")) for k in tensors if k.startswith("rng.cuda."))
    cuda_states = [tensors[f"rng.cuda.{i}"] for i in indices]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
    if "rng.numpy" in tensors and "numpy" in meta:
        kind, pos, has_gauss, cached = meta["numpy"]
        np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    if "python" in meta:
        version, internal, gauss = meta["python"]
        random.setstate((version, tuple(internal), gauss))


RngState = tuple[dict[str, torch.Tensor], dict[str, Any]]


def restore_rank_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any], rank: int) -> bool:
    """Restore ``rank``'s RNG states from a checkpoint's tensors and metadata; False if it holds none."""
    if rank == 0:
        if "rng.torch" not in tensors:
            return False
        restore_rng(tensors, meta.get("rng", {}))
        return True
    prefix = f"rng.rank{rank}."
    own = {"rng." + k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    rank_meta = meta.get("rng_ranks", {}).get(str(rank))
    if not own or rank_meta is None:
        return False
    restore_rng(own, rank_meta)
    return True


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for param_id, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{param_id}.{name}"] = value
            else:
                scalars.setdefault(str(param_id), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, param_id, name = key.split(".", 2)
            state.setdefault(int(param_id), {})[name] = value
    for param_id, values in meta.get("scalars", {}).items():
        state.setdefault(int(param_id), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_training_state(path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                        scaler: torch.amp.GradScaler | None, ema: nn.Module | None, position: Position,
                        config: dict[str, Any], metrics: dict[str, Any] | None = None,
                        rng_states: list[RngState] | None = None, class_names: list[str] | None = None) -> None:
    """Write the full training state to ``path``. ``rng_states``: every rank's ``capture_rng()`` in a
    distributed run (default: this process's); ``class_names``: the dataset's, in label order, when known."""
    tensors = {f"model.{k}": v for k, v in unwrap_model(model).state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.module.state_dict().items()})
    optim_tensors, optim_meta = _optimizer_tensors(optimizer)
    rng_states = rng_states or [capture_rng()]
    rng_tensors, rng_meta = rng_states[0]
    tensors.update(optim_tensors)
    tensors.update(rng_tensors)
    for rank, (rank_tensors, _) in enumerate(rng_states[1:], start=1):
        tensors.update({f"rng.rank{rank}." + k[len("rng."):]: v for k, v in rank_tensors.items()})
    metadata = {
        "kind": "training",
        "config": config,
        "position": asdict(position),
        "optimizer": optim_meta,
        "scheduler": _jsonable(scheduler.state_dict()) if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": rng_meta,
        "rng_ranks": {str(rank): meta for rank, (_, meta) in enumerate(rng_states[1:], start=1)},
        "metrics": metrics or {},
    }
    if class_names is not None:
        metadata["class_names"] = list(class_names)
    write_checkpoint(path, tensors, metadata)


def load_training_state(path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                        scaler: torch.amp.GradScaler | None, ema: nn.Module | None, rank: int = 0,
                        reseed: int | None = None) -> Position:
    """Restore a run saved by ``save_training_state`` (model, optimizer, scheduler, scaler, EMA, this rank's
    RNGs). A rank whose RNG states the file lacks (the run had fewer processes) is seeded with ``reseed``
    plus the step, so ranks still draw different numbers."""
    tensors, meta = read_checkpoint(path)
    if meta.get("kind") != "training":
        raise CheckpointError(f"{path} holds weights only, not a training state to resume from; start a new "
                              f"run with model.pretrained={path} instead")
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    match_state_dict(unwrap_model(model), model_state, strict=True, source=str(path))  # names what differs
    try:
        if ema is not None:
            ema_state = {k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")}
            ema.module.load_state_dict(ema_state or model_state)
        optimizer.load_state_dict(_optimizer_state(tensors, meta["optimizer"]))
        if scheduler is not None and meta.get("scheduler"):
            # train.epochs may change on resume (run_folder.SAFE_ON_RESUME): the schedule keeps the new length.
            length = {key: getattr(scheduler, key) for key in ("t_initial",) if hasattr(scheduler, key)}
            scheduler.load_state_dict(meta["scheduler"])
            scheduler.__dict__.update(length)
        if scaler is not None and meta.get("scaler"):
            scaler.load_state_dict(meta["scaler"])
        position = Position(**{**meta["position"], "best_top1": float(meta["position"]["best_top1"])})
        if not restore_rank_rng(tensors, meta, rank) and reseed is not None:
            seed = reseed + 1_000_003 * position.step
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.manual_seed(seed)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as error:
        # Metadata is data from a file: a missing position or optimizer, RNG states of the wrong size ...
        detail = str(error).splitlines()[0][:160] if str(error) else ""
        raise CheckpointError(f"{path}: its training state is incomplete or corrupt ({type(error).__name__} "
                              f"{detail}); resume from another checkpoint, or start over with --overwrite") from None
    return position


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    return repr(value)
