"""The run loop every training run shares: config -> data + model -> epochs -> run folder.

``RunLoop`` owns what does not depend on the method: device and process group, seeding, loaders and the
global-batch rule (gradient accumulation with DDP's ``no_sync`` on the micro-batches that do not step), AMP,
``torch.compile``, the non-finite policy, periodic and signal-triggered saves, exact resume (every rank gets
its own random state and its own partial sums of the epoch back), metrics, TensorBoard and messages.

A ``Task`` plugs the method in: it builds the datasets and the model, computes one micro-batch's loss and
statistics, validates, says what "best" means and writes its own outputs. Supervised classification
(``train/trainer.py``) and masked pre-training (``ssl/pretrain.py``) are the two tasks.

Every rank takes the same path: whether a loss is finite is agreed across ranks before every backward pass, and
whether a stop was asked for (a signal may reach one rank only) after every optimizer step and every epoch.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import Dataset

from ..config import Config, config_to_dict
from ..console import collect_records, progress_bar, run_log_file
from ..data import build_dataset, build_loader
from ..errors import ConfigError
from ..models import resolve_config
from .distributed import (
    agree_on_config,
    all_reduce_max,
    all_reduce_sum,
    barrier,
    gather_objects,
    gradient_accumulation_steps,
    init_distributed,
)
from .engine import autocast_dtype, check_lif_backend, resolve_device
from .optim import build_optimizer, build_scheduler, set_schedule_position
from .run_folder import check_resume_matches, lock_run_folder, prepare_run_folder, replace_run_file
from .state import Position, capture_rng, load_training_state, save_training_state

log = logging.getLogger(__name__)
MAX_CONSECUTIVE_SKIPS = 10


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM arrived; the state was saved to ``last.safetensors``."""

    def __init__(self, signum: int, path: Path) -> None:
        super().__init__(f"training interrupted by {signal.Signals(signum).name}; state saved to {path} "
                         f"(continue with train.resume=auto)")
        self.signum = signum


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped and the last good checkpoint was kept."""


class Task:
    """What a run trains and how it is judged. Subclasses fill in the methods that raise here."""

    #: progress-bar label and ``metrics.csv`` columns of this task
    label = "epoch"
    metric_columns: tuple[str, ...] = ("epoch", "lr", "train_loss", "epoch_seconds", "train_images_per_s")

    def build_datasets(self, config: Config) -> tuple[Dataset, Dataset]:
        return build_dataset(config, "train"), build_dataset(config, "val")

    def wrap_datasets(self, train: Dataset, val: Dataset) -> tuple[Dataset, Dataset]:
        """The datasets the loaders read (e.g. with each sample's index); default: as they are."""
        return train, val

    def check_data(self, loop: RunLoop) -> None:
        """Called once the datasets exist and before the model is built."""

    def build_model(self, config: Config) -> nn.Module:
        raise NotImplementedError

    def initialise(self, loop: RunLoop, model: nn.Module) -> None:
        """Called with the model before it moves to the device (e.g. to load pre-trained weights)."""

    def setup(self, loop: RunLoop) -> None:
        """Called once the model, optimizer and DDP wrapper exist (e.g. to build a loss)."""

    def set_epoch(self, epoch: int) -> None:
        """Called before each epoch's first micro-batch (also a resumed one)."""

    def step(self, loop: RunLoop, batch) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]:
        """One micro-batch (on the device) -> the mean loss (a graph to backward) and statistics to sum over
        the epoch: ``count`` (samples) and any task-specific sums (e.g. ``correct``). Statistics may be
        one-element device tensors: the loop reads them together with the loss, in one transfer."""
        raise NotImplementedError

    def epoch_stats(self, sums: dict[str, float]) -> dict[str, float]:
        """The epoch's logged training metrics from its summed statistics (reduced over ranks)."""
        return {"train_loss": sums["loss"] / max(sums["count"], 1)}

    def progress(self, sums: dict[str, float]) -> dict[str, str]:
        """The progress bar's figures of the epoch so far."""
        return {"loss": f"{sums['loss'] / max(sums['count'], 1):.4f}"}

    def validate(self, loop: RunLoop) -> dict[str, float]:
        raise NotImplementedError

    def score(self, metrics: dict[str, Any]) -> float | None:
        """Higher is better; the epoch with the highest score is the run's best. None: no best is kept."""
        return None

    def save_outputs(self, loop: RunLoop, metrics: dict[str, Any], improved: bool) -> None:
        """Write this task's own files after an epoch (only on the main process)."""

    def finish(self, loop: RunLoop) -> None:
        """After the last epoch (every rank)."""

    def summary(self, metrics: dict[str, Any]) -> str:
        """The epoch's training part of its one-line summary."""
        return f"train loss {metrics['train_loss']:.4f}"

    def validation_summary(self, metrics: dict[str, Any]) -> str:
        """The validation part ("" in an epoch without validation)."""
        return ""

    def result(self, loop: RunLoop, metrics: dict[str, Any]) -> dict[str, Any]:
        return metrics


