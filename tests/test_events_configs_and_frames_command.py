"""The DVS recipe configs and ``spikformer frames``, which draws one recording's event frames."""

from __future__ import annotations

import math

import pytest
from event_writers import write_dvsgesture

from spikformer.cli import main
from spikformer.config import load_config
from spikformer.data import build_dataset
from spikformer.models import build_model

TINY = ["model.embed_dim=16", "model.depth=1", "model.num_heads=2", "model.img_size=32", "model.T=2"]


@pytest.mark.parametrize("path, dataset, model_name, classes, heads, epochs", [
    ("configs/cifar10dvs_2_256.yaml", "cifar10dvs", "spikformer_dvs_2_256", 10, 16, 106),
    ("configs/dvs128gesture_2_256.yaml", "dvs128gesture", "spikformer_dvs_2_256_qkpool", 11, 8, 200),
])
def test_dvs_configs_hold_the_original_recipe(path, dataset, model_name, classes, heads, epochs):
    config = load_config(path)  # every value: tests/test_recipes.py's table; here the model it builds
    assert (config.data.name, config.model.name, config.model.T) == (dataset, model_name, 16)
    assert (config.data.batch_size, config.optim.lr, config.optim.weight_decay) == (16, 1e-3, 0.06)
    assert (config.optim.schedule, config.optim.warmup_epochs, config.optim.label_smoothing) == ("cosine", 10, 0.1)
    assert (config.train.epochs + config.optim.cooldown_epochs, config.train.amp) == (epochs, "gpu_fp16")
    model = build_model(config.model)
    assert model.num_classes == classes and model.blocks[0].attn.num_heads == heads
    assert sum(p.numel() for p in model.parameters()) == {10: 2_566_666, 11: 2_566_923}[classes]  # SPEC §2


def test_the_gesture_config_trains_on_the_release_layout(tmp_path):
    from spikformer.train import Trainer

    write_dvsgesture(tmp_path, {"ibmGestureTrain/user01_led": [0, 1, 2, 3], "ibmGestureTest/user24_led": [0]})
    config = load_config("configs/dvs128gesture_2_256.yaml",
                         [f"data.root={tmp_path}", "data.batch_size=2", "data.num_workers=0", "train.epochs=1",
                          "optim.warmup_epochs=0", "optim.cooldown_epochs=0", f"train.out_dir={tmp_path / 'run'}",
                          "train.progress=false",
                          "train.tensorboard=false", *TINY])
    trainer = Trainer(config)
    result = trainer.fit()
    assert trainer.position.step == 2 and math.isfinite(result["train_loss"])


def test_the_dvs_configs_need_a_data_root():
    config = load_config("configs/cifar10dvs_2_256.yaml")
    with pytest.raises(Exception, match="needs data.root"):
        build_dataset(config, "train")


def test_frames_command_draws_one_recording_to_png(tmp_path, capsys):
    out = tmp_path / "grid.png"
    code = main(["frames", "--config", "configs/digits_dvs.yaml", "model.img_size=16", "--index", "2",
                 "--out", str(out)])
    assert code == 0 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "8 frames of 16x16" in capsys.readouterr().out


def test_frames_command_draws_a_real_dataset_file(tmp_path):
    write_dvsgesture(tmp_path, {"ibmGestureTest/user24_led": [3]})
    out = tmp_path / "gesture.png"
    assert main(["frames", "--config", "configs/dvs128gesture_2_256.yaml", f"data.root={tmp_path}",
                 "model.T=4", "--out", str(out)]) == 0
    assert out.stat().st_size > 1000


@pytest.mark.parametrize("argv, message", [
    (["--config", "configs/digits.yaml"], "not event frames"),
    (["--config", "configs/digits_dvs.yaml", "model.img_size=16", "--index", "999"], "out of range"),
])
def test_frames_command_explains_what_it_cannot_draw(tmp_path, capsys, argv, message):
    assert main(["frames", *argv, "--out", str(tmp_path / "x.png")]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("override, message", [
    ("data.event_framing=bins", "data.event_framing must be one of count, time"),
    ("data.event_flip=1.5", "data.event_flip must be between 0 and 1"),
    ("data.event_drop=-0.1", "data.event_drop must be between 0 and 1"),
    ("data.event_roll=-2", "data.event_roll must be >= 0"),
])
def test_event_options_are_checked_when_the_config_is_read(override, message):
    from spikformer.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config("configs/digits_dvs.yaml", [override])
