"""The library as a Python dependency: it logs instead of printing, its optional imports name the extra to
install, it leaves matplotlib's global state alone, and it refuses what it cannot do (``data.download`` for the
event datasets) instead of ignoring it."""

from __future__ import annotations

import ast
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from spikformer.cli import main
from spikformer.config import load_config
from spikformer.console import console_logging
from spikformer.data import build_dataset
from spikformer.errors import ConfigError, MissingExtraError, SpikformerError
from spikformer.extras import require

SRC = Path(__file__).resolve().parents[1] / "src" / "spikformer"
# The console layer itself, and the run loop's files, whose one log() method the run-loop work converts.
MAY_PRINT = {"cli.py"}
TINY = ["model.embed_dim=16", "model.num_heads=2", "model.depth=1", "model.img_size=16", "train.epochs=1",
        "train.progress=false", "train.tensorboard=false", "data.eval_batch_size=120", "optim.warmup_epochs=0"]
TINY_SSL = ["ssl.decoder_dim=16", "ssl.decoder_heads=2", "ssl.decoder_depth=1", "ssl.num_visualize=2",
            "data.train_fraction=0.05", "data.batch_size=16"]


def hide(monkeypatch, *modules: str) -> None:
    """Make ``import`` of each module (and its submodules already loaded) fail, as on a base install."""
    for name in [m for m in sys.modules if any(m == x or m.startswith(x + ".") for x in modules)] + list(modules):
        monkeypatch.setitem(sys.modules, name, None)


# --- logging ----------------------------------------------------------------------------------------


def test_library_code_never_prints():
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.relative_to(SRC).as_posix() in MAY_PRINT:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not offenders


def test_command_output_is_logged_and_shown_on_the_console_unchanged(capsys):
    records: list[logging.LogRecord] = []
    catcher = logging.Handler()
    catcher.emit = records.append
    logger = logging.getLogger("spikformer")
    logger.addHandler(catcher)
    try:
        assert main(["configs"]) == 0
    finally:
        logger.removeHandler(catcher)
    out = capsys.readouterr().out
    assert out.splitlines() == [r.getMessage() for r in records]  # every line is a record, shown as it is
    assert records[0].name == "spikformer.commands.configs" and records[0].levelno == logging.INFO


def test_the_console_handler_lasts_one_command_and_restores_the_logger():
    logger = logging.getLogger("spikformer")
    before = (list(logger.handlers), logger.level, logger.propagate)
    assert main(["configs"]) == 0
    assert (list(logger.handlers), logger.level, logger.propagate) == before


def test_console_puts_information_on_stdout_and_warnings_on_stderr(capsys):
    with console_logging():
        logging.getLogger("spikformer.x").info("\nfiring rates:")
        logging.getLogger("spikformer.x").warning("careful")
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("\nfiring rates:\n", "careful\n")


# --- optional imports -------------------------------------------------------------------------------------


def test_a_missing_extra_is_a_user_error_and_an_import_error(monkeypatch):
    hide(monkeypatch, "matplotlib")
    with pytest.raises(MissingExtraError, match=r"drawing needs the matplotlib package: "
                                                r"pip install 'spikformer\[analysis\]'") as caught:
        require("matplotlib.figure", "drawing")
    assert isinstance(caught.value, SpikformerError) and isinstance(caught.value, ImportError)


@pytest.mark.parametrize("module, extra", [("tonic", "events"), ("onnxruntime", "export"), ("nir", "export"),
                                           ("tensorboard", "logging")])
def test_each_optional_package_names_its_extra(monkeypatch, module, extra):
    hide(monkeypatch, module)
    with pytest.raises(MissingExtraError, match=rf"pip install 'spikformer\[{extra}\]'"):
        require(module, "this")


def test_figures_without_matplotlib_name_the_analysis_extra(monkeypatch, tmp_path):
    from spikformer.analysis.figures import plot_firing_rates
    from spikformer.commands.frames import render_frame_grid

    hide(monkeypatch, "matplotlib")
    with pytest.raises(MissingExtraError, match=r"spikformer\[analysis\]"):
        render_frame_grid(np.ones((2, 2, 4, 4)), tmp_path / "frames.png")
    with pytest.raises(MissingExtraError, match=r"spikformer\[analysis\]"):
        plot_firing_rates({"stem.lif": 0.1}, tmp_path / "rates.png")


def test_the_onnx_check_without_onnxruntime_names_the_export_extra(monkeypatch, tmp_path):
    from spikformer.export import onnx_max_difference

    hide(monkeypatch, "onnxruntime")
    with pytest.raises(MissingExtraError, match=r"onnxruntime package: pip install 'spikformer\[export\]'"):
        onnx_max_difference(torch.nn.Identity(), tmp_path / "m.onnx", torch.zeros(1))


def test_the_logging_extra_writes_tensorboard_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    assert main(["train", "--config", "digits", *TINY, "model.T=2", "data.train_fraction=0.05",
                 "train.tensorboard=true", f"train.out_dir={out}"]) == 0
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


# --- matplotlib's global state ------------------------------------------------------------------------------


def test_figures_leave_matplotlibs_backend_and_pyplot_alone(monkeypatch, tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    from spikformer.commands.frames import render_frame_grid
    from spikformer.ssl import MaskedSpikformer
    from spikformer.ssl.figure import render_reconstructions

    switched = []
    monkeypatch.setattr(matplotlib, "use", lambda *a, **k: switched.append(a))
    monkeypatch.delitem(sys.modules, "matplotlib.pyplot", raising=False)
    encoder = __import__("spikformer").create_model("spikformer_v2_8_384", embed_dim=32, num_heads=4, depth=1,
                                                    img_size=16, patch_size=4, in_chans=1, num_classes=0, T=1)
    model = MaskedSpikformer(encoder, mask_ratio=0.5, decoder_dim=16, decoder_depth=1, decoder_heads=2)
    render_reconstructions(model, torch.rand(2, 1, 16, 16), tmp_path / "reconstructions.png")
    render_frame_grid(np.ones((2, 2, 4, 4)), tmp_path / "frames.png")
    assert switched == [] and "matplotlib.pyplot" not in sys.modules
    assert (tmp_path / "reconstructions.png").read_bytes()[:4] == b"\x89PNG"


def test_pretraining_on_a_base_install_ends_with_a_plain_figure_and_a_warning(monkeypatch, tmp_path, capsys):
    from PIL import Image

    hide(monkeypatch, "matplotlib")
    out = tmp_path / "pretrain"
    assert main(["pretrain", "--config", "digits_v2_pretrain", *TINY, *TINY_SSL, f"train.out_dir={out}"]) == 0
    err = capsys.readouterr().err
    assert "needs the matplotlib package: pip install 'spikformer[analysis]'" in err
    with Image.open(out / "reconstructions.png") as picture:  # 2 images x (input | mask | reconstruction)
        assert picture.size == (3 * 16 + 2 * 2, 2 * 16 + 2)


# --- data.download --------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", ["cifar10dvs_2_256", "dvs128gesture_2_256"])
def test_download_is_refused_for_the_event_datasets_not_ignored(tmp_path, config):
    cfg = load_config(config, ["data.download=true", f"data.root={tmp_path}"])
    with pytest.raises(ConfigError, match=r"data.download=true cannot fetch .*download its release by hand.*"
                                          r"then set data.download=false"):
        build_dataset(cfg, "train")
    assert main(["train", "--config", config, "data.download=true", f"data.root={tmp_path}",
                 f"train.out_dir={tmp_path / 'run'}"]) == 2
