"""The benchmark scripts' command lines offer what the config accepts."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from spikformer.config import load_config, setting_choices

ROOT = Path(__file__).resolve().parents[1]
SCRIPT, RECIPE = ROOT / "benchmarks" / "recipe_epoch_time.py", str(ROOT / "configs" / "cifar10_4_384.yaml")


def recipe_epoch_time():
    spec = importlib.util.spec_from_file_location("recipe_epoch_time", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recipe_epoch_time_offers_every_train_amp_value_of_the_config():
    parser = recipe_epoch_time().build_parser()
    (amp,) = [action for action in parser._actions if "--amp" in action.option_strings]
    assert tuple(amp.choices) == setting_choices("train", "amp")
    assert "gpu_fp16" in amp.choices  # the value added after the script's hand-written list
    for value in amp.choices:  # each one parses and is a valid config override, as main() applies it
        args = parser.parse_args([RECIPE, "--amp", value])
        assert load_config(args.configs[0], [f"train.amp={args.amp!r}"]).train.amp == value


def test_recipe_epoch_time_refuses_an_amp_value_the_config_does_not_know(capsys):
    with pytest.raises(SystemExit):
        recipe_epoch_time().build_parser().parse_args([RECIPE, "--amp", "fp8"])
    assert "invalid choice" in capsys.readouterr().err


def test_setting_choices_names_a_key_without_fixed_values():
    with pytest.raises(KeyError, match="model.embed_dim"):
        setting_choices("model", "embed_dim")
