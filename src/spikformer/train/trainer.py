"""The supervised training run: config -> data + model -> epochs -> run folder (config, metrics, checkpoints).

Usage: ``Trainer(load_config("configs/digits.yaml")).fit()`` (the ``spikformer train`` command).

A run folder holds ``config.yaml`` (resolved), ``metrics.csv``, ``last.safetensors`` (everything needed to
resume exactly) and ``best.safetensors`` (weights and config of the best validation epoch).

The run itself (devices, processes, resume, signals, saves) is ``RunLoop``'s (``train/loop.py``); this file
is what makes it supervised classification: the model and its classifier, the loss (with batch mixing), top-1
accuracy, validation and the best epoch.
"""

from __future__ import annotations

from typing import Any

from timm.loss import SoftTargetCrossEntropy
from torch import nn
from torch.utils.data import Dataset

from ..checkpoint import save_model
from ..config import Config, config_to_dict
from ..data.checks import check_class_count, dataset_class_count, dataset_classes, input_conversion
from ..data.transforms import build_batch_erasing, build_batch_mixing, chain_batch_transforms
from ..errors import CheckpointError
from ..models import build_model
from .engine import autocast, evaluate, topk_hits
from .loop import (  # noqa: F401  (re-exported: the names other modules import from here)
    MAX_CONSECUTIVE_SKIPS,
    NonFiniteLossError,
    RunLoop,
    Task,
    TrainingInterrupted,
    finite_only,
    freeze_batchnorm,
    prepare_run_folder,
    seed_everything,
    trim_metrics,
)


class ClassificationTask(Task):
    """Supervised classification. ``batch_transform`` ``(inputs, labels) -> (inputs, targets)`` and
    ``criterion`` default to what the config asks for: timm's mixup/cutmix with soft-target cross-entropy when
    ``data.mixup_alpha``/``data.cutmix_alpha`` are set, else cross-entropy with label smoothing. A batch
    transform with a ``set_epoch(epoch)`` method is told each epoch (mixing switches off that way)."""

    label = "epoch"
    metric_columns = ("epoch", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5",
                      "epoch_seconds", "train_images_per_s")

    def __init__(self, batch_transform=None, criterion: nn.Module | None = None) -> None:
        self.batch_transform = batch_transform
        self.criterion = criterion

    def check_data(self, loop: RunLoop) -> None:
        """Take the class count from the dataset when the config leaves it open, and refuse a head of another
        size; keep the class names for the checkpoints; say in one line how the images are converted when
        that loses information (colour images for a grey model)."""
        model = loop.config.model
        if model.num_classes is None:
            model.num_classes = dataset_class_count(loop.train_set)
        check_class_count(loop.train_set, model.num_classes, loop.config.data.name)
        loop.class_names = dataset_classes(loop.train_set)
        note = input_conversion(loop.train_set)
        if note:
            loop.log(note)

    def build_model(self, config: Config) -> nn.Module:
        return build_model(config.model)

    def initialise(self, loop: RunLoop, model: nn.Module) -> None:
        if loop.config.model.pretrained:
            load_pretrained(model, loop.config.model.pretrained, loop.log)

    def setup(self, loop: RunLoop) -> None:
        config = loop.config
        mixing = None
        if self.batch_transform is None:
            num_classes = getattr(loop.model, "num_classes", config.model.num_classes)
            mixing = build_batch_mixing(config.data, num_classes, config.optim.label_smoothing)
            # Erasing comes after mixing, on the normalised batch, as in the original recipes (SPEC §2).
            self.batch_transform = chain_batch_transforms(mixing, build_batch_erasing(config.data))
        if self.criterion is None:
            self.criterion = (SoftTargetCrossEntropy() if mixing is not None
                              else nn.CrossEntropyLoss(label_smoothing=config.optim.label_smoothing))

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.batch_transform, "set_epoch"):
            self.batch_transform.set_epoch(epoch)

    def step(self, loop: RunLoop, batch) -> tuple[Any, dict[str, float]]:
        images, labels = batch
        if self.batch_transform is not None:
            images, labels = self.batch_transform(images, labels)
        with autocast(loop.device, loop.amp_dtype):
            logits = loop.train_model(images)
        loss = self.criterion(logits.float(), labels)
        correct = topk_hits(logits.detach().float(), labels, (1,))[0]  # on the device: the loop reads it
        return loss, {"correct": correct, "count": float(len(images))}

    def epoch_stats(self, sums: dict[str, float]) -> dict[str, float]:
        count = max(sums["count"], 1)
        return {"train_loss": sums["loss"] / count, "train_top1": 100.0 * sums.get("correct", 0.0) / count}

    def progress(self, sums: dict[str, float]) -> dict[str, str]:
        count = max(sums["count"], 1)
        return {"loss": f"{sums['loss'] / count:.3f}", "acc": f"{100 * sums.get('correct', 0.0) / count:.1f}"}

    def validate(self, loop: RunLoop) -> dict[str, float]:
        result = evaluate(loop.eval_model, loop.val_loader, loop.device, loop.amp_dtype, loop.dist)
        top5 = {"val_top5": result["top5"]} if "top5" in result else {}  # only with more than 5 classes
        return {"val_loss": result["loss"], "val_top1": result["top1"], **top5}

    def score(self, metrics: dict[str, Any]) -> float | None:
        return metrics.get("val_top1")

    def save_outputs(self, loop: RunLoop, metrics: dict[str, Any], improved: bool) -> None:
        if improved:
            names = {"class_names": loop.class_names} if loop.class_names is not None else {}
            save_model(loop.out_dir / "best.safetensors", loop.eval_model, config_to_dict(loop.config),
                       kind="weights", metrics=finite_only(metrics), **names)

    def summary(self, m: dict[str, Any]) -> str:
        return f"train loss {m['train_loss']:.4f} acc {m['train_top1']:.2f}%"

    def validation_summary(self, m: dict[str, Any]) -> str:
        if "val_top1" not in m:
            return ""
        top5 = f" top5 {m['val_top5']:.2f}%" if "val_top5" in m else ""
        return f"val loss {m['val_loss']:.4f} top1 {m['val_top1']:.2f}%{top5}"

    def result(self, loop: RunLoop, metrics: dict[str, Any]) -> dict[str, Any]:
        # best_epoch numbered from 1 like every output (the position counts from 0; 0: no epoch validated)
        return {**metrics, "best_top1": loop.position.best_top1, "best_epoch": loop.position.best_epoch + 1}


