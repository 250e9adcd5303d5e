"""The architecture is resolved once into a complete description that runs and checkpoints carry; the config
module is a leaf; datasets take an input description; no import cycles."""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import spikformer.models.registry as variant_table
from spikformer.checkpoint import load_model_from_checkpoint, read_checkpoint, save_model
from spikformer.cli import main
from spikformer.config import config_to_dict, load_config
from spikformer.data import InputSpec, build_dataset
from spikformer.errors import ConfigError
from spikformer.models import build_model, create_model, is_resolved, resolve_config
from spikformer.models.resolve import ARCHITECTURE_FIELDS

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "spikformer"
DIGITS = str(ROOT / "configs" / "digits.yaml")
TINY = ["model.embed_dim=16", "model.depth=1", "model.T=2", "model.img_size=8", "model.patch_size=4",
        "data.train_fraction=0.1", "data.batch_size=32", "train.epochs=1", "train.progress=false",
        "train.tensorboard=false"]
# Written by today's save path with the config of a run from before descriptions were complete: nulls where
# the variant's values applied, and none of the keys added since (qkv_bias, attn_scale, neuron ...).
OLD_MODEL_SECTION = {"name": "spikformer_cifar_4_256", "T": 2, "num_classes": 10, "img_size": 32, "in_chans": 1,
                     "embed_dim": 16, "depth": 1, "num_heads": None, "mlp_ratio": None, "patch_size": 4,
                     "drop_path_rate": 0.0, "lif_backend": "auto", "stem": None, "stem_options": {},
                     "pretrained": None}


def images(n: int = 4) -> torch.Tensor:
    # 64 tokens of bright images: enough input for the attention's neurons to fire, so its head count matters
    return 4 * torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(1))


def tiny_config(*overrides: str):
    return load_config(DIGITS, [*TINY, *overrides])


# --- config.py is a leaf; no cycles -----------------------------------------------------------------------

def test_importing_the_config_loads_no_model_code_and_no_torch():
    code = ("import sys, spikformer.config; "
            "print([m for m in sys.modules if m.startswith(('spikformer', 'torch', 'timm'))])")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert eval(loaded) == ["spikformer", "spikformer.errors", "spikformer.registry", "spikformer.config"]


def module_imports(path: Path, top_level_only: bool) -> set[str]:
    """The ``spikformer`` modules ``path`` imports (at module level only, or anywhere)."""
    name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            if base.startswith("spikformer"):
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names
                             if (PACKAGE.parent / f"{base}.{alias.name}".replace(".", "/")).with_suffix(".py").exists())
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("spikformer"))
    return found - {name}


def package_modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
            for p in PACKAGE.rglob("*.py")}


def test_no_module_level_import_cycles():
    graph = {name: module_imports(path, top_level_only=True) for name, path in package_modules().items()}
    # A package's __init__ running its submodules is not a cycle: importing spikformer.x.y runs spikformer.x
    # first, so only edges into modules that are not a parent package of the importer count.
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if node.startswith(target + "."):
                continue
            if state.get(target) == "open":
                raise AssertionError("import cycle: " + " -> ".join([*trail[trail.index(target):], target]))
            if target not in state:
                visit(target, [*trail, target])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_every_module_imports_on_its_own_in_a_fresh_package():
    # Import order hides cycles: each module is imported first, with every spikformer module forgotten
    # before it (torch and timm stay loaded, which keeps this one subprocess cheap). The modules this
    # layering is about: the top level, models/ and data/.
    names = sorted(n for n in package_modules() if not n.endswith("__main__")
                   and (n.count(".") == 1 or n.startswith(("spikformer.models", "spikformer.data"))))
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n"
            "    for loaded in [m for m in sys.modules if m == 'spikformer' or m.startswith('spikformer.')]:\n"
            "        del sys.modules[loaded]\n"
            "    importlib.import_module(name)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_config_imports_only_leaf_modules_and_data_never_imports_models():
    leaves = {"spikformer.errors", "spikformer.registry"}
    # config_files (a --config name -> the packaged file) is itself a leaf
    assert module_imports(PACKAGE / "config.py", top_level_only=False) == leaves | {"spikformer.config_files"}
    assert module_imports(PACKAGE / "config_files.py", top_level_only=False) <= leaves
    for path in (PACKAGE / "data").glob("*.py"):
        reached = module_imports(path, top_level_only=False)
        assert not any(m.startswith("spikformer.models") for m in reached), path.name


# --- resolved once, complete, saved ---------------------------------------------------------------------

def test_a_resolved_config_states_every_constructor_argument():
    config = resolve_config(load_config(None, ["model.name=spikformer_dvs_2_256"]))
    model = config.model
    assert is_resolved(model) and all(getattr(model, key) is not None for key in ARCHITECTURE_FIELDS)
    assert (model.embed_dim, model.depth, model.num_heads) == (256, 2, 16)
    assert (model.qkv_bias, model.attn_scale) == (False, 0.25)
    assert (model.img_size, model.in_chans, model.T, model.patch_size, model.stem) == (128, 2, 16, 16, "sps")
    assert (model.neuron, model.neuron_options) == ("lif", {})
    assert resolve_config(config) == config  # idempotent


def test_the_scs_layout_is_written_out_with_its_defaults():
    model = resolve_config(load_config(None, ["model.name=spikformer_v2_8_384"])).model
    assert model.stem_options == {"widths": [0.125, 0.25, 0.5, 1.0], "depths": [2, 2, 2, 1], "kernel_size": 3,
                                  "downsample": "maxpool", "rpe": True}


