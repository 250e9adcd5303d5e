"""Bad input at the config, model and data boundaries gets one clear error that names the fix."""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch

from spikformer.config import Config, config_from_dict, load_config, read_yaml, section_names
from spikformer.data import build_dataset, dataset_names
from spikformer.errors import ConfigError, SpikformerError
from spikformer.models import create_model, resolve_config
from spikformer.train.engine import resolve_device


def every_config_key() -> list[tuple[str, str]]:
    return [(section, f.name) for section in section_names()
            for f in dataclasses.fields(type(getattr(Config(), section)))]


@pytest.mark.parametrize("section,key", every_config_key())
def test_a_misspelt_key_names_the_key_it_meant(section, key):
    typo = key.swapcase() if len(key) < 3 else key[:-1] + ("x" if key[-1] != "x" else "y")
    with pytest.raises(ConfigError, match=rf"unknown key {section}\.{typo}.*did you mean '{key}'"):
        config_from_dict({section: {typo: 1}})


def test_a_misspelt_section_names_the_section_it_meant():
    with pytest.raises(ConfigError, match="unknown config section 'trian'.*did you mean 'train'"):
        config_from_dict({"trian": {"epochs": 1}})


def test_a_non_string_key_is_an_unknown_key_not_a_crash():
    with pytest.raises(ConfigError, match="unknown key model.3"):
        config_from_dict({"model": {3: 1}})


@pytest.mark.parametrize("override,message", [
    ("model.T=0", r"model.T must be >= 1, got 0"),
    ("model.T=-3", r"model.T must be >= 1"),
    ("model.T=2.5", r"model.T must be an integer, got 2.5"),
    ("model.T=four", r"model.T must be an integer, got 'four'"),
    ("optim.lr=0", r"optim.lr must be > 0, got 0.0"),
    ("optim.lr=-1e-3", r"optim.lr must be > 0"),
    ("optim.lr=.nan", r"optim.lr must be a finite number"),
    ("optim.eps=0", r"optim.eps must be > 0"),
    ("optim.betas=[0.9, 1.0]", r"optim.betas must both be in \[0, 1\)"),
    ("optim.betas=0.9", r"optim.betas must be a list of 2 values"),
    ("optim.momentum=1.5", r"optim.momentum must be between 0 and 1"),
    ("optim.clip_grad=0", r"optim.clip_grad must be > 0"),
    ("optim.label_smoothing=1.0", r"optim.label_smoothing must be below 1"),
    ("optim.min_lr=1.0", r"optim.min_lr \(1.0\) is larger than optim.lr"),
    ("data.batch_size=0", r"data.batch_size must be >= 1"),
    ("data.train_fraction=0", r"data.train_fraction must be > 0"),
    ("data.train_fraction=1.5", r"data.train_fraction must be between 0 and 1"),
    ("train.epochs=true", r"train.epochs must be an integer, got True"),
    ("train.deterministic=1", r"train.deterministic must be true or false"),
    ("train.nan_policy=skpi", r"train.nan_policy must be one of stop, skip.*did you mean 'skip'"),
    ("train.device=gpu0", r"train.device 'gpu0' is not a device"),
    ("train.out_dir=''", r"train.out_dir must be a path"),
    ("train.ema_decay=1", r"train.ema_decay must be below 1"),
    ("model.drop_path_rate=1.0", r"model.drop_path_rate must be below 1"),
    ("model.mlp_ratio=0", r"model.mlp_ratio must be > 0"),
    ("model.patch_size=3", r"model.img_size 32 is not divisible by model.patch_size 3"),
    ("model.patch_size=32", r"SPS patch_size must be one of"),
    ("model.num_heads=3", r"model.embed_dim 256 is not divisible by model.num_heads 3"),
    ("model.lif_backend=cuda", r"model.lif_backend must be one of auto"),
    ("model.stem_options={kernel: 5}", r"cannot be built .*unexpected keyword argument 'kernel'"),
    ("model.neuron_options={v_threshold: .nan}", r"model.neuron_options.v_threshold must be a finite number"),
    ("model.stem_options={kernel: [1, .inf]}", r"model.stem_options.kernel\[1\] must be a finite number"),
    ("train.seed=9223372036854775808", r"train.seed must be an integer of at most 64 bits"),
    ("train.seed=" + "5" * 5000, r"train.seed.*an integer of 5000 digits"),
    ("model.name=spikformer_cifar_4_265",
     r"unknown model 'spikformer_cifar_4_265' \(did you mean 'spikformer_cifar_4_256'"),
])
def test_a_wrong_value_type_or_range_is_refused_at_load(override, message):
    # Type and range errors stop load_config; those that need the model stop the run's resolve step.
    with pytest.raises(ConfigError, match=message):
        resolve_config(load_config(None, [override]))