def seed_everything(seed: int, deterministic: bool = False) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


class RunLoop:
    """One run of ``task`` as ``config`` describes it. ``model``, ``train_dataset`` and ``val_dataset``, when
    given, replace what the task would build from the config's names."""

    def __init__(self, config: Config, task: Task, *, model: nn.Module | None = None,
                 train_dataset: Dataset | None = None, val_dataset: Dataset | None = None) -> None:
        # What the set-up says (e.g. how the data is converted) also goes into train.log, opened by fit().
        self.setup_records: list[logging.LogRecord] = []
        with collect_records(self.setup_records):
            self.build(config, task, model, train_dataset, val_dataset)

    def build(self, config: Config, task: Task, model: nn.Module | None, train_dataset: Dataset | None,
              val_dataset: Dataset | None) -> None:
        # The architecture is resolved once, here; an unset class count is taken from the dataset (check_data).
        self.config = config = resolve_config(config, leave_num_classes_open=True)
        self.task = task
        cfg = config.train
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        check_lif_backend(config.model.lif_backend, self.device)
        self.dist = init_distributed(self.device.type)
        agree_on_config(config_to_dict(config), self.dist)  # before any rank acts on its own settings
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device(f"cuda:{self.dist.local_rank}")
        self.is_main = self.dist.is_main
        self.out_dir = Path(cfg.out_dir).expanduser()  # ~/runs is the home folder's, as in a shell
        if cfg.sync_bn and self.dist.enabled and self.device.type == "cpu":
            raise ConfigError("train.sync_bn needs GPUs (PyTorch's SyncBatchNorm has no CPU implementation); set "
                              "train.sync_bn=false for CPU runs")
        # Every rank builds the same initial model (DDP also broadcasts rank 0's, but the EMA copy is taken
        # before that); random numbers drawn while training differ per rank (seeded at the end).
        seed_everything(cfg.seed, cfg.deterministic)
        self.train_set, self.val_set = self.build_datasets(train_dataset, val_dataset)
        self.class_names: list[str] | None = None  # in label order, when the dataset names them (check_data)
        task.check_data(self)
        data = config.data
        cuda = self.device.type == "cuda"
        train_source, val_source = task.wrap_datasets(self.train_set, self.val_set)
        self.train_loader = build_loader(train_source, data.batch_size, True, cfg.seed, data.num_workers,
                                         self.dist.rank, self.dist.world_size, cuda)
        self.val_loader = build_loader(val_source, data.eval_batch_size or data.batch_size, False, cfg.seed,
                                       data.num_workers, self.dist.rank, self.dist.world_size, cuda)
        self.accum_steps = gradient_accumulation_steps(data.batch_size, self.dist.world_size, cfg.accum_steps,
                                                       data.global_batch_size)
        self.global_batch_size = data.batch_size * self.dist.world_size * self.accum_steps
        self.batches_per_epoch = self.train_loader.sampler.batches_per_epoch()
        self.steps_per_epoch = self.batches_per_epoch // self.accum_steps
        if self.steps_per_epoch == 0:
            raise ConfigError(f"the training split ({len(self.train_set)} samples) is smaller than one optimizer "
                              f"step's batch ({self.global_batch_size} = data.batch_size {data.batch_size} x "
                              f"{self.dist.world_size} processes x {self.accum_steps} accumulation steps); lower "
                              f"data.batch_size or data.global_batch_size")

        self.model = model if model is not None else task.build_model(config)
        if isinstance(getattr(self.model, "num_classes", None), int):
            config.model.num_classes = self.model.num_classes  # the saved description is complete
        task.initialise(self, self.model)
        self.model.to(self.device)
        if cfg.sync_bn and self.dist.enabled:
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.ema = None
        if cfg.ema_decay:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=cfg.ema_decay)
        self.optimizer = build_optimizer(self.model, config.optim)
        self.scheduler = build_scheduler(self.optimizer, config.optim, cfg.epochs, self.steps_per_epoch)
        self.amp_dtype = autocast_dtype(self.device, cfg.amp)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        if cfg.checkpointing:  # recompute each block in the backward pass (spikformer.fast.memory)
            set_checkpointing = getattr(self.model, "set_grad_checkpointing", None)
            if set_checkpointing is None:
                raise ConfigError(f"train.checkpointing=true, but {type(self.model).__name__} has no "
                                  f"set_grad_checkpointing(); set train.checkpointing=false")
            set_checkpointing(True)
        self.train_model: nn.Module = self.model
        if self.dist.enabled:
            ids = [self.device.index] if cuda else None
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if cfg.compile:
            self.train_model = torch.compile(self.train_model)
        self.position = Position()
        self.signal_received: int | None = None  # this process's, set by the handler
        self.stop_signal: int | None = None  # agreed by every rank: the loop acts on this one only
        self.consecutive_skips = 0
        self.folder_lock = None  # rank 0's RunFolderLock while fit() runs
        self.has_checkpoint = False  # whether the run folder holds this run's last.safetensors (see train_one_epoch)
        self.total_epochs = cfg.epochs + config.optim.cooldown_epochs
        task.setup(self)
        seed_everything(cfg.seed + self.dist.rank, cfg.deterministic)

    def build_datasets(self, train: Dataset | None, val: Dataset | None) -> tuple[Dataset, Dataset]:
        if train is not None and val is not None:
            return train, val
        # With data.download, rank 0 fetches the files while the other ranks wait, then they read them.
        staggered = self.config.data.download and self.dist.enabled
        if staggered and not self.is_main:
            barrier(self.dist)
        built_train, built_val = self.task.build_datasets(self.config)
        if staggered and self.is_main:
            barrier(self.dist)
        return (train if train is not None else built_train), (val if val is not None else built_val)

    def resume_path(self) -> Path | None:
        resume = self.config.train.resume
        if resume is None:
            return None
        path = self.out_dir / "last.safetensors" if resume == "auto" else Path(resume).expanduser()
        if resume == "auto" and not path.exists():
            return None  # nothing to resume yet: start fresh
        if not path.exists():
            raise ConfigError(f"train.resume={resume}: no such checkpoint")
        return path

    # --- the run -----------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Run the configured epochs; return the task's result (the last metrics and what it adds)."""
        # One run writes a folder at a time; train.log is opened once the folder is prepared (see _fit).
        with lock_run_folder(self.out_dir, self.is_main) as lock, contextlib.ExitStack() as self.run_outputs:
            self.folder_lock = lock
            try:
                return self._fit()
            finally:
                self.folder_lock = None

    def _fit(self) -> dict[str, Any]:
        cfg = self.config.train
        if self.is_main:
            # Never a fresh start over earlier output without --overwrite, whatever file is missing.
            prepare_run_folder(self.out_dir, cfg.resume, cfg.overwrite, config_to_dict(self.config))
        self.run_outputs.enter_context(run_log_file(self.out_dir / "train.log", self.setup_records, self.is_main))
        barrier(self.dist)
        path = self.resume_path()
        if path is not None:
            check_resume_matches(path, config_to_dict(self.config))  # the same settings, or exit 2 naming each
            self.resume(path)
            if self.position.epoch > cfg.epochs:  # before config.yaml records the shorter run
                raise ConfigError(f"cannot resume from {path}: the run has trained {self.position.epoch} epochs, "
                                  f"more than train.epochs={cfg.epochs}; resume with train.epochs >= "
                                  f"{self.position.epoch}, or fine-tune from its weights in a new run "
                                  f"(model.pretrained={path})")
            self.has_checkpoint = path == self.out_dir / "last.safetensors"
        if self.is_main:
            # save_config's text, written whole or not at all (a restart compares it with its own config)
            replace_run_file(self.out_dir / "config.yaml", yaml.safe_dump(config_to_dict(self.config), sort_keys=False))
            self.log(self.run_summary())
        writer = self.tensorboard_writer()
        handlers = self.install_signal_handlers()
        metrics: dict[str, Any] = {}
        try:
            while self.position.epoch < self.total_epochs:
                epoch = self.position.epoch
                train_stats = self.train_one_epoch(epoch)
                self.position = Position(epoch + 1, 0, self.position.step, self.position.best_top1,
                                         self.position.best_epoch)
                metrics = {"epoch": epoch + 1, **train_stats}  # epochs are counted from 1 in every output
                if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == self.total_epochs:
                    metrics.update(self.validate())
                score = self.task.score(metrics)
                improved = score is not None and score > self.position.best_top1
                if improved:
                    self.position.best_top1, self.position.best_epoch = score, epoch  # the position counts from 0
                if improved or score is None:
                    self.check_finite_weights()
                self.check_run_folder()
                if self.is_main:
                    self.task.save_outputs(self, metrics, improved)
                # The log row first: a crash between the two repeats the epoch, and the resume drops the row.
                self.write_metrics(metrics, writer)
                self.save_last(metrics)
                self.log(self.epoch_summary(metrics))
                # A signal during evaluation or saving (on any rank): the state is saved, stop everywhere.
                if self.agree_on_stop() is not None:
                    raise TrainingInterrupted(self.stop_signal, self.out_dir / "last.safetensors")
            self.task.finish(self)
        finally:
            self.restore_signal_handlers(handlers)
            if writer is not None:
                writer.close()
        return self.task.result(self, metrics)

    def resume(self, path: Path) -> None:
        cfg = self.config.train
        self.position = load_training_state(path, model=self.model, optimizer=self.optimizer,
                                            scheduler=self.scheduler, scaler=self.scaler, ema=self.ema,
                                            rank=self.dist.rank, reseed=cfg.seed + self.dist.rank)
        self.position.epoch_sums = own_epoch_sums(self.position, self.dist.rank, self.dist.world_size)
        self.log(f"resumed from {path}: {self.describe_position()}")
        if self.is_main:
            trim_metrics(self.out_dir / "metrics.csv", self.position.epoch)

    def describe_position(self) -> str:
        """Where the run stands, in the 1-based epoch numbering of every output: "after epoch 3 of 15" or
        "in epoch 4 of 15, after batch 5 of 22"."""
        epoch, batch = self.position.epoch, self.position.batch
        if batch == 0:
            return f"after epoch {epoch} of {self.total_epochs}" if epoch else "at the start"
        return (f"in epoch {epoch + 1} of {self.total_epochs}, after batch {batch} of "
                f"{self.steps_per_epoch * self.accum_steps}")

    def run_summary(self) -> str:
        """A few lines on what this run trains and how (the full resolved config is in ``config.yaml``)."""
        config, model = self.config, self.config.model
        data, optim = config.data, config.optim
        parameters = sum(p.numel() for p in self.model.parameters())
        classes = f", {model.num_classes} classes" if model.num_classes is not None else ""
        lines = [
            f"run folder {self.out_dir} (full resolved config in {self.out_dir / 'config.yaml'}, messages in "
            f"{self.out_dir / 'train.log'})",
            f"model {model.name}: {parameters / 1e6:.2f}M parameters, depth {model.depth}, embed_dim "
            f"{model.embed_dim}, T={model.T}, input {model.in_chans}x{model.img_size}x{model.img_size}{classes}",
            f"data {data.name}: {len(self.train_set)} training / {len(self.val_set)} validation samples; global "
            f"batch {self.global_batch_size} = data.batch_size {data.batch_size} x {self.dist.world_size} "
            f"processes x {self.accum_steps} accumulation steps; {self.steps_per_epoch} optimizer steps per epoch",
            f"optim {optim.name} lr {optim.lr:g}, weight decay {optim.weight_decay:g}, {optim.schedule} schedule, "
            f"warm-up {optim.warmup_epochs:g} epochs; {self.total_epochs} epochs on {self.device}, "
            f"autocast {str(self.amp_dtype).removeprefix('torch.') if self.amp_dtype else 'off'}",
        ]
        return "\n".join(lines)

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        """Train one epoch from ``self.position.batch`` on; return its logged training metrics (reduced over
        ranks). Gradients of ``accum_steps`` micro-batches are summed before each optimizer step; DDP
        all-reduces them once, on the last micro-batch of each group."""
        cfg = self.config.train
        start = self.position.batch
        self.train_loader.sampler.set_epoch(epoch, start)
        if self.scheduler.t_in_epochs:
            set_schedule_position(self.scheduler, epoch, self.position.step)
        self.task.set_epoch(epoch)
        self.train_model.train()
        if cfg.freeze_bn:
            freeze_batchnorm(self.model)
        # Micro-batches past the last whole accumulation group are left out, like a dropped last batch.
        batches = self.steps_per_epoch * self.accum_steps
        sums = {"loss": 0.0, "count": 0.0, "time": 0.0, **self.position.epoch_sums}
        # A bar on a terminal; otherwise (a log file, a cluster job) a plain line every train.log_interval batches.
        show = cfg.progress and self.is_main
        bar = progress_bar(self.train_loader, enabled=show, total=batches, initial=start,
                           desc=f"{self.task.label} {epoch + 1}/{self.total_epochs}")
        plain_lines = show and bar.disable
        tick = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        for batch_index, batch in enumerate(bar, start=start):
            if batch_index >= batches:
                break
            batch = [item.to(self.device, non_blocking=True) for item in batch]
            last_of_group = (batch_index + 1) % self.accum_steps == 0
            # Non-final micro-batches skip DDP's gradient all-reduce; the final one reduces the summed gradient.
            sync = last_of_group or not self.dist.enabled
            with contextlib.nullcontext() if sync else self.train_model.no_sync():
                loss, stats = self.task.step(self, batch)
                loss_value, stats = read_step(loss, stats)
                # Every rank must take the same path: a rank skipping backward would leave the others waiting.
                if not self.agree_on_step(loss_value):
                    # Counted across epochs, so that a diverged run with short epochs still stops.
                    self.consecutive_skips = self.handle_non_finite(loss_value, epoch, batch_index,
                                                                    self.consecutive_skips)
                    continue
                self.consecutive_skips = 0
                self.scaler.scale(loss / self.accum_steps).backward()
            if last_of_group:
                self.optimizer_step()
            sums["loss"] += loss_value * stats["count"]
            for key, value in stats.items():
                sums[key] = sums.get(key, 0.0) + value
            now = time.perf_counter()
            sums["time"] += now - tick
            tick = now
            figures = {**self.task.progress(sums), "img_s": f"{sums['count'] / max(sums['time'], 1e-9):.1f}"}
            bar.set_postfix(**figures)
            done = batch_index + 1
            if plain_lines and done % cfg.log_interval == 0:
                self.log(f"{self.task.label} {epoch + 1}/{self.total_epochs}  batch {done}/{batches}  "
                         + "  ".join(f"{name.replace('_', '/')} {value}" for name, value in figures.items()))
            if last_of_group:
                self.position.batch, self.position.epoch_sums = done, dict(sums)
                periodic = cfg.save_every_steps and self.position.step % cfg.save_every_steps == 0
                if periodic and done < batches:
                    self.save_last({})
                if self.agree_on_stop() is not None:  # after every optimizer step: a signal to any rank
                    self.save_last({})
                    raise TrainingInterrupted(self.stop_signal, self.out_dir / "last.safetensors")
        bar.close()
        if not self.has_checkpoint:
            # The epoch's outputs (best or encoder weights, its metrics row) come before its checkpoint. In a run
            # that has not saved one yet, a kill between them left a folder with outputs but no last.safetensors,
            # which every restart refuses to overwrite (only --overwrite helped). The trained epoch is saved
            # first, once per run: a resume from it validates and logs the epoch, as the run would have.
            self.save_last({})
        keys = sorted(k for k in sums if k != "time")  # the same order on every rank
        reduced = dict(zip(keys, all_reduce_sum([sums[k] for k in keys], self.device, self.dist)))
        seconds = sums["time"]
        return {**self.task.epoch_stats(reduced), "lr": self.optimizer.param_groups[0]["lr"],
                "epoch_seconds": seconds, "train_images_per_s": reduced["count"] / max(seconds, 1e-9)}

    def agree_on_step(self, loss: float) -> bool:
        """Whether the loss is finite on every rank."""
        (bad,) = all_reduce_max([0.0 if math.isfinite(loss) else 1.0], self.device, self.dist)
        return not bad

    def agree_on_stop(self) -> int | None:
        """The signal any rank received (the same answer on every rank), or None."""
        (signum,) = all_reduce_max([float(self.signal_received or 0)], self.device, self.dist)
        if signum:
            self.stop_signal = int(signum)
        return self.stop_signal

    def optimizer_step(self) -> None:
        clip = self.config.optim.clip_grad
        if clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.position.step += 1
        if self.ema is not None:
            self.ema.update(self.model, step=self.position.step)
        if not self.scheduler.t_in_epochs:
            set_schedule_position(self.scheduler, self.position.epoch, self.position.step)

    def handle_non_finite(self, loss: float, epoch: int, batch_index: int, skips: int) -> int:
        where = f"epoch {epoch + 1}, batch {batch_index + 1} (optimizer step {self.position.step + 1})"
        value = loss
        what = f"non-finite loss ({value})" if not math.isfinite(value) else \
            f"non-finite loss on another process (here {value:.4g})"
        self.optimizer.zero_grad(set_to_none=True)
        if self.config.train.nan_policy == "skip" and skips + 1 < MAX_CONSECUTIVE_SKIPS:
            self.log(f"warning: {what} at {where}; step skipped")
            return skips + 1
        raise NonFiniteLossError(
            f"{what} at {where}; training stopped and the last good checkpoint in {self.out_dir} was kept. "
            f"Lower optim.lr, set optim.clip_grad, or set train.nan_policy=skip."
        )

    def validate(self) -> dict[str, float]:
        return self.task.validate(self)

    @property
    def eval_model(self) -> nn.Module:
        """The weights to validate and keep: the EMA copy when there is one."""
        return self.ema.module if self.ema is not None else self.model

    # --- outputs -----------------------------------------------------------------------------------

    def check_finite_weights(self) -> None:
        """Refuse to save weights that an optimizer step made NaN/Inf (a finite loss can still give an
        overflowing update), so that saved files always hold the last good state."""
        params = dict(self.model.named_parameters())
        finite = torch.stack([torch.isfinite(p).all() for p in params.values()]).tolist() if params else []
        bad = [name for name, ok in zip(params, finite) if not ok]
        if bad:
            raise NonFiniteLossError(
                f"non-finite weights ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}) after optimizer step "
                f"{self.position.step} (epoch {self.position.epoch + 1}); training stopped and the last good "
                f"checkpoint in {self.out_dir} was kept. Lower optim.lr or set optim.clip_grad."
            )

    def save_last(self, metrics: dict[str, Any]) -> None:
        self.check_finite_weights()
        self.has_checkpoint = True
        # Every rank's random state and partial sums of the epoch, so each resumes its own.
        per_rank = gather_objects((capture_rng(), dict(self.position.epoch_sums)), self.dist)
        if self.dist.enabled:
            self.position.rank_epoch_sums = [sums for _, sums in per_rank]
        self.check_run_folder()
        if self.is_main:
            save_training_state(self.out_dir / "last.safetensors", model=self.model, optimizer=self.optimizer,
                                scheduler=self.scheduler, scaler=self.scaler, ema=self.ema,
                                position=self.position, config=config_to_dict(self.config), metrics=metrics,
                                rng_states=[rng for rng, _ in per_rank], class_names=self.class_names)
        barrier(self.dist)

    def check_run_folder(self) -> None:
        """Before writing into the run folder (every rank): raise ``ConfigError`` if it was moved or removed since
        rank 0 locked it (the run would otherwise write into a new, unlocked folder of the old name)."""
        problem = None
        if self.folder_lock is not None:
            try:
                self.folder_lock.check_in_place()
            except ConfigError as error:
                problem = error
        (moved,) = all_reduce_max([1.0 if problem else 0.0], self.device, self.dist)  # every rank stops
        if problem is not None:
            raise problem
        if moved:
            raise ConfigError(f"run folder {self.out_dir} was moved or removed while this run wrote it (process 0 "
                              f"says where it is now); the run stopped")

    def write_metrics(self, metrics: dict[str, Any], writer) -> None:
        if not self.is_main:
            return
        path = self.out_dir / "metrics.csv"
        columns = list(self.task.metric_columns)
        new = not path.exists()
        with path.open("a", newline="") as handle:
            out = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            if new:
                out.writeheader()
            out.writerow({k: metrics.get(k, "") for k in columns})
        if writer is not None:
            for key, value in metrics.items():
                if key != "epoch" and isinstance(value, int | float):
                    writer.add_scalar(key, value, metrics["epoch"])

    def tensorboard_writer(self):
        if not (self.is_main and self.config.train.tensorboard):
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return None
        return SummaryWriter(str(self.out_dir / "tensorboard"))

    def epoch_summary(self, m: dict[str, Any]) -> str:
        text = (f"epoch {m['epoch']}/{self.total_epochs}  lr {m['lr']:.2e}  {self.task.summary(m)}  "
                f"{m['train_images_per_s']:.1f} img/s")
        validation = self.task.validation_summary(m)
        return f"{text}  | {validation}" if validation else text

    def log(self, text: str) -> None:
        """The run's messages: rank 0's, through the ``spikformer`` logger (the CLI shows them on the console)."""
        if self.is_main:
            log.info(text)

    # --- signals -----------------------------------------------------------------------------------

    def install_signal_handlers(self) -> dict[int, Any]:
        """SIGINT/SIGTERM (to any rank) finish the current step, save ``last.safetensors`` and stop the run."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            return {}

        parent = os.getppid()
        owner = os.getpid()

        def request_stop(signum, frame):
            if os.getpid() != owner:
                # A DataLoader worker forked from this process inherits the handler, and a signal to the process
                # group reaches every worker: only the run's own process acts on it (and speaks, once).
                return
            if self.signal_received is not None:
                # A second signal stops at once, unless the launcher has died: the kernel then repeats the
                # parent-death signal (``stop_with_parent``) as each of its threads exits, asking nothing new.
                if os.getppid() == parent:
                    raise KeyboardInterrupt
                return
            self.signal_received = signum
            if self.is_main:  # another rank's signal is announced when the ranks agree on it
                log.warning(f"\n{signal.Signals(signum).name} received: saving a checkpoint after this step ...")

        previous = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, request_stop)
        return previous

    @staticmethod
    def restore_signal_handlers(previous: dict[int, Any]) -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def read_step(loss: torch.Tensor, stats: dict[str, float | torch.Tensor]) -> tuple[float, dict[str, float]]:
    """The micro-batch's loss and statistics as host numbers, read in one device-to-host transfer: the one
    host synchronisation of a step (the non-finite policy needs the loss before the backward pass)."""
    on_device = [key for key, value in stats.items() if isinstance(value, torch.Tensor)]
    scalars = [loss, *(stats[key] for key in on_device)]
    loss_value, *read = torch.stack([t.detach().float().reshape(()) for t in scalars]).tolist()
    return loss_value, {**stats, **dict(zip(on_device, read))}


def own_epoch_sums(position: Position, rank: int, world_size: int) -> dict[str, float]:
    """This rank's partial sums of the interrupted epoch. A checkpoint of another number of processes (or one
    written before the sums were kept per rank) gives rank 0 all of them and the other ranks none, so that
    their sum over ranks is still the epoch's."""
    per_rank = position.rank_epoch_sums
    if world_size > 1 and len(per_rank) == world_size:
        return dict(per_rank[rank])
    if rank != 0:
        return {}
    if len(per_rank) <= 1:
        return dict(position.epoch_sums)
    total = dict(per_rank[0])  # rank 0's own time: the logged seconds are rank 0's
    for sums in per_rank[1:]:
        for key, value in sums.items():
            if key != "time":
                total[key] = total.get(key, 0.0) + value
    return total


def freeze_batchnorm(model: nn.Module) -> None:
    """Put every BatchNorm in eval mode: it normalises with, and no longer updates, its running statistics."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def trim_metrics(path: Path, epochs_done: int) -> None:
    """Keep the rows of the first ``epochs_done`` epochs in ``metrics.csv`` (numbered from 1) and drop the
    later ones (a resumed run redoes them)."""
    if not path.exists():
        return
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return
    kept = [rows[0]] + [row for row in rows[1:] if row and row[0].isdigit() and int(row[0]) <= epochs_done]
    if len(kept) < len(rows):
        text = io.StringIO(newline="")
        csv.writer(text).writerows(kept)
        replace_run_file(path, text.getvalue())  # whole or not at all: the finished epochs' rows are never lost


def finite_only(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if not (isinstance(v, float) and not math.isfinite(v))}
