"""The recipe configs: every file in configs/ loads and builds its model; those of the static-image datasets
reproduce SPEC §2's training recipes and train two steps on a stand-in dataset in the real format."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from static_data import write_cifar10, write_cifar100, write_image_tree
from timm.loss import SoftTargetCrossEntropy

from spikformer.config import load_config
from spikformer.data import model_input
from spikformer.data.transforms import BatchMixing
from spikformer.models import build_model, resolve_config
from spikformer.train import Trainer
from spikformer.train.optim import build_optimizer, build_scheduler

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
CIFAR = [p for p in CONFIGS if p.name.startswith(("cifar10_", "cifar100_"))]
# V1 ImageNet recipes; the V2 configs (imagenet_v2_*) follow their own recipe and are tested in test_v2_configs.
IMAGENET = [p for p in CONFIGS if p.name.startswith("imagenet_") and not p.name.startswith("imagenet_v2_")]
# Model sizes in the papers' configs -> the parameter counts of SPEC §2's table.
PARAMETERS = {
    "cifar10_4_256": 4_155_178, "cifar100_4_256": 4_178_308, "cifar10_2_384": 5_765_050,
    "cifar100_2_384": 5_799_700, "cifar10_4_384": 9_324_730, "cifar100_4_384": 9_359_380,
    "imagenet_8_384": 16_816_024, "imagenet_6_512": 23_373_352, "imagenet_8_512": 29_689_384,
    "imagenet_10_512": 36_005_416, "imagenet_8_768": 66_338_632,
}
CIFAR_RECIPE = {
    "train.epochs": 300, "optim.name": "adamw", "optim.lr": 5e-4, "optim.weight_decay": 6e-2,
    "optim.schedule": "cosine", "optim.warmup_epochs": 20, "optim.warmup_lr": 1e-5, "optim.min_lr": 1e-5,
    "optim.cooldown_epochs": 10, "data.batch_size": 128, "data.auto_augment": "rand-m9-n1-mstd0.4-inc1",
    "data.mixup_alpha": 0.5, "data.mixup_off_epoch": 200, "data.cutmix_alpha": 0.0, "data.random_erasing": 0.25,
    "optim.label_smoothing": 0.1, "data.interpolation": "bicubic", "data.mean": [0.4914, 0.4822, 0.4465],
    "data.std": [0.2470, 0.2435, 0.2616], "model.T": 4,
}
IMAGENET_RECIPE = {
    "train.epochs": 300, "optim.name": "adamw", "optim.lr": 5e-4, "optim.weight_decay": 5e-2,
    "optim.schedule": "cosine", "optim.warmup_epochs": 20, "optim.warmup_lr": 1e-6, "optim.min_lr": 1e-5,
    "data.auto_augment": "rand-m9-mstd0.5-inc1", "data.mixup_alpha": 0.8, "data.cutmix_alpha": 1.0,
    "data.mixup_switch_prob": 0.5, "data.random_erasing": 0.25, "optim.label_smoothing": 0.1,
    "data.interpolation": "bicubic", "data.crop_pct": 1.0, "data.batch_size": 24, "data.global_batch_size": 24 * 8,
    "model.T": 4, "model.num_classes": 1000, "model.img_size": 224,
}
TINY = ["model.embed_dim=16", "model.depth=1", "model.num_heads=2", "data.num_workers=0", "train.progress=false",
        "train.tensorboard=false", "train.threads=1"]


def write_stand_in(name: str, root: Path) -> tuple[Path, list[str]]:
    """A few samples of dataset ``name`` in its real format, and overrides sizing a run to them (2 steps)."""
    if name == "cifar10":
        return write_cifar10(root, per_batch=2, test=4).parent, ["data.batch_size=4"]  # 10 images
    if name == "cifar100":
        return write_cifar100(root, train=8, test=4).parent, ["data.batch_size=4"]
    # 9 images of 3 classes; 2 images x 2 accumulation steps per step, at 32x32 to stay small
    return write_image_tree(root, train_per_class=3, val_per_class=1), [
        "data.batch_size=2", "data.global_batch_size=4", "model.img_size=32"]


def setting(config, dotted: str):
    section, key = dotted.split(".")
    if section == "model":  # the variant's value where the config leaves it open
        return model_input(resolve_config(config))[key]
    value = getattr(getattr(config, section), key)
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_loads_and_builds_its_model(path):
    config = load_config(path)
    with torch.device("meta"):  # full size, without allocating the weights
        model = build_model(config.model)
    count = sum(p.numel() for p in model.parameters())
    if path.stem in PARAMETERS:
        assert count == PARAMETERS[path.stem]
    assert count > 0


@pytest.mark.parametrize("path", CIFAR, ids=lambda p: p.stem)
def test_cifar_configs_state_the_original_recipe(path):
    config = load_config(path)
    for dotted, value in CIFAR_RECIPE.items():
        assert setting(config, dotted) == value, dotted
    assert config.optim.schedule_unit == "epoch"  # the original steps the lr once per epoch
    assert config.data.name == path.stem.split("_")[0] and config.model.num_classes == int(path.stem[5:].split("_")[0])
    assert "top-1" in path.read_text().splitlines()[0]  # the first line names the accuracy it targets


@pytest.mark.parametrize("path", IMAGENET, ids=lambda p: p.stem)
def test_imagenet_configs_state_the_original_recipe(path):
    config = load_config(path)
    for dotted, value in IMAGENET_RECIPE.items():
        assert setting(config, dotted) == value, dotted
    assert config.data.name == "imagenet" and "top-1" in path.read_text().splitlines()[0]
    assert "8 GPUs" in path.read_text()


def test_cifar_schedule_warms_up_for_20_epochs_then_cools_down_for_10():
    config = load_config(CIFAR[0])
    optimizer = build_optimizer(torch.nn.Linear(1, 1), config.optim)
    scheduler = build_scheduler(optimizer, config.optim, config.train.epochs, steps_per_epoch=390)

    def lr_at(epoch: int) -> float:
        scheduler.step(epoch)
        return optimizer.param_groups[0]["lr"]

    assert lr_at(0) == pytest.approx(1e-5)
    assert lr_at(10) == pytest.approx(1e-5 + 10 * (5e-4 - 1e-5) / 20)
    assert lr_at(150) == pytest.approx(1e-5 + 0.5 * (5e-4 - 1e-5) * (1 + math.cos(math.pi * 150 / 300)))
    assert all(lr_at(e) == pytest.approx(1e-5) for e in range(300, 310))  # the 10 cool-down epochs
    assert config.train.epochs + config.optim.cooldown_epochs == 310


def test_cifar_mixup_is_off_from_epoch_200():
    config = load_config(CIFAR[0])
    mixing = BatchMixing(config.data, num_classes=10, label_smoothing=0.1)
    mixing.set_epoch(199)
    assert mixing.enabled
    mixing.set_epoch(200)
    assert not mixing.enabled


def dataset_name(path: Path) -> str | None:
    try:
        return load_config(path).data.name
    except Exception:  # reported by test_every_config_loads_and_builds_its_model
        return None


@pytest.mark.parametrize("path", [p for p in CONFIGS if dataset_name(p) in ("cifar10", "cifar100", "imagenet", "folder")
                                  and not p.stem.endswith("_pretrain")], ids=lambda p: p.stem)
def test_recipe_trains_two_steps_on_a_stand_in_dataset(path, tmp_path):
    name = load_config(path).data.name
    root, sizing = write_stand_in(name, tmp_path / "data")
    # A fine-tuning recipe starts from its pre-training run's encoder, which a stand-in run does not have.
    config = load_config(path, [*TINY, *sizing, f"data.root={root}", f"train.out_dir={tmp_path / 'run'}",
                                "model.pretrained=null"])
    trainer = Trainer(config)  # the recipe's own pipeline, optimizer and schedule
    assert trainer.steps_per_epoch == 2
    mixing = config.data.mixup_alpha > 0 or config.data.cutmix_alpha > 0
    assert isinstance(trainer.criterion, SoftTargetCrossEntropy) == mixing
    assert isinstance(trainer.batch_transform, BatchMixing) == mixing
    before = [p.detach().clone() for p in trainer.model.parameters()]
    stats = trainer.train_one_epoch(0)
    assert trainer.position.step == 2 and math.isfinite(stats["train_loss"])
    if config.optim.layer_decay is None:  # with layer decay the first group's lr is scaled
        assert stats["lr"] == pytest.approx(config.optim.warmup_lr)  # epoch 0 of the warm-up
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    result = trainer.validate()
    assert math.isfinite(result["val_loss"]) and 0 <= result["val_top1"] <= 100
