"""The supervised training run: config -> data + model -> epochs -> run folder (config, metrics, checkpoints).

Usage: ``Trainer(load_config("configs/digits.yaml")).fit()`` (the ``spikformer train`` command).

A run folder holds ``config.yaml`` (resolved), ``metrics.csv``, ``last.safetensors`` (everything needed to
resume exactly) and ``best.safetensors`` (weights and config of the best validation epoch).
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.loss import SoftTargetCrossEntropy
from torch import nn

from ..checkpoint import save_model
from ..config import Config, config_to_dict, format_config, save_config
from ..data import build_dataset, build_loader
from ..data.transforms import build_batch_mixing
from ..errors import CheckpointError, ConfigError
from ..models import build_model
from .distributed import (
    all_ranks_true,
    all_reduce_sum,
    barrier,
    gather_objects,
    gradient_accumulation_steps,
    init_distributed,
)
from .engine import autocast, autocast_dtype, evaluate, resolve_device, topk_correct
from .optim import build_optimizer, build_scheduler, set_schedule_position
from .state import Position, capture_rng, load_training_state, save_training_state

RUN_FILES = ("config.yaml", "metrics.csv", "last.safetensors", "best.safetensors")
MAX_CONSECUTIVE_SKIPS = 10


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM arrived; the state was saved to ``last.safetensors``."""

    def __init__(self, signum: int, path: Path) -> None:
        super().__init__(f"training interrupted by {signal.Signals(signum).name}; state saved to {path} "
                         f"(continue with train.resume=auto)")
        self.signum = signum


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped and the last good checkpoint was kept."""


def seed_everything(seed: int, deterministic: bool = False) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def prepare_run_folder(out_dir: Path, resume: str | None, overwrite: bool) -> None:
    """Refuse to overwrite an earlier run unless asked; ``overwrite`` clears its files."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"train.out_dir {out_dir} is a file, not a folder; choose another train.out_dir")
    existing = [name for name in RUN_FILES if (out_dir / name).exists()]
    if existing and resume is None:
        if not overwrite:
            raise ConfigError(
                f"run folder {out_dir} already holds a run ({', '.join(existing)}); continue it with "
                f"train.resume=auto, or start over with train.overwrite=true (deletes its checkpoints)"
            )
        for name in existing:
            (out_dir / name).unlink()
        shutil.rmtree(out_dir / "tensorboard", ignore_errors=True)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot create the run folder train.out_dir={out_dir}: {error.strerror or error}; "
                          f"choose a writable train.out_dir") from None


