"""Inputs that used to pass silently or blow up: non-finite numbers in weights and export options, image depths
beyond 8 bits, files far larger than what they claim to be, and paths that name the wrong kind of thing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

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


# --- image depths ----------------------------------------------------------------------------------------


def grey_ramp(path: Path, mode: str) -> np.ndarray:
    """A 256x256 horizontal ramp from black to white stored in ``mode``; returns its values scaled to [0, 1]."""
    ramp = np.tile(np.linspace(0.0, 1.0, 256), (256, 1))
    if mode == "I;16":
        Image.fromarray(np.round(ramp * 65535).astype(np.uint16)).save(path)
    elif mode == "I":
        Image.fromarray(np.round(ramp * 65535).astype(np.int32), "I").save(path)
    else:
        Image.fromarray(ramp.astype(np.float32), "F").save(path)
    assert Image.open(path).mode == mode
    return ramp


@pytest.mark.parametrize("mode, name", [("I;16", "ramp.png"), ("I", "ramp.tif"), ("F", "ramp.tiff")])
@pytest.mark.parametrize("target", ["L", "RGB"])
def test_16_bit_and_float_images_keep_their_grey_levels(tmp_path, mode, name, target):
    from spikformer.data.folder import ImageFolderDataset

    ramp = grey_ramp(tmp_path / name, mode)
    image = ImageFolderDataset([], [], mode=target).load(str(tmp_path / name))
    assert image.mode == target
    pixels = np.asarray(image, dtype=np.float64).reshape(256, 256, -1)[..., 0] / 255
    assert np.abs(pixels - ramp).max() <= 1 / 255  # not clipped to white, nor thresholded to 0/1


@pytest.mark.parametrize("values", [[-0.5, 0.5], [0.0, 2.0], [0.0, float("nan")]])
def test_a_float_image_outside_zero_to_one_is_refused_not_clipped(tmp_path, values):
    from spikformer.data.folder import ImageFolderDataset
    from spikformer.errors import DatasetError

    Image.fromarray(np.array([values], dtype=np.float32), "F").save(tmp_path / "f.tif")
    with pytest.raises(DatasetError, match=r"f.tif: a floating-point image with values outside \[0, 1\]"):
        ImageFolderDataset([], [], mode="L").load(str(tmp_path / "f.tif"))
