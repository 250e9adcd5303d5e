"""Everything a run needs to continue exactly, packed into one own-format checkpoint and back.

Tensors: ``model.*``, ``ema.*``, ``optim.<param>.<name>`` and ``rng.*``. JSON metadata: the config, the
position (epoch, batches done in it, optimizer steps), the optimizer's hyper-parameter groups, the
scheduler, the loss scaler, the Python and NumPy RNG states, the best metric so far.

In a distributed run every rank draws its own random numbers (augmentation, mixup, stochastic depth), so
the RNG states of ranks 1.. are stored too (``rng.rank<r>.*``, metadata ``rng_ranks``) and each rank gets
its own back on resume.

The metadata is under the file's checksum (``checkpoint.py``), and its values are validated before a resume acts
on them (``training_state_problem``): a position, a learning rate or a schedule out of range is refused, not
trained with.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field, fields
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
    problem = training_state_problem(meta) or _layout_problem(meta, optimizer, scheduler)
    if problem:
        raise CheckpointError(f"{path}: its training state is incomplete or corrupt ({problem}); resume from another "
                              f"checkpoint, or start over with --overwrite")
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


# Hyper-parameters of an optimizer's groups and a scheduler's base values that are rates or decays: never negative.
NON_NEGATIVE_HYPERPARAMETERS = ("lr", "initial_lr", "weight_decay", "momentum", "eps")


def training_state_problem(meta: dict[str, Any]) -> str | None:
    """What is out of range in a training state's metadata (``"position.epoch=-3: ..."``), or None. Checks the
    values a resume acts on: the position and best score, the epoch's partial sums, the optimizer's groups, the
    loss scaler and the scheduler's state (every number finite, rates non-negative)."""
    position = meta.get("position")
    if not isinstance(position, dict):
        return "position: missing"
    names = {item.name for item in fields(Position)}
    if set(position) != names:
        return f"position: fields {sorted(set(position) ^ names)[:5]} missing or unknown"
    for key in ("epoch", "batch", "step"):
        if type(position[key]) is not int or position[key] < 0:
            return f"position.{key}={_show(position[key])}: not an integer >= 0"
    best, best_epoch = position["best_top1"], position["best_epoch"]
    if not _is_number(best) or math.isnan(best) or best == math.inf:
        return f"position.best_top1={_show(best)}: not a score (a finite number, or -inf before the first)"
    if type(best_epoch) is not int or not -1 <= best_epoch < position["epoch"]:
        return f"position.best_epoch={_show(best_epoch)}: not a finished epoch (-1 .. {position['epoch'] - 1})"
    if (best_epoch == -1) != (best == -math.inf):
        return f"position.best_epoch={best_epoch}: disagrees with position.best_top1={_show(best)}"
    sums = [("position.epoch_sums", position["epoch_sums"])]
    if not isinstance(position["rank_epoch_sums"], list):
        return f"position.rank_epoch_sums={_show(position['rank_epoch_sums'])}: not a list"
    sums += [(f"position.rank_epoch_sums.{i}", value) for i, value in enumerate(position["rank_epoch_sums"])]
    for where, value in sums:
        if not isinstance(value, dict):
            return f"{where}={_show(value)}: not a mapping"
        problem = _non_finite(value, where)
        if problem:
            return problem
    optimizer = meta.get("optimizer")
    groups = optimizer.get("param_groups") if isinstance(optimizer, dict) else None
    if not isinstance(groups, list) or not all(isinstance(group, dict) for group in groups):
        return "optimizer.param_groups: missing or not a list of groups"
    problem = _non_finite(optimizer, "optimizer")
    for index, group in enumerate(groups):
        for key in NON_NEGATIVE_HYPERPARAMETERS:
            if problem is None and _is_number(group.get(key)) and group[key] < 0:
                problem = f"optimizer.param_groups.{index}.{key}={_show(group[key])}: negative"
    if problem:
        return problem
    scaler = meta.get("scaler")
    if scaler is not None:
        if not isinstance(scaler, dict):
            return f"scaler={_show(scaler)}: not a mapping"
        problem = _non_finite(scaler, "scaler")
        if problem:
            return problem
    scheduler = meta.get("scheduler")
    if scheduler is not None:
        if not isinstance(scheduler, dict):
            return f"scheduler={_show(scheduler)}: not a mapping"
        problem = _non_finite(scheduler, "scheduler")
        for index, value in enumerate(scheduler.get("base_values") or []):
            if problem is None and _is_number(value) and value < 0:
                problem = f"scheduler.base_values.{index}={_show(value)}: negative"
        if problem:
            return problem
    return None


def _layout_problem(meta: dict[str, Any], optimizer: torch.optim.Optimizer, scheduler) -> str | None:
    """Where the stored optimizer groups or scheduler state differ in structure or type from this run's own (the
    run is built from the same config, so its state has the stored one's keys, lengths and kinds of value)."""
    live = {"optimizer.param_groups": optimizer.state_dict()["param_groups"]}
    if scheduler is not None and meta.get("scheduler"):
        live["scheduler"] = scheduler.state_dict()
    for where, own in live.items():
        section, _, key = where.partition(".")
        stored = meta[section][key] if key else meta[section]
        problem = _same_layout(stored, _jsonable(own), where)
        if problem:
            return problem
    return None


def _same_layout(stored: Any, own: Any, where: str) -> str | None:
    if isinstance(own, dict):
        if not isinstance(stored, dict) or set(stored) != set(own):
            return f"{where}: not the fields this run's state has"
        return next((p for k in own if (p := _same_layout(stored[k], own[k], f"{where}.{k}"))), None)
    if isinstance(own, list):
        if not isinstance(stored, list) or len(stored) != len(own):
            return f"{where}={_show(stored)}: not a list of {len(own)}"
        return next((p for i, v in enumerate(own) if (p := _same_layout(stored[i], v, f"{where}.{i}"))), None)
    kind = "a number" if _is_number(own) else type(own).__name__
    if (_is_number(own) and not _is_number(stored)) or (not _is_number(own) and type(stored) is not type(own)):
        return f"{where}={_show(stored)}: not {kind}"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _non_finite(value: Any, where: str) -> str | None:
    """The first number in a JSON value that is NaN or infinite, as ``"where.key=nan: not finite"``."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return f"{where}={_show(value)}: not finite" if isinstance(value, float) and not math.isfinite(value) else None
    for key, item in items:
        problem = _non_finite(item, f"{where}.{key}")
        if problem:
            return problem
    return None


def _show(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


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
