"""Inputs that used to pass silently or blow up: non-finite numbers in weights and export options, image depths
beyond 8 bits, files far larger than what they claim to be, and paths that name the wrong kind of thing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from spikformer.checkpoint import load_model_from_checkpoint, save_model
from spikformer.cli import main
from spikformer.config import config_to_dict, load_config
from spikformer.errors import CheckpointError
from spikformer.models import build_model

TINY = ["model.embed_dim=16", "model.depth=1", "model.num_heads=2", "model.img_size=16", "model.T=2"]


def tiny_weights(path: Path, poison: float | None = None) -> Path:
    """A weights file of a tiny model; ``poison`` is written into one head weight."""
    config = load_config(None, TINY)
    model = build_model(config.model)
    if poison is not None:
        with torch.no_grad():
            model.head.weight[0, 0] = poison
    save_model(path, model, config_to_dict(config))
    return path


# --- non-finite numbers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_a_checkpoint_with_non_finite_weights_is_refused_at_load(tmp_path, poison):
    path = tiny_weights(tmp_path / "w.safetensors", poison)
    with pytest.raises(CheckpointError, match=r"w.safetensors: non-finite values \(NaN or infinite\) in head.weight"):
        load_model_from_checkpoint(path)


def test_exporting_non_finite_weights_is_refused_not_checked_to_nan(tmp_path, capsys):
    path = tiny_weights(tmp_path / "w.safetensors", float("nan"))
    assert main(["export", "--checkpoint", str(path), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "non-finite values" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_a_model_whose_weights_became_non_finite_is_not_exported():
    from spikformer.export import ExportError, export_nir

    model = build_model(load_config(None, TINY).model).eval()
    with torch.no_grad():
        model.head.bias[1] = float("nan")
    with pytest.raises(ExportError, match=r"non-finite values \(NaN or infinite\) in head.bias"):
        export_nir(model, partial=True)


@pytest.mark.parametrize("dt", ["nan", "inf", "0", "-1e-3"])
def test_a_nir_time_step_that_is_not_a_positive_number_is_refused(tmp_path, capsys, dt):
    out = tmp_path / "m.nir"
    assert main(["export", "--model", "spikformer_cifar_4_256", *TINY, "--partial", f"--dt={dt}",
                 "--out", str(out)]) == 2
    assert f"--dt must be a positive number of seconds, got {float(dt)}" in capsys.readouterr().err
    assert not out.exists()
