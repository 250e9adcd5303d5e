"""The masked pre-training run: config -> unlabelled images -> encoder + decoder -> encoder checkpoint.

Usage: ``Pretrainer(load_config("configs/digits_v2_pretrain.yaml")).fit()`` (the ``spikformer pretrain``
command). The run folder holds ``config.yaml``, ``metrics.csv`` (reconstruction loss per epoch),
``last.safetensors`` (encoder, decoder and optimizer: resume with ``train.resume=auto``; the
``reconstruct`` command reads it), ``encoder.safetensors`` (the encoder alone, with the config: what
``model.pretrained`` loads for fine-tuning) and ``reconstructions.png``.
"""

from __future__ import annotations

import csv
import dataclasses
import signal
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import save_model, unwrap_model
from ..config import Config, config_to_dict, format_config, save_config
from ..data import build_dataset, build_loader
from ..errors import ConfigError
from ..train.distributed import all_reduce_sum, barrier, init_distributed
from ..train.engine import autocast, autocast_dtype, resolve_device
from ..train.optim import build_optimizer, build_scheduler, set_schedule_position
from ..train.run_folder import check_resume_matches, lock_run_folder, prepare_run_folder  # run_folder hook
from ..train.state import Position, load_training_state, save_training_state
from ..train.trainer import NonFiniteLossError, TrainingInterrupted, seed_everything
from .figure import render_reconstructions
from .model import MaskedSpikformer, build_masked_model

ENCODER_FILE = "encoder.safetensors"
FIGURE_FILE = "reconstructions.png"
VALIDATION_MASK_SEED = 1234  # the same hidden patches at every validation, so epochs are comparable


def pretraining_config_problems(config: Config) -> list[str]:
    """Options of the supervised trainer that pre-training does not use, so that none is silently ignored."""
    problems = []
    if config.optim.layer_decay is not None:
        problems.append("optim.layer_decay is for fine-tuning; remove it from the pre-training config")
    if config.train.ema_decay is not None:
        problems.append("train.ema_decay is not supported by pre-training; remove it")
    if config.train.sync_bn:
        # The masked stem normalises visible positions with the BatchNorm's parameters directly, which would
        # bypass SyncBatchNorm's cross-process statistics without a word.
        problems.append("train.sync_bn is not supported by pre-training (its masked BatchNorm is per process)")
    return problems


