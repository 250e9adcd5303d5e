"""Optimizer and learning-rate schedule from the ``optim`` section (timm's implementations)."""

from __future__ import annotations

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn

from ..config import OptimConfig


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW (or SGD) with no weight decay on biases and norm parameters, and optional layer-wise lr decay."""
    kwargs = {"eps": cfg.eps, "betas": cfg.betas} if cfg.name == "adamw" else {"momentum": cfg.momentum}
    return create_optimizer_v2(model, opt=cfg.name, lr=cfg.lr, weight_decay=cfg.weight_decay,
                               layer_decay=cfg.layer_decay, filter_bias_and_bn=True, **kwargs)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, epochs: int, steps_per_epoch: int
                    ) -> CosineLRScheduler:
    """Linear warm-up from ``warmup_lr`` then cosine to ``min_lr`` (constant ``lr`` for ``schedule:
    constant``). In ``step`` units the schedule is stepped with ``step_update(optimizer_steps)``; in
    ``epoch`` units with ``step(epoch)`` at each epoch start, as the original timm trainer does."""
    per_epoch = cfg.schedule_unit == "epoch"
    scale = 1 if per_epoch else max(1, steps_per_epoch)
    min_lr = cfg.lr if cfg.schedule == "constant" else cfg.min_lr
    return CosineLRScheduler(
        optimizer,
        t_initial=max(1, epochs * scale),
        lr_min=min_lr,
        warmup_t=int(round(cfg.warmup_epochs * scale)),
        warmup_lr_init=cfg.warmup_lr,
        cycle_limit=1,
        t_in_epochs=per_epoch,
    )


def set_schedule_position(scheduler: CosineLRScheduler, epoch: int, optimizer_steps: int) -> None:
    """Put the learning rate where the schedule says it is at (epoch, steps)."""
    if scheduler.t_in_epochs:
        scheduler.step(epoch)
    else:
        scheduler.step_update(optimizer_steps)
