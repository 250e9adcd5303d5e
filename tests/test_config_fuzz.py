"""Property-based: whatever configs, YAML files and command lines users throw at the parser, every failure is
one explained line and exit code 2, never a traceback. (No training starts: the Trainer is replaced by a stub.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import re
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spikformer.models
import spikformer.train
import spikformer.train.engine
from spikformer.checkpoint import save_model
from spikformer.cli import main
from spikformer.config import Config, config_from_dict, config_to_dict, load_config, section_names
from spikformer.errors import ConfigError
from spikformer.models import build_model

FUZZ = settings(max_examples=120, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

SECTIONS = section_names()
KEYS = sorted({f.name for section in SECTIONS for f in dataclasses.fields(type(getattr(Config(), section)))})

scalars = (st.none() | st.booleans() | st.integers() | st.integers(-3, 300)
           | st.floats(allow_nan=True, allow_infinity=True) | st.floats(-2, 2) | st.text(max_size=12)
           | st.sampled_from(["auto", "cpu", "cuda:0", "off", "skip", "adamw", "digits", "spikformer_8_512"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=6) | st.sampled_from(KEYS), inner, max_size=3),
                      max_leaves=6)
keys = st.sampled_from(KEYS) | st.text(max_size=10) | st.integers() | st.none()
sections = st.dictionaries(st.sampled_from(SECTIONS) | st.text(max_size=8) | st.integers(),
                           st.none() | st.dictionaries(keys, values, max_size=5) | values, max_size=5)
anything = sections | values


def plausible_config() -> st.SearchStrategy[dict]:
    """Mostly-valid configs: real sections and keys with small values, so validation gets deep."""
    small = (st.integers(-2, 64) | st.floats(-1, 2) | st.booleans() | st.none()
             | st.sampled_from(["auto", "off", "cpu", "stop", "skip", "cosine", "step", "sps", "torch", "fused"]))
    entries = st.dictionaries(st.sampled_from(KEYS), small, max_size=6)
    return st.dictionaries(st.sampled_from(SECTIONS), entries, max_size=4)


@FUZZ
@given(raw=anything | plausible_config())
def test_any_nested_mapping_validates_or_is_refused_with_a_config_error(raw):
    try:
        config = config_from_dict(raw)
    except ConfigError as error:
        assert str(error) and "Traceback" not in str(error)
        return
    # Whatever validates survives a round trip and holds only finite numbers in range.
    assert config_from_dict(config_to_dict(config)) == config
    assert config.optim.lr > 0 and (config.model.T is None or config.model.T >= 1)
    assert all(math.isfinite(v) for v in (config.optim.lr, config.optim.weight_decay, config.optim.min_lr))


@FUZZ
@given(text=st.text(max_size=80) | st.binary(max_size=80).map(lambda b: b.decode("latin-1")))
def test_any_yaml_file_loads_or_is_refused_with_a_config_error(tmp_path, text):
    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_config(path)
    except ConfigError:
        pass


override_values = st.sampled_from(["1", "0", "-1", "1e-3", "1.5", "true", "off", "null", "[1, 2]", "{a: 1}",
                                   "'x'", "nan", ".inf", "", "~", "2020-01-01", "!!python/none ''", "[", "{",
                                   "spikformer_8_512", "cpu", "skip", "1e400", "0x10", "9" * 30])
override_keys = st.tuples(st.sampled_from(SECTIONS) | st.text(max_size=6),
                          st.sampled_from(KEYS) | st.text(max_size=6))
overrides = st.builds(lambda key, value: f"{key[0]}.{key[1]}={value}", override_keys,
                      override_values | st.text(max_size=8))


class StubTrainer:
    """Stands in for ``Trainer``: the CLI tests stop where training would start."""

    is_main = True  # a single process reports its result, as Trainer's rank 0 does

    def __init__(self, config, **kwargs) -> None:
        self.config = config

    def fit(self) -> dict:
        return {"best_top1": 0.0, "best_epoch": 1}


def build_small_for_real(model_config):
    # A fuzzed eval override such as model.num_classes=99999999 must not allocate gigabytes: a model that
    # large stays on the meta device, where it fails the checkpoint's shape check just the same.
    with torch.device("meta"):
        model = build_model(model_config)
    return model if sum(p.numel() for p in model.parameters()) > 10**6 else build_model(model_config)


@pytest.fixture()
def cli_world(tmp_path, monkeypatch):
    """A folder with a valid config and checkpoint, and a function that restores them (a fuzzed
    ``--json tiny.yaml`` may overwrite one); training and evaluation replaced by stubs."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(spikformer.train, "Trainer", StubTrainer)
    monkeypatch.setattr(spikformer.train.engine, "evaluate", lambda *a, **k: {"top1": 0.0, "top5": 0.0,
                                                                               "loss": 0.0, "count": 1})
    monkeypatch.setattr(spikformer.models, "build_model", build_small_for_real)
    config = load_config(None, ["model.embed_dim=16", "model.depth=1", "model.num_heads=2", "model.T=1",
                                "model.img_size=16", "model.in_chans=1", "model.num_classes=10"])
    Path("tiny.yaml").write_text(yaml.safe_dump(config_to_dict(config)))
    save_model("tiny.safetensors", build_model(config.model), config_to_dict(config))
    files = {name: Path(name).read_bytes() for name in ("tiny.yaml", "tiny.safetensors")}

    def reset() -> None:
        for name, data in files.items():
            Path(name).write_bytes(data)

    return reset


