"""The masked pre-training run: config -> unlabelled images -> encoder + decoder -> encoder checkpoint.

Usage: ``Pretrainer(load_config("configs/digits_v2_pretrain.yaml")).fit()`` (the ``spikformer pretrain``
command). The run folder holds ``config.yaml``, ``metrics.csv`` (reconstruction loss per epoch),
``last.safetensors`` (encoder, decoder and optimizer: resume with ``train.resume=auto``; the
``reconstruct`` command reads it), ``encoder.safetensors`` (the encoder alone, with the config: what
``model.pretrained`` loads for fine-tuning) and ``reconstructions.png``.

The run itself (devices, processes, accumulation, resume, signals, saves) is ``RunLoop``'s
(``train/loop.py``); this file is what makes it masked pre-training. A sample's mask depends on (seed, epoch,
sample) alone, not on a process's random stream: a run on N processes sees the masks one process would, and a
resumed run the masks of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..checkpoint import save_model, unwrap_model
from ..config import Config, config_to_dict
from ..errors import ConfigError
from ..train.distributed import all_reduce_sum
from ..train.engine import autocast
from ..train.loop import RunLoop, Task
from .figure import render_reconstructions
from .masking import sample_masks
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


class WithIndex(Dataset):
    """``dataset``'s images with their sample index instead of the label (which pre-training never reads)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.dataset[index][0], index


class MaskedPretrainingTask(Task):
    """Masked image modelling: reconstruct the hidden patches; the encoder of the last epoch is kept."""

    label = "pretrain"
    metric_columns = ("epoch", "lr", "train_loss", "val_loss", "epoch_seconds", "train_images_per_s")

    def __init__(self) -> None:
        self.epoch = 0

    def wrap_datasets(self, train: Dataset, val: Dataset) -> tuple[Dataset, Dataset]:
        return WithIndex(train), WithIndex(val)

    def build_model(self, config: Config) -> nn.Module:
        return build_masked_model(config)

    def initialise(self, loop: RunLoop, model: nn.Module) -> None:
        pretrained = loop.config.model.pretrained
        if pretrained:  # continue from an earlier encoder
            from ..checkpoint import match_state_dict, read_model_state

            state, _ = read_model_state(pretrained, use_ema=True)
            match_state_dict(model.encoder, state, strict=True, source=pretrained)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def masks(self, loop: RunLoop, indices: torch.Tensor, seed: int, epoch: int) -> torch.Tensor:
        model = unwrap_model(loop.model)
        return sample_masks(indices, model.grid, model.mask_ratio, seed, epoch).to(loop.device)

    def step(self, loop: RunLoop, batch) -> tuple[torch.Tensor, dict[str, float]]:
        images, indices = batch
        mask = self.masks(loop, indices, loop.config.train.seed, self.epoch)
        with autocast(loop.device, loop.amp_dtype):
            loss, _, _ = loop.train_model(images, mask)
        return loss, {"count": float(len(images))}

    @torch.no_grad()
    def validate(self, loop: RunLoop) -> dict[str, float]:
        """Mean reconstruction loss on the validation images, with the same masks every time."""
        model = unwrap_model(loop.model)
        model.eval()
        loss_sum = count = 0.0
        for images, indices in loop.val_loader:
            images = images.to(loop.device, non_blocking=True)
            mask = self.masks(loop, indices, VALIDATION_MASK_SEED, 0)
            with autocast(loop.device, loop.amp_dtype):
                loss, _, _ = model(images, mask)
            loss_sum += float(loss) * len(images)
            count += len(images)
        loss_sum, count = all_reduce_sum([loss_sum, count], loop.device, loop.dist)
        return {"val_loss": loss_sum / max(count, 1)}

    def save_outputs(self, loop: RunLoop, metrics: dict[str, Any], improved: bool) -> None:
        """The encoder alone, under ``model.*`` like any weight file, with a config that rebuilds it."""
        config = loop.config
        config = dataclasses.replace(config, model=dataclasses.replace(
            config.model, T=config.ssl.T, num_classes=None, pretrained=None))
        save_model(loop.out_dir / ENCODER_FILE, unwrap_model(loop.model).encoder, config_to_dict(config),
                   kind="pretrained_encoder", epoch=metrics.get("epoch"),
                   metrics={k: v for k, v in metrics.items() if isinstance(v, int | float)})

    def finish(self, loop: RunLoop) -> None:
        if loop.is_main and loop.config.ssl.num_visualize:
            loop.log(f"reconstructions: {render_figure(loop)}")

    def summary(self, m: dict[str, Any]) -> str:
        return f"reconstruction loss {m['train_loss']:.4f}"

    def validation_summary(self, m: dict[str, Any]) -> str:
        return f"val loss {m['val_loss']:.4f}" if "val_loss" in m else ""

    def result(self, loop: RunLoop, metrics: dict[str, Any]) -> dict[str, Any]:
        return {**metrics, "encoder": str(loop.out_dir / ENCODER_FILE)}


def render_figure(loop: RunLoop) -> Path:
    count = min(loop.config.ssl.num_visualize, len(loop.val_set))
    images = torch.stack([loop.val_set[i][0] for i in range(count)])
    generator = torch.Generator().manual_seed(VALIDATION_MASK_SEED)
    return render_reconstructions(unwrap_model(loop.model), images, loop.out_dir / FIGURE_FILE, generator)


class Pretrainer(RunLoop):
    """Masked pre-training of the config's model (``model`` + ``ssl`` sections) on its dataset's images."""

    def __init__(self, config: Config) -> None:
        problems = pretraining_config_problems(config)
        if problems:
            raise ConfigError("; ".join(problems))
        super().__init__(config, MaskedPretrainingTask())

    @property
    def masked_model(self) -> MaskedSpikformer:
        return unwrap_model(self.model)