def load_pretrained(model: nn.Module, path: str, log) -> None:
    """Initialise ``model`` from a checkpoint's weights; the classifier is kept only if its shape fits."""
    from ..checkpoint import match_state_dict, read_model_state

    state, _ = read_model_state(path, use_ema=True)
    head_keys = [k for k in state if k.startswith("head.")]
    model_state = model.state_dict()
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
    match_state_dict(model, state, strict=False, source=path)
    fresh = "kept" if any(k.startswith("head.") for k in state) else "freshly initialised"
    log(f"initialised from {path}: {sum(k in state for k in model_state)} of {len(model_state)} "
        f"tensors loaded, classifier {fresh}")


class Trainer(RunLoop):
    """One supervised run (see ``ClassificationTask`` for ``batch_transform`` and ``criterion``).

    ``model``, ``train_dataset`` and ``val_dataset`` may be given ready-made instead of by the config's names:
    ``Trainer(config, model=my_module, train_dataset=train, val_dataset=val)``. A ready model is saved as it
    is; its checkpoints are loaded back with ``load_checkpoint`` into the same module (the config does not
    describe it)."""

    def __init__(self, config: Config, batch_transform=None, criterion: nn.Module | None = None, *,
                 model: nn.Module | None = None, train_dataset: Dataset | None = None,
                 val_dataset: Dataset | None = None) -> None:
        super().__init__(config, ClassificationTask(batch_transform, criterion), model=model,
                         train_dataset=train_dataset, val_dataset=val_dataset)

    @property
    def criterion(self) -> nn.Module:
        return self.task.criterion

    @property
    def batch_transform(self):
        return self.task.batch_transform