tokens = (overrides | st.text(max_size=10)
          | st.sampled_from(["--config", "tiny.yaml", "--checkpoint", "tiny.safetensors", "--resume", "auto",
                             "--overwrite", "--split", "val", "--json", "--help", "-h", "missing.yaml", ".", "",
                             "nope.safetensors", "--", "-x"]))
argvs = st.tuples(st.sampled_from(["train", "eval", "models", "demo", "trian", "", "--version"]),
                  st.lists(tokens, max_size=6)).map(lambda t: [t[0], *t[1]])


def run_cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse: --help (0) and usage errors (2)
            code = exit_.code
    return code, err.getvalue()


ERROR_LINE = re.compile(r"(^|\n)spikformer( \w+)?: error: \S")


@FUZZ
@given(argv=argvs)
def test_any_command_line_succeeds_or_exits_2_with_one_explained_error(cli_world, argv):
    cli_world()
    code, err = run_cli(argv)
    assert code in (0, 2), (argv, code, err)
    assert "Traceback" not in err
    if code == 2:  # argparse adds a usage line before its error line; ours are the error line alone
        assert ERROR_LINE.search(err), (argv, err)


@FUZZ
@given(extra=st.lists(overrides, min_size=1, max_size=4))
def test_any_overrides_on_a_valid_config_train_or_exit_2(cli_world, extra):
    cli_world()
    code, err = run_cli(["train", "--config", "tiny.yaml", *extra])
    assert code in (0, 2), (extra, code, err)
    if code == 2:
        assert ERROR_LINE.search(err) and "Traceback" not in err, (extra, err)


def test_the_cli_stub_world_really_runs_the_commands(cli_world):
    # The control: with valid arguments each command succeeds, so the exit code 2 above is the input's doing.
    assert run_cli(["train", "--config", "tiny.yaml", "train.epochs=3"])[0] == 0
    assert run_cli(["eval", "--checkpoint", "tiny.safetensors", "model.T=2"])[0] == 0
    assert run_cli(["models", "cifar"])[0] == 0
    code, err = run_cli(["train", "--config", "tiny.yaml", "optim.lr=0"])
    assert code == 2 and err.strip() == "spikformer train: error: optim.lr must be > 0, got 0.0"
    code, err = run_cli([])
    assert code == 2 and err.strip().splitlines()[-1].startswith("spikformer: error: choose a command: train")


def test_eval_json_naming_a_folder_fails_before_evaluating(cli_world, monkeypatch):
    evaluated = []
    monkeypatch.setattr(spikformer.train.engine, "evaluate", lambda *a, **k: evaluated.append(1))
    Path("out").mkdir()
    code, err = run_cli(["eval", "--checkpoint", "tiny.safetensors", "--json", "out"])
    assert code == 2 and "--json out is a folder; give a file name such as out/eval.json" in err
    assert evaluated == []