def test_a_run_saves_the_complete_description_in_config_yaml_and_its_checkpoints(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--config", DIGITS, *TINY, f"train.out_dir={out}"]) == 0
    saved = load_config(out / "config.yaml").model
    assert is_resolved(saved) and saved.num_heads == 4 and saved.qkv_bias is True and saved.attn_scale == 0.125
    for name in ("best.safetensors", "last.safetensors"):
        assert read_checkpoint(out / name)[1]["config"]["model"] == dataclasses.asdict(saved)


# --- checkpoints: old ones still load, own ones ignore today's table ---------------------------------------

def write_checkpoint(path: Path, model_section: dict) -> torch.Tensor:
    """An own checkpoint of a model built from ``model_section``; returns its eval logits on ``images()``."""
    raw = config_to_dict(tiny_config())
    raw["model"] = model_section
    model = build_model(load_config(None, [f"model.{k}={json.dumps(v)}" for k, v in model_section.items()]).model)
    for index, p in enumerate(model.parameters()):  # weights no fresh initialisation would give
        p.data.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(index)), alpha=0.5)
    save_model(path, model, raw)
    return model.eval()(images())


def test_a_checkpoint_written_before_descriptions_were_complete_loads_and_computes_the_same(tmp_path):
    expected = write_checkpoint(tmp_path / "old.safetensors", OLD_MODEL_SECTION)
    model, config = load_model_from_checkpoint(tmp_path / "old.safetensors")
    assert config.model.num_heads is None  # the stored config is read as it is ...
    assert torch.equal(model.eval()(images()), expected)  # ... and resolved against the table as before
    assert len(model.blocks[0].attn.q.linear.bias) == 16  # the CIFAR family's Q/K/V biases


def test_changing_a_variant_table_value_leaves_an_own_checkpoint_unchanged(tmp_path, monkeypatch):
    complete = dataclasses.asdict(resolve_config(tiny_config("model.img_size=32")).model)
    expected = write_checkpoint(tmp_path / "own.safetensors", complete)
    old_style = write_checkpoint(tmp_path / "old.safetensors", OLD_MODEL_SECTION)
    table = variant_table.VARIANTS
    monkeypatch.setitem(table, "spikformer_cifar_4_256", dataclasses.replace(table["spikformer_cifar_4_256"],
                                                                           num_heads=2))
    model, _ = load_model_from_checkpoint(tmp_path / "own.safetensors")
    assert model.blocks[0].attn.num_heads == 4 and torch.equal(model.eval()(images()), expected)
    # The same edit does reach a sparse (old) description: what the complete one protects against.
    stale, _ = load_model_from_checkpoint(tmp_path / "old.safetensors")
    assert stale.blocks[0].attn.num_heads == 2 and not torch.equal(stale.eval()(images()), old_style)


def test_eval_rebuilds_from_the_stored_description(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert main(["train", "--config", DIGITS, *TINY, f"train.out_dir={out}"]) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "best.safetensors")]) == 0
    before = capsys.readouterr().out
    table = variant_table.VARIANTS
    monkeypatch.setitem(table, "spikformer_cifar_4_256", dataclasses.replace(table["spikformer_cifar_4_256"],
                                                                           num_heads=1, qkv_bias=False))
    assert main(["eval", "--checkpoint", str(out / "best.safetensors")]) == 0
    assert capsys.readouterr().out == before


def test_a_complete_description_builds_even_when_its_variant_is_gone(monkeypatch):
    model_config = resolve_config(tiny_config()).model
    # The table without the variant, swapped in whole: deleting and re-adding the entry would move it to the
    # end of the table, and the registry's order is what `spikformer energy-table` lists.
    entries = variant_table.VARIANTS._entries
    monkeypatch.setattr(variant_table.VARIANTS, "_entries",
                        {name: variant for name, variant in entries.items() if name != "spikformer_cifar_4_256"})
    assert build_model(model_config).blocks[0].attn.num_heads == 4


# --- the run's own checks, datasets' input ---------------------------------------------------------------

def test_checks_that_need_the_model_run_when_the_run_resolves_its_config():
    config = load_config(None, ["model.num_heads=3"])  # a valid value for the field alone
    with pytest.raises(ConfigError, match="model.embed_dim 256 is not divisible by model.num_heads 3"):
        resolve_config(config)
    with pytest.raises(ConfigError, match="data.mean has 1 values but the model takes 3 input channels"):
        resolve_config(load_config(None, ["data.mean=[0.5]"]))


def test_datasets_take_an_input_description_not_the_model_registry():
    sparse = load_config(None, ["data.name=digits"])
    with pytest.raises(ConfigError, match="model.img_size is not resolved.*resolve_config"):
        build_dataset(sparse, "val")
    dataset = build_dataset(sparse, "val", inputs=InputSpec(img_size=12, in_chans=1, T=1))
    assert dataset[0][0].shape == (1, 12, 12)
    resolved = resolve_config(load_config(None, ["data.name=digits", "model.in_chans=1", "model.img_size=16"]))
    assert build_dataset(resolved, "val")[0][0].shape == (1, 16, 16)


def test_create_model_and_build_model_agree():
    config = resolve_config(tiny_config())
    built = build_model(config.model)
    made = create_model(config.model.name, **{k: getattr(config.model, k) for k in ARCHITECTURE_FIELDS})
    assert built.state_dict().keys() == made.state_dict().keys()