class Trainer:
    """One supervised run. ``batch_transform`` ``(inputs, labels) -> (inputs, targets)`` and ``criterion``
    default to what the config asks for: timm's mixup/cutmix with soft-target cross-entropy when
    ``data.mixup_alpha``/``data.cutmix_alpha`` are set, else cross-entropy with label smoothing. A batch
    transform with a ``set_epoch(epoch)`` method is told each epoch (mixing switches off that way)."""

    def __init__(self, config: Config, batch_transform=None, criterion: nn.Module | None = None) -> None:
        self.config = config
        cfg = config.train
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        self.dist = init_distributed(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device(f"cuda:{self.dist.local_rank}")
        self.is_main = self.dist.is_main
        self.out_dir = Path(cfg.out_dir)
        if cfg.sync_bn and self.dist.enabled and self.device.type == "cpu":
            raise ConfigError("train.sync_bn needs GPUs (PyTorch's SyncBatchNorm has no CPU implementation); set "
                              "train.sync_bn=false for CPU runs")
        # Every rank builds the same initial model (DDP also broadcasts rank 0's, but the EMA copy is taken
        # before that); random numbers drawn while training differ per rank (seeded below).
        seed_everything(cfg.seed, cfg.deterministic)

        # With data.download, rank 0 fetches the files while the other ranks wait, then they read them.
        staggered = config.data.download and self.dist.enabled
        if staggered and not self.is_main:
            barrier(self.dist)
        self.train_set = build_dataset(config, "train")
        self.val_set = build_dataset(config, "val")
        if staggered and self.is_main:
            barrier(self.dist)
        self.check_num_classes()
        data = config.data
        self.train_loader = build_loader(self.train_set, data.batch_size, True, cfg.seed, data.num_workers,
                                         self.dist.rank, self.dist.world_size, self.device.type == "cuda")
        self.val_loader = build_loader(self.val_set, data.eval_batch_size or data.batch_size, False, cfg.seed,
                                       data.num_workers, self.dist.rank, self.dist.world_size,
                                       self.device.type == "cuda")
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

        self.model = build_model(config.model)
        if config.model.pretrained:
            self.load_pretrained(config.model.pretrained)
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
        if cfg.checkpointing:  # issue 17: recompute blocks in backward (spikformer.memory)
            self.model.set_grad_checkpointing(True)
        self.train_model: nn.Module = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if cfg.compile:
            self.train_model = torch.compile(self.train_model)
        mixing = None
        if batch_transform is None:
            mixing = build_batch_mixing(data, self.model.num_classes, config.optim.label_smoothing)
        self.batch_transform = batch_transform or mixing
        if criterion is None:
            criterion = (SoftTargetCrossEntropy() if mixing is not None
                         else nn.CrossEntropyLoss(label_smoothing=config.optim.label_smoothing))
        self.criterion = criterion
        self.position = Position()
        self.stop_signal: int | None = None
        self.consecutive_skips = 0
        self.total_epochs = cfg.epochs + config.optim.cooldown_epochs
        seed_everything(cfg.seed + self.dist.rank, cfg.deterministic)

    def check_num_classes(self) -> None:
        """Take the class count from the dataset when the config leaves it open; refuse a head too small."""
        model = self.config.model
        found = getattr(self.train_set, "num_classes", None)
        if model.num_classes is None:
            model.num_classes = found
        elif found is not None and found > model.num_classes:
            raise ConfigError(f"data.name={self.config.data.name} has {found} classes but the model's head has "
                              f"{model.num_classes}; set model.num_classes={found} (or leave it unset)")

    # --- set-up ------------------------------------------------------------------------------------

    def load_pretrained(self, path: str) -> None:
        """Initialise from a checkpoint's weights; the classifier is kept only if its shape fits."""
        from ..checkpoint import match_state_dict, read_model_state

        state, _ = read_model_state(path, use_ema=True)
        head_keys = [k for k in state if k.startswith("head.")]
        model_state = self.model.state_dict()
        if any(k not in model_state or state[k].shape != model_state[k].shape for k in head_keys):
            state = {k: v for k, v in state.items() if not k.startswith("head.")}
        # Everything but the classifier must come from the checkpoint: a partly initialised backbone would
        # train without complaint and silently lose the pre-training.
        missing = [k for k in model_state if k not in state and not k.startswith("head.")]
        if missing:
            hint = (" It looks like a pre-training state: pass the run's encoder.safetensors instead."
                    if any(k.startswith("encoder.") for k in state) else "")
            raise CheckpointError(
                f"model.pretrained={path} lacks {len(missing)} of the model's backbone tensors (e.g. "
                f"{', '.join(missing[:4])}): it was saved from another variant, stem or size. Use the model.name, "
                f"stem and sizes it was trained with (an own checkpoint stores them in its config).{hint}")
        match_state_dict(self.model, state, strict=False, source=path)
        fresh = "kept" if any(k.startswith("head.") for k in state) else "freshly initialised"
        self.log(f"initialised from {path}: {sum(k in state for k in model_state)} of {len(model_state)} "
                 f"tensors loaded, classifier {fresh}")

    def resume_path(self) -> Path | None:
        resume = self.config.train.resume
        if resume is None:
            return None
        path = self.out_dir / "last.safetensors" if resume == "auto" else Path(resume)
        if resume == "auto" and not path.exists():
            return None  # nothing to resume yet: start fresh
        if not path.exists():
            raise ConfigError(f"train.resume={resume}: no such checkpoint")
        return path

    # --- the run -----------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Train for the configured epochs; return the last validation metrics and the best top-1."""
        cfg = self.config.train
        if self.is_main:
            prepare_run_folder(self.out_dir, cfg.resume, cfg.overwrite)
        barrier(self.dist)
        path = self.resume_path()
        if path is not None:
            self.position = load_training_state(path, model=self.model, optimizer=self.optimizer,
                                                scheduler=self.scheduler, scaler=self.scaler, ema=self.ema,
                                                rank=self.dist.rank, reseed=cfg.seed + self.dist.rank)
            self.log(f"resumed from {path} at epoch {self.position.epoch}, batch {self.position.batch}")
            if self.is_main:
                trim_metrics(self.out_dir / "metrics.csv", self.position.epoch)
        if self.is_main:
            save_config(self.config, self.out_dir / "config.yaml")
            self.log(format_config(self.config))
            self.log(f"global batch {self.global_batch_size} = data.batch_size {self.config.data.batch_size} x "
                     f"{self.dist.world_size} processes x {self.accum_steps} accumulation steps; "
                     f"{self.steps_per_epoch} optimizer steps per epoch")
        writer = self.tensorboard_writer()
        handlers = self.install_signal_handlers()
        metrics: dict[str, Any] = {}
        try:
            while self.position.epoch < self.total_epochs:
                epoch = self.position.epoch
                train_stats = self.train_one_epoch(epoch)
                self.position = Position(epoch + 1, 0, self.position.step, self.position.best_top1,
                                         self.position.best_epoch)
                metrics = {"epoch": epoch, **train_stats}
                if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == self.total_epochs:
                    metrics.update(self.validate())
                    if metrics["val_top1"] > self.position.best_top1:
                        self.position.best_top1, self.position.best_epoch = metrics["val_top1"], epoch
                        self.save_best(metrics)
                # The log row first: a crash between the two repeats the epoch, and the resume drops the row.
                self.write_metrics(metrics, writer)
                self.save_last(metrics)
                self.log(self.epoch_summary(metrics))
                if self.stop_signal is not None:  # arrived during evaluation or saving: the state is saved
                    raise TrainingInterrupted(self.stop_signal, self.out_dir / "last.safetensors")
        finally:
            self.restore_signal_handlers(handlers)
            if writer is not None:
                writer.close()
        return {**metrics, "best_top1": self.position.best_top1, "best_epoch": self.position.best_epoch}

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        """Train one epoch from ``self.position.batch`` on; return its loss, accuracy, lr and speed (reduced
        over ranks). Gradients of ``accum_steps`` micro-batches are summed before each optimizer step; DDP
        all-reduces them once, on the last micro-batch of each group."""
        from tqdm.auto import tqdm

        cfg = self.config.train
        start = self.position.batch
        sampler = self.train_loader.sampler
        sampler.set_epoch(epoch, start)
        if self.scheduler.t_in_epochs:
            set_schedule_position(self.scheduler, epoch, self.position.step)
        if hasattr(self.batch_transform, "set_epoch"):
            self.batch_transform.set_epoch(epoch)
        self.train_model.train()
        if cfg.freeze_bn:
            freeze_batchnorm(self.model)
        # Micro-batches past the last whole accumulation group are left out, like a dropped last batch.
        batches = self.steps_per_epoch * self.accum_steps
        sums = {"loss": 0.0, "correct": 0.0, "count": 0.0, "time": 0.0, **self.position.epoch_sums}
        bar = tqdm(self.train_loader, total=batches, initial=start, leave=False,
                   disable=not (cfg.progress and self.is_main), desc=f"epoch {epoch + 1}/{self.total_epochs}",
                   dynamic_ncols=True)
        tick = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        for batch_index, (images, labels) in enumerate(bar, start=start):
            if batch_index >= batches:
                break
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            if self.batch_transform is not None:
                images, labels = self.batch_transform(images, labels)
            last_of_group = (batch_index + 1) % self.accum_steps == 0
            # Non-final micro-batches skip DDP's gradient all-reduce; the final one reduces the summed gradient.
            sync = last_of_group or not self.dist.enabled
            with contextlib.nullcontext() if sync else self.train_model.no_sync():
                with autocast(self.device, self.amp_dtype):
                    logits = self.train_model(images)
                loss = self.criterion(logits.float(), labels)
                # Every rank must take the same path: a rank skipping backward would leave the others waiting.
                if not all_ranks_true(bool(torch.isfinite(loss)), self.device, self.dist):
                    # Counted across epochs, so that a diverged run with short epochs still stops.
                    self.consecutive_skips = self.handle_non_finite(loss, epoch, batch_index,
                                                                    self.consecutive_skips)
                    continue
                self.consecutive_skips = 0
                self.scaler.scale(loss / self.accum_steps).backward()
            if last_of_group:
                self.optimizer_step()
            sums["loss"] += float(loss.detach()) * len(images)
            sums["correct"] += topk_correct(logits.detach().float(), labels, (1,))[0]
            sums["count"] += len(images)
            now = time.perf_counter()
            sums["time"] += now - tick
            tick = now
            bar.set_postfix(loss=f"{sums['loss'] / sums['count']:.3f}",
                            acc=f"{100 * sums['correct'] / sums['count']:.1f}",
                            img_s=f"{sums['count'] / max(sums['time'], 1e-9):.1f}")
            done = batch_index + 1
            if last_of_group:
                self.position.batch, self.position.epoch_sums = done, dict(sums)
                periodic = cfg.save_every_steps and self.position.step % cfg.save_every_steps == 0
                if periodic and done < batches:
                    self.save_last({})
                if self.stop_signal is not None:
                    self.save_last({})
                    raise TrainingInterrupted(self.stop_signal, self.out_dir / "last.safetensors")
        bar.close()
        loss_sum, correct, count = all_reduce_sum([sums["loss"], sums["correct"], sums["count"]], self.device,
                                                  self.dist)
        seconds = sums["time"]
        return {"train_loss": loss_sum / max(count, 1), "train_top1": 100.0 * correct / max(count, 1),
                "lr": self.optimizer.param_groups[0]["lr"], "epoch_seconds": seconds,
                "train_images_per_s": count / max(seconds, 1e-9)}

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

    def handle_non_finite(self, loss: torch.Tensor, epoch: int, batch_index: int, skips: int) -> int:
        where = f"epoch {epoch + 1}, batch {batch_index + 1} (optimizer step {self.position.step + 1})"
        self.optimizer.zero_grad(set_to_none=True)
        if self.config.train.nan_policy == "skip" and skips + 1 < MAX_CONSECUTIVE_SKIPS:
            self.log(f"warning: non-finite loss ({float(loss.detach())}) at {where}; step skipped")
            return skips + 1
        raise NonFiniteLossError(
            f"non-finite loss ({float(loss.detach())}) at {where}; training stopped and the last good checkpoint in "
            f"{self.out_dir} was kept. Lower optim.lr, set optim.clip_grad, or set train.nan_policy=skip."
        )

    def validate(self) -> dict[str, float]:
        model = self.ema.module if self.ema is not None else self.model
        result = evaluate(model, self.val_loader, self.device, self.amp_dtype, self.dist)
        return {"val_loss": result["loss"], "val_top1": result["top1"], "val_top5": result["top5"]}

    # --- outputs -----------------------------------------------------------------------------------

    def check_finite_weights(self) -> None:
        """Refuse to save weights that an optimizer step made NaN/Inf (a finite loss can still give an
        overflowing update), so that ``last``/``best`` always hold the last good state."""
        bad = [name for name, p in self.model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise NonFiniteLossError(
                f"non-finite weights ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}) after optimizer step "
                f"{self.position.step} (epoch {self.position.epoch + 1}); training stopped and the last good "
                f"checkpoint in {self.out_dir} was kept. Lower optim.lr or set optim.clip_grad."
            )

    def save_last(self, metrics: dict[str, Any]) -> None:
        self.check_finite_weights()
        rng_states = gather_objects(capture_rng(), self.dist)  # every rank's, so each resumes its own stream
        if self.is_main:
            save_training_state(self.out_dir / "last.safetensors", model=self.model, optimizer=self.optimizer,
                                scheduler=self.scheduler, scaler=self.scaler, ema=self.ema,
                                position=self.position, config=config_to_dict(self.config), metrics=metrics,
                                rng_states=rng_states)
        barrier(self.dist)

    def save_best(self, metrics: dict[str, Any]) -> None:
        self.check_finite_weights()
        if self.is_main:
            weights = self.ema.module if self.ema is not None else self.model
            save_model(self.out_dir / "best.safetensors", weights, config_to_dict(self.config), kind="weights",
                       metrics=_finite(metrics))

    def write_metrics(self, metrics: dict[str, Any], writer) -> None:
        if not self.is_main:
            return
        path = self.out_dir / "metrics.csv"
        columns = ["epoch", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5",
                   "epoch_seconds", "train_images_per_s"]
        new = not path.exists()
        with path.open("a", newline="") as handle:
            out = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            if new:
                out.writeheader()
            out.writerow({k: metrics.get(k, "") for k in columns})
        if writer is not None:
            for key, value in metrics.items():
                if key != "epoch" and isinstance(value, int | float):
                    writer.add_scalar(key, value, metrics["epoch"] + 1)

    def tensorboard_writer(self):
        if not (self.is_main and self.config.train.tensorboard):
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return None
        return SummaryWriter(str(self.out_dir / "tensorboard"))

    def epoch_summary(self, m: dict[str, Any]) -> str:
        text = (f"epoch {m['epoch'] + 1}/{self.total_epochs}  lr {m['lr']:.2e}  train loss {m['train_loss']:.4f} "
                f"acc {m['train_top1']:.2f}%  {m['train_images_per_s']:.1f} img/s")
        if "val_top1" in m:
            text += f"  | val loss {m['val_loss']:.4f} top1 {m['val_top1']:.2f}% top5 {m['val_top5']:.2f}%"
        return text

    def log(self, text: str) -> None:
        if self.is_main:
            print(text, flush=True)

    # --- signals -----------------------------------------------------------------------------------

    def install_signal_handlers(self) -> dict[int, Any]:
        """SIGINT/SIGTERM finish the current step, save ``last.safetensors`` and stop the run."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            return {}

        def request_stop(signum, frame):
            if self.stop_signal is not None:  # a second signal: stop at once
                raise KeyboardInterrupt
            self.stop_signal = signum
            self.log(f"\n{signal.Signals(signum).name} received: saving a checkpoint after this step ...")

        previous = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, request_stop)
        return previous

    @staticmethod
    def restore_signal_handlers(previous: dict[int, Any]) -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def freeze_batchnorm(model: nn.Module) -> None:
    """Put every BatchNorm in eval mode: it normalises with, and no longer updates, its running statistics."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def trim_metrics(path: Path, epochs_done: int) -> None:
    """Drop the rows of epochs at or after ``epochs_done`` from ``metrics.csv`` (a resumed run redoes them)."""
    if not path.exists():
        return
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return
    kept = [rows[0]] + [row for row in rows[1:] if row and row[0].isdigit() and int(row[0]) < epochs_done]
    if len(kept) < len(rows):
        with path.open("w", newline="") as handle:
            csv.writer(handle).writerows(kept)


def _finite(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if not (isinstance(v, float) and not math.isfinite(v))}
