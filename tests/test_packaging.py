"""spikformer as a pip-installed product: packaged configs addressed by name, one version, the licence and the
metadata, and a real wheel that runs ``--version``, ``models`` and ``demo`` in an empty folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import spikformer
from spikformer.cli import main
from spikformer.config import config_to_dict, load_config
from spikformer.config_files import config_names, config_path, describe_config, packaged_config
from spikformer.errors import ConfigError

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# The demo's config shrunk to seconds (as in test_cli.py).
TINY = ["model.embed_dim=16", "model.num_heads=2", "model.depth=1", "model.T=2", "model.img_size=8",
        "model.patch_size=4", "data.train_fraction=0.1", "data.batch_size=32", "train.epochs=1",
        "train.progress=false", "train.tensorboard=false"]


# --- configs by name ---------------------------------------------------------------------------------


def test_every_top_level_config_is_packaged_under_its_name():
    assert config_names() == sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))
    assert packaged_config("digits").read_text() == (ROOT / "configs" / "digits.yaml").read_text()


def test_a_config_name_loads_the_same_config_as_its_path():
    by_name = load_config("cifar10_4_384")
    by_path = load_config(ROOT / "configs" / "cifar10_4_384.yaml")
    assert config_to_dict(by_name) == config_to_dict(by_path)
    assert config_path("cifar10_4_384.yaml") == config_path("cifar10_4_384")


def test_an_existing_file_wins_over_a_packaged_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("digits").write_text("model:\n  name: spikformer_cifar_2_384\n")  # a file called like a packaged config
    assert config_path("digits") == Path("digits")
    assert load_config("digits").model.name == "spikformer_cifar_2_384"


def test_the_readme_path_works_outside_a_clone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ folder here
    assert config_path("configs/digits.yaml") == packaged_config("digits")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("configs/nope.yaml")


def test_an_unknown_name_is_refused_with_the_closest_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"'cifar10_4_348' does not exist.*did you mean 'cifar10_4_384'.*"
                                          r"spikformer configs"):
        load_config("cifar10_4_348")


def test_configs_command_lists_each_name_with_a_one_line_description(capsys):
    assert main(["configs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "description"]
    rows = {line.split()[0]: line.split(None, 1)[1] for line in lines[1:]}
    assert sorted(rows) == config_names()
    assert rows["cifar10_4_384"].startswith("Spikformer-4-384 on CIFAR-10, T=4")
    assert all(0 < len(text) <= 100 for text in rows.values())


def test_the_readme_names_every_packaged_config():
    readme = (ROOT / "README.md").read_text()
    assert [name for name in config_names() if f"`{name}`" not in readme] == []


def test_configs_command_prints_one_config_to_start_from(capsys):
    assert main(["configs", "digits"]) == 0
    assert capsys.readouterr().out == (ROOT / "configs" / "digits.yaml").read_text()
    assert main(["configs", "digitz"]) == 2
    assert "did you mean 'digits'" in capsys.readouterr().err


def test_a_description_is_the_first_sentence_of_the_leading_comment(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("# A tiny model on the digits. It trains in seconds.\n# More detail.\nmodel: {}\n")
    assert describe_config(path) == "A tiny model on the digits"
    path.write_text("# " + "word " * 40 + "\nmodel: {}\n")
    assert describe_config(path).endswith("...") and len(describe_config(path)) <= 100


def test_train_accepts_a_config_name(tmp_path, capsys):
    assert main(["train", "--config", "digits", *TINY, f"train.out_dir={tmp_path / 'run'}"]) == 0
    assert (tmp_path / "run" / "last.safetensors").is_file()


# --- version, licence, metadata ---------------------------------------------------------------------------


def test_version_has_one_source_and_the_cli_prints_it(capsys):
    assert PYPROJECT["project"]["dynamic"] == ["version"] and "version" not in PYPROJECT["project"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "spikformer.__version__"}
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith(f"spikformer {spikformer.__version__} (torch ")


def test_licence_is_an_spdx_expression_with_its_file():
    project = PYPROJECT["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert "setuptools>=77" in PYPROJECT["build-system"]["requires"]  # the first to read `license = "MIT"`
    assert not [c for c in project["classifiers"] if c.startswith("License ::")]  # superseded by the expression


def test_metadata_names_urls_classifiers_and_ships_type_information():
    project = PYPROJECT["project"]
    assert project["urls"] and all(url.startswith("https://") for url in project["urls"].values())
    assert "Typing :: Typed" in project["classifiers"]
    assert (ROOT / "src" / "spikformer" / "py.typed").is_file()
    assert "configs/*.yaml" in PYPROJECT["tool"]["setuptools"]["package-data"]["spikformer"]


def test_the_floor_constraints_pin_every_dependency_at_its_declared_floor():
    floors = {}
    for line in (ROOT / ".ci" / "constraints-floor.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            floors[name.lower()] = version
    extras = PYPROJECT["project"]["optional-dependencies"]
    optional = [r for extra, requirements in extras.items() if extra != "dev" for r in requirements]
    declared = [*PYPROJECT["project"]["dependencies"], *optional]
    assert len(declared) == 17
    for requirement in declared:
        name, floor = requirement.split(">=")
        assert floors.get(name.lower()) == floor or floors.get(name.lower(), "").startswith(floor + "."), requirement


def test_the_python_api_is_exported_from_the_package():
    for name in ("Trainer", "Pretrainer", "load_config", "create_model", "build_dataset", "build_loader",
                 "evaluate", "load_model_from_checkpoint", "measure_energy", "export_onnx", "export_nir",
                 "config_names", "__version__"):
        assert name in spikformer.__all__ and hasattr(spikformer, name), name


# --- a real wheel, installed ------------------------------------------------------------------------------


def _source_tree(destination: Path) -> Path:
    """The files git would ship (tracked and untracked-not-ignored), so no stale build/ leaks into the wheel."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source, target = ROOT / name, destination / name
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the work tree
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, target)
    return destination


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git to list the source files")
def test_the_sdist_carries_the_configs_as_plain_files(tmp_path):
    import tarfile

    tree = _source_tree(tmp_path / "src-tree")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    name = subprocess.run([sys.executable, "-c", "import sys; from setuptools import build_meta; "
                           "print(build_meta.build_sdist(sys.argv[1]))", str(tmp_path / "dist")], cwd=tree, env=env,
                          capture_output=True, text=True, check=True, timeout=300).stdout.split()[-1]
    with tarfile.open(tmp_path / "dist" / name) as sdist:
        members = {Path(m.name).relative_to(Path(m.name).parts[0]).as_posix(): m for m in sdist.getmembers()}
    packaged = sorted(p for p in members if p.startswith("src/spikformer/configs/") and p.endswith(".yaml"))
    assert [Path(p).stem for p in packaged] == config_names()
    assert all(members[p].isfile() for p in packaged)  # the link is resolved: a wheel built from it has them too
    assert "LICENSE" in members


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git to list the source files")
def test_a_wheel_installed_elsewhere_runs_version_models_and_demo_in_an_empty_folder(tmp_path):
    tree = _source_tree(tmp_path / "src-tree")
    wheels = tmp_path / "wheels"
    # Without PYTHONPATH: a clone's src/ on the path would make every step see the clone, not the wheel.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    # No build isolation: setuptools from this environment, so the test needs no index.
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(tree), "--no-deps", "--no-build-isolation",
                    "--quiet", "-w", str(wheels)], check=True, capture_output=True, env=env, timeout=300)
    (wheel,) = wheels.glob("spikformer-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, env=env, timeout=120)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps",
                    "--no-index", "--quiet", str(wheel)], check=True, capture_output=True, env=env, timeout=300)
    # torch and the other dependencies come from this environment (not downloaded again): its site-packages as
    # a plain path, after the venv's own, so the wheel's spikformer is the one imported.
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; "
                                "print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True,
                               env=env, check=True).stdout.strip())
    (site / "host-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    empty = tmp_path / "empty"
    empty.mkdir()

    def spikformer_cli(*args: str) -> str:
        result = subprocess.run([str(venv / "bin" / "spikformer"), *args], cwd=empty, env=env, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        return result.stdout

    where = subprocess.run([str(venv / "bin" / "python"), "-c",  # found without importing (that is torch's time)
                            "import importlib.util; print(importlib.util.find_spec('spikformer').origin)"],
                           cwd=empty, env=env, capture_output=True, text=True, check=True).stdout
    assert Path(where.strip()).is_relative_to(venv)
    assert spikformer_cli("--version").startswith(f"spikformer {spikformer.__version__} ")
    assert "spikformer_cifar_4_384" in spikformer_cli("models")
    demo = spikformer_cli("demo", *TINY)
    assert "test accuracy:" in demo and "firing rate per spiking layer" in demo
    assert (empty / "runs" / "demo" / "last.safetensors").is_file()  # its own folder, apart from runs/digits