def test_a_model_the_constructor_would_refuse_is_refused_at_load():
    # Caught by building the model on the meta device during validation, not minutes into a run.
    with pytest.raises(ConfigError, match=r"cannot be built .*SPS embed_dim must be a multiple of 8 \(got 12\)"):
        resolve_config(load_config(None, ["model.embed_dim=12", "model.num_heads=3"]))


def test_yaml_1_1_spellings_mean_what_the_user_wrote():
    # PyYAML reads 1e-3 as a string and an unquoted off as false; both are what a user types.
    config = load_config(None, ["optim.lr=1e-3", "train.amp=off"])
    assert config.optim.lr == 1e-3 and config.train.amp == "off"


def test_an_override_without_section_or_value_says_how_to_write_one():
    with pytest.raises(ConfigError, match=r"must look like section.key=value"):
        load_config(None, ["epochs"])
    with pytest.raises(ConfigError, match=r"the key must be section.key"):
        load_config(None, ["epochs=3"])


def test_a_config_file_that_is_missing_a_folder_or_not_a_mapping_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping of sections"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("model: {name: [\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(tmp_path / "broken.yaml")
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00\x81" * 10)
    with pytest.raises(ConfigError, match="is not a text file"):
        load_config(tmp_path / "binary.yaml")


def test_a_key_given_twice_in_a_config_file_is_refused_not_silently_dropped(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("train:\n  epochs: 3\nmodel:\n  T: 2\ntrain:\n  seed: 1\n")
    with pytest.raises(ConfigError, match="found the key 'train' twice"):
        load_config(path)
    # A merge key overridden by an explicit one is YAML's rule, not a duplicate.
    path.write_text("shared: &base {epochs: 3, seed: 1}\ntrain:\n  <<: *base\n  epochs: 5\n")
    assert read_yaml(path)["train"] == {"epochs": 5, "seed": 1}


def test_unknown_model_names_list_close_matches():
    with pytest.raises(ValueError, match="unknown model 'spikformer_8_521' \\(did you mean 'spikformer_8_512'"):
        create_model("spikformer_8_521")


@pytest.mark.parametrize("shape,message", [
    ((2, 1, 30, 30), r"input size 30x30 is not a positive multiple of the patch size 4"),
    ((2, 3, 32, 32), r"expected 1 input channels"),
    ((2, 32, 32), r"expected an image batch \[B, 1, H, W\]"),
    ((2, 2, 2, 1, 3, 32), r"got a tensor of shape \[2, 2, 2, 1, 3, 32\]"),
])
def test_images_of_the_wrong_size_or_mode_are_refused_with_both_shapes(shape, message):
    model = create_model("spikformer_cifar_4_256", embed_dim=16, depth=1, num_heads=2, in_chans=1, T=1)
    with pytest.raises(ValueError, match=message):
        model(torch.zeros(shape))


def test_unknown_dataset_name_suggests_a_registered_one():
    config = load_config(None, ["data.name=digit"])
    with pytest.raises(ConfigError, match=r"unknown dataset data.name='digit' \(did you mean 'digits'\?\)"):
        build_dataset(config, "train")


def test_a_data_root_given_to_the_embedded_digits_is_refused_rather_than_ignored(tmp_path):
    # A root with the default data.name almost always means the user forgot data.name.
    config = load_config(None, [f"data.root={tmp_path / 'cifar'}"])
    with pytest.raises(ConfigError, match="data.name=digits is embedded and reads no files"):
        build_dataset(config, "train")


FILE_DATASETS = [name for name in dataset_names() if name != "digits"]


@pytest.mark.parametrize("name", FILE_DATASETS)
@pytest.mark.parametrize("layout", ["missing", "empty", "wrong"])
def test_every_file_dataset_explains_a_missing_empty_or_wrong_root(name, layout, tmp_path):
    root = tmp_path / "data"
    if layout != "missing":
        root.mkdir()
    if layout == "wrong":
        (root / "notes.txt").write_text("not a dataset\n")
        (root / "stray").mkdir()
    config = load_config(None, [f"data.name={name}", f"data.root={root}", "data.download=false"])
    with pytest.raises(SpikformerError, match=str(root).replace(".", r"\.")):
        build_dataset(config, "train")


def test_a_device_that_is_not_here_is_a_config_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ConfigError, match="CUDA is not available here; use train.device=cpu"):
        resolve_device("cuda:0")



# --- bounded input -------------------------------------------------------------------------------------


def billion_laughs(levels: int = 9) -> str:
    lines = ["model:", "  stem_options:", "    l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for level in range(1, levels):
        lines.append(f"    l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


def test_a_billion_laughs_config_is_refused_quickly_with_one_line(tmp_path):
    path = tmp_path / "laughs.yaml"
    path.write_text(billion_laughs())  # 1.1 KB that expands to 9**9 = 387 million strings
    assert path.stat().st_size < 1500
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"laughs.yaml' is refused: the YAML expands to more than") as info:
        load_config(path)
    assert time.perf_counter() - start < 2.0
    assert "\n" not in str(info.value)


def test_a_billion_laughs_override_is_refused_too():
    inline = "{a: &a [x, x, x, x, x, x, x, x, x, x], " + ", ".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]" for i in range(7)) + "}"
    with pytest.raises(ConfigError, match=r"override 'model.stem_options=.*expands to more than"):
        load_config(None, [f"model.stem_options={inline}"])


def test_too_many_aliases_or_too_deep_a_document_is_refused(tmp_path):
    many = tmp_path / "many.yaml"
    many.write_text("x: &x 1\nmodel:\n  stem_options:\n    l: [" + ", ".join(["*x"] * 150) + "]\n")
    with pytest.raises(ConfigError, match="more than 100 aliases"):
        load_config(many)
    deep = tmp_path / "deep.yaml"
    deep.write_text("model:\n  stem_options:\n    a: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="nests more than 50 levels"):
        load_config(deep)


def test_a_config_with_a_few_aliases_still_loads(tmp_path):
    path = tmp_path / "aliases.yaml"
    path.write_text("optim:\n  lr: &rate 1.0e-3\n  warmup_lr: *rate\ntrain:\n  epochs: &n 4\n  log_interval: *n\n")
    config = load_config(path)
    assert config.optim.warmup_lr == config.optim.lr == 1e-3 and config.train.log_interval == 4


def test_an_error_quoting_a_huge_value_is_cut_to_a_sane_length(capsys):
    from spikformer.cli import MAX_MESSAGE_CHARS, main

    assert main(["train", "--config", "configs/digits.yaml", "model.T=" + "9" * 100 + "x" * 1_000_000]) == 2
    err = capsys.readouterr().err
    assert err.startswith("spikformer train: error: model.T must be an integer")
    assert len(err) < MAX_MESSAGE_CHARS + 200 and "more characters cut" in err


def test_a_recursive_yaml_alias_in_an_options_mapping_is_refused(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("model:\n  stem_options: &loop\n    again: *loop\n")
    with pytest.raises(ConfigError, match=r"loop.yaml' is refused: an alias \(\*name\) refers back to the node"):
        load_config(path)
    loop: dict = {}
    loop["again"] = loop
    with pytest.raises(ConfigError, match=r"model.stem_options.again refers back to itself"):
        config_from_dict({"model": {"stem_options": loop}})


def test_a_shuffling_seed_of_any_accepted_size_gives_an_order():
    from spikformer.data.loader import ResumableSampler

    for seed in (0, 2**63 - 1, -(2**63)):
        sampler = ResumableSampler(10, 2, shuffle=True, seed=seed)
        sampler.set_epoch(3)
        assert sorted(sampler.epoch_indices()) == list(range(10))