class Pretrainer:
    """Masked pre-training of the config's model (``model`` + ``ssl`` sections) on its dataset's images."""

    def __init__(self, config: Config) -> None:
        problems = pretraining_config_problems(config)
        if problems:
            raise ConfigError("; ".join(problems))
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
        seed_everything(cfg.seed + self.dist.rank, cfg.deterministic)

        data = config.data
        self.train_set = build_dataset(config, "train")  # the labels are never read
        self.val_set = build_dataset(config, "val")
        cuda = self.device.type == "cuda"
        self.train_loader = build_loader(self.train_set, data.batch_size, True, cfg.seed, data.num_workers,
                                         self.dist.rank, self.dist.world_size, cuda)
        self.val_loader = build_loader(self.val_set, data.eval_batch_size or data.batch_size, False, cfg.seed,
                                       data.num_workers, self.dist.rank, self.dist.world_size, cuda)

        self.model = build_masked_model(config)
        if config.model.pretrained:  # continue from an earlier encoder
            from ..checkpoint import match_state_dict, read_model_state

            state, _ = read_model_state(config.model.pretrained, use_ema=True)
            match_state_dict(self.model.encoder, state, strict=True, source=config.model.pretrained)
        self.model.to(self.device)
        self.optimizer = build_optimizer(self.model, config.optim)
        self.batches_per_epoch = self.train_loader.sampler.batches_per_epoch()
        self.steps_per_epoch = max(1, self.batches_per_epoch // cfg.accum_steps)
        self.scheduler = build_scheduler(self.optimizer, config.optim, cfg.epochs, self.steps_per_epoch)
        self.amp_dtype = autocast_dtype(self.device, cfg.amp)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.train_model: nn.Module = self.model
        if self.dist.enabled:
            ids = [self.device.index] if cuda else None
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if cfg.compile:
            self.train_model = torch.compile(self.train_model)
        self.position = Position()
        self.stop_signal: int | None = None
        self.total_epochs = cfg.epochs + config.optim.cooldown_epochs

    @property
    def masked_model(self) -> MaskedSpikformer:
        return unwrap_model(self.model)

    # --- the run -----------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Pre-train for the configured epochs; return the last metrics and the encoder checkpoint's path."""
        with lock_run_folder(self.out_dir, self.is_main):  # run_folder hook: one run writes a folder at a time
            return self._fit()

    def _fit(self) -> dict[str, Any]:
        cfg = self.config.train
        if self.is_main:
            prepare_run_folder(self.out_dir, cfg.resume, cfg.overwrite, config_to_dict(self.config))  # run_folder hook
        barrier(self.dist)
        resume = self.resume_path()
        if resume is not None:
            check_resume_matches(resume, config_to_dict(self.config))  # run_folder hook: same settings, or exit 2
            self.position = load_training_state(resume, model=self.model, optimizer=self.optimizer,
                                                scheduler=self.scheduler, scaler=self.scaler, ema=None)
            self.log(f"resumed from {resume} at epoch {self.position.epoch}, batch {self.position.batch}")
        if self.is_main:
            save_config(self.config, self.out_dir / "config.yaml")
            self.log(format_config(self.config))
        previous = self.install_signal_handlers()
        metrics: dict[str, Any] = {}
        try:
            while self.position.epoch < self.total_epochs:
                epoch = self.position.epoch
                metrics = {"epoch": epoch, **self.train_one_epoch(epoch)}
                self.position = Position(epoch + 1, 0, self.position.step)
                if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == self.total_epochs:
                    metrics["val_loss"] = self.validate()
                self.save_last(metrics)
                self.save_encoder(metrics)
                self.write_metrics(metrics)
                self.log(self.epoch_summary(metrics))
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if self.is_main and self.config.ssl.num_visualize:
            figure = self.render_figure()
            self.log(f"reconstructions: {figure}")
        return {**metrics, "encoder": str(self.out_dir / ENCODER_FILE)}

    def resume_path(self) -> Path | None:
        resume = self.config.train.resume
        if resume is None:
            return None
        path = self.out_dir / "last.safetensors" if resume == "auto" else Path(resume)
        if resume == "auto" and not path.exists():
            return None
        if not path.exists():
            raise ConfigError(f"train.resume={resume}: no such checkpoint")
        return path

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        from tqdm.auto import tqdm

        cfg = self.config.train
        start = self.position.batch
        self.train_loader.sampler.set_epoch(epoch, start)
        if self.scheduler.t_in_epochs:
            set_schedule_position(self.scheduler, epoch, self.position.step)
        self.train_model.train()
        sums = {"loss": 0.0, "count": 0.0, "time": 0.0, **self.position.epoch_sums}
        bar = tqdm(self.train_loader, total=self.batches_per_epoch, initial=start, leave=False,
                   disable=not (cfg.progress and self.is_main), desc=f"pretrain {epoch + 1}/{self.total_epochs}",
                   dynamic_ncols=True)
        tick = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        for batch_index, (images, _) in enumerate(bar, start=start):
            if batch_index >= self.batches_per_epoch:
                break
            images = images.to(self.device, non_blocking=True)
            with autocast(self.device, self.amp_dtype):
                loss, _, _ = self.train_model(images)
            if not torch.isfinite(loss):
                self.optimizer.zero_grad(set_to_none=True)
                raise NonFiniteLossError(
                    f"non-finite reconstruction loss ({float(loss)}) at epoch {epoch + 1}, batch {batch_index + 1}; "
                    f"the last good checkpoint in {self.out_dir} was kept. Lower optim.lr or set optim.clip_grad."
                )
            self.scaler.scale(loss / cfg.accum_steps).backward()
            last_of_group = (batch_index + 1) % cfg.accum_steps == 0
            if last_of_group:
                self.optimizer_step()
            sums["loss"] += float(loss.detach()) * len(images)
            sums["count"] += len(images)
            now = time.perf_counter()
            sums["time"] += now - tick
            tick = now
            bar.set_postfix(loss=f"{sums['loss'] / sums['count']:.4f}",
                            img_s=f"{sums['count'] / max(sums['time'], 1e-9):.1f}")
            if last_of_group:
                self.position.batch, self.position.epoch_sums = batch_index + 1, dict(sums)
                periodic = cfg.save_every_steps and self.position.step % cfg.save_every_steps == 0
                if periodic and batch_index + 1 < self.batches_per_epoch:
                    self.save_last({})
                if self.stop_signal is not None:
                    self.save_last({})
                    raise TrainingInterrupted(self.stop_signal, self.out_dir / "last.safetensors")
        bar.close()
        loss_sum, count = all_reduce_sum([sums["loss"], sums["count"]], self.device, self.dist)
        return {"train_loss": loss_sum / max(count, 1), "lr": self.optimizer.param_groups[0]["lr"],
                "epoch_seconds": sums["time"], "train_images_per_s": count / max(sums["time"], 1e-9)}

    def optimizer_step(self) -> None:
        clip = self.config.optim.clip_grad
        if clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.position.step += 1
        if not self.scheduler.t_in_epochs:
            set_schedule_position(self.scheduler, self.position.epoch, self.position.step)

    @torch.no_grad()
    def validate(self) -> float:
        """Mean reconstruction loss on the validation images, with the same masks every time."""
        model = self.masked_model
        model.eval()
        generator = torch.Generator().manual_seed(VALIDATION_MASK_SEED + self.dist.rank)
        loss_sum = count = 0.0
        for images, _ in self.val_loader:
            images = images.to(self.device, non_blocking=True)
            mask = model.random_mask(images.shape[0], self.device, generator)
            with autocast(self.device, self.amp_dtype):
                loss, _, _ = model(images, mask)
            loss_sum += float(loss) * len(images)
            count += len(images)
        loss_sum, count = all_reduce_sum([loss_sum, count], self.device, self.dist)
        return loss_sum / max(count, 1)

    # --- outputs -----------------------------------------------------------------------------------

    def save_last(self, metrics: dict[str, Any]) -> None:
        if self.is_main:
            save_training_state(self.out_dir / "last.safetensors", model=self.model, optimizer=self.optimizer,
                                scheduler=self.scheduler, scaler=self.scaler, ema=None, position=self.position,
                                config=config_to_dict(self.config), metrics=metrics)
        barrier(self.dist)

    def save_encoder(self, metrics: dict[str, Any]) -> None:
        """The encoder alone, a plain state dict like any weights file, with a config that rebuilds it."""
        if not self.is_main:
            return
        config = dataclasses.replace(self.config, model=dataclasses.replace(
            self.config.model, T=self.config.ssl.T, num_classes=None, pretrained=None))
        save_model(self.out_dir / ENCODER_FILE, self.masked_model.encoder, config_to_dict(config),
                   kind="pretrained_encoder", epoch=metrics.get("epoch"),
                   metrics={k: v for k, v in metrics.items() if isinstance(v, int | float)})

    def render_figure(self) -> Path:
        count = min(self.config.ssl.num_visualize, len(self.val_set))
        images = torch.stack([self.val_set[i][0] for i in range(count)])
        generator = torch.Generator().manual_seed(VALIDATION_MASK_SEED)
        return render_reconstructions(self.masked_model, images, self.out_dir / FIGURE_FILE, generator)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        if not self.is_main:
            return
        path = self.out_dir / "metrics.csv"
        columns = ["epoch", "lr", "train_loss", "val_loss", "epoch_seconds", "train_images_per_s"]
        new = not path.exists()
        with path.open("a", newline="") as handle:
            out = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            if new:
                out.writeheader()
            out.writerow({k: metrics.get(k, "") for k in columns})

    def epoch_summary(self, m: dict[str, Any]) -> str:
        text = (f"epoch {m['epoch'] + 1}/{self.total_epochs}  lr {m['lr']:.2e}  reconstruction loss "
                f"{m['train_loss']:.4f}  {m['train_images_per_s']:.1f} img/s")
        if "val_loss" in m:
            text += f"  | val loss {m['val_loss']:.4f}"
        return text

    def log(self, text: str) -> None:
        if self.is_main:
            print(text, flush=True)

    def install_signal_handlers(self) -> dict[int, Any]:
        """SIGINT/SIGTERM finish the current step, save ``last.safetensors`` and stop the run."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            return {}

        def request_stop(signum, frame):
            if self.stop_signal is not None:
                raise KeyboardInterrupt
            self.stop_signal = signum
            self.log(f"\n{signal.Signals(signum).name} received: saving a checkpoint after this step ...")

        return {signum: signal.signal(signum, request_stop) for signum in (signal.SIGINT, signal.SIGTERM)}
