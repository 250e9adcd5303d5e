"""Run configuration: YAML files with four sections, ``section.key=value`` overrides, errors that name the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from spikformer.config import (
    Config,
    config_from_dict,
    config_to_dict,
    load_config,
    parse_override,
    save_config,
    section_names,
)
from spikformer.errors import ConfigError
from spikformer.models import resolve_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_a_config_has_the_four_sections_plus_masked_pretraining():
    assert section_names() == ["model", "data", "optim", "train", "ssl"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_round_trips(path, tmp_path):
    config = load_config(path)
    assert isinstance(config, Config)
    save_config(config, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == config


def test_configs_folder_holds_the_demo():
    assert any(p.name == "digits.yaml" for p in CONFIGS)


def test_yaml_sections_set_their_fields_and_keep_defaults_elsewhere(tmp_path):
    path = write_yaml(tmp_path, """
model:
  name: spikformer_8_512
  embed_dim: 64
  depth: 1
data:
  batch_size: 32
optim:
  lr: 1e-3          # YAML 1.2 float, no "1.0e-3" needed
  betas: [0.9, 0.95]
train:
  amp: off          # the string "off", not a boolean
  epochs: 3
""")
    config = load_config(path)
    assert (config.model.name, config.model.embed_dim, config.model.depth) == ("spikformer_8_512", 64, 1)
    assert config.model.T is None  # unset: the variant's own value
    assert config.data.batch_size == 32 and config.optim.lr == 1e-3 and config.optim.betas == (0.9, 0.95)
    assert config.train.amp == "off" and config.train.epochs == 3
    assert config.train.seed == Config().train.seed  # untouched defaults


@pytest.mark.parametrize(
    "override, section, key, value",
    [
        ("model.embed_dim=64", "model", "embed_dim", 64),
        ("optim.lr=1e-3", "optim", "lr", 1e-3),
        ("optim.lr=2.5e-4", "optim", "lr", 2.5e-4),
        ("optim.weight_decay=0", "optim", "weight_decay", 0.0),  # an int where a float is due
        ("train.amp=off", "train", "amp", "off"),
        ("train.overwrite=true", "train", "overwrite", True),
        ("optim.clip_grad=null", "optim", "clip_grad", None),
        ("optim.clip_grad=1.0", "optim", "clip_grad", 1.0),
        ("optim.betas=[0.9, 0.95]", "optim", "betas", (0.9, 0.95)),
        ("train.out_dir=runs/x=1", "train", "out_dir", "runs/x=1"),  # only the first '=' splits
        ("train.resume=auto", "train", "resume", "auto"),
    ],
)
def test_dotted_overrides_take_yaml_typed_values(override, section, key, value):
    config = load_config(None, [override])
    assert getattr(getattr(config, section), key) == value
    assert type(getattr(getattr(config, section), key)) is type(value)


def test_overrides_apply_on_top_of_the_file_in_order():
    config = load_config(CONFIGS[0].parent / "digits.yaml", ["train.epochs=2", "train.epochs=5", "model.depth=2"])
    assert config.train.epochs == 5 and config.model.depth == 2


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("model.embde_dim=64", "unknown key model.embde_dim (did you mean 'embed_dim'?)"),
        ("optim.learning_rate=1", "unknown key optim.learning_rate"),
        ("train.epoch=1", "did you mean 'epochs'?"),
        ("modle.depth=1", "unknown config section 'modle' (did you mean 'model'?)"),
        ("model.name=spikformer_8_521", "did you mean 'spikformer_8_512'"),
    ],
)
def test_unknown_key_is_an_error_naming_the_nearest_valid_key(override, fragment):
    with pytest.raises(ConfigError) as error:
        resolve_config(load_config(None, [override]))  # a model's name is known once the models are
    assert fragment in str(error.value)


def test_unknown_key_in_a_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key data.batchsize \(did you mean 'batch_size'\?\)"):
        load_config(write_yaml(tmp_path, "data:\n  batchsize: 8\n"))


# The full catalogue of refused values lives in test_robustness_config.py; these are the spec's examples.
@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.epochs=1.5", "train.epochs must be an integer"),
        ("optim.lr=fast", "optim.lr must be a number"),
        ("train.amp=fp8", "train.amp must be one of auto, bf16, fp16, off"),
        ("model.T=0", "model.T must be >= 1"),
        (["model.embed_dim=36", "model.num_heads=4"], "multiple of 8"),  # the model's own checks, at the run's start
        ("model.stem_options={pool: false}", "stem 'sps'"),
        ("model.lif_backend=cuda_magic", "model.lif_backend must be one of auto"),
        ("epochs=3", "must be section.key"),
    ],
)
def test_invalid_values_are_errors_that_name_the_key(override, fragment):
    with pytest.raises(ConfigError) as error:
        resolve_config(load_config(None, override if isinstance(override, list) else [override]))
    assert fragment in str(error.value)


def test_config_errors_are_value_errors():
    assert issubclass(ConfigError, ValueError)


def test_missing_or_malformed_files_are_explained(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write_yaml(tmp_path, "model: [unclosed\n"))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write_yaml(tmp_path, "- a list\n- of things\n"))
    with pytest.raises(ConfigError, match="section 'model' must be a mapping"):
        load_config(write_yaml(tmp_path, "model: spikformer_8_512\n"))


def test_empty_file_gives_the_defaults(tmp_path):
    assert load_config(write_yaml(tmp_path, "")) == Config()


def test_config_to_dict_and_back_is_the_identity():
    config = load_config(CONFIGS[0], ["optim.betas=[0.8, 0.9]", "optim.clip_grad=2"])
    raw = config_to_dict(config)
    assert raw["optim"]["betas"] == [0.8, 0.9]  # plain YAML/JSON types
    assert config_from_dict(raw) == config


def test_parse_override_splits_at_the_first_equals_sign():
    assert parse_override("train.out_dir=runs/a=b") == ("train", "out_dir", "runs/a=b")
    assert parse_override("train.resume=") == ("train", "resume", None)
