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


# --- files far larger than they claim ----------------------------------------------------------------------


def stored_config_weights(path: Path, **sections) -> Path:
    """A tiny model's weights under a stored config with ``sections`` changed (the weights stay tiny)."""
    config = config_to_dict(load_config(None, TINY))
    for section, values in sections.items():
        config[section].update(values)
    save_model(path, build_model(load_config(None, TINY).model), config)
    return path


def test_stored_sizes_are_bounded_by_their_product_not_only_one_by_one(tmp_path):
    # each below its own limit (256, 1024, 4096), together a 2.2e12-value feature map at width 16
    path = stored_config_weights(tmp_path / "w.safetensors", model={"T": 256, "img_size": 1024},
                                 data={"eval_batch_size": 4096})
    with pytest.raises(CheckpointError, match=r"asks for model.T=256 x model.embed_dim=16 x model.img_size=1024 x "
                                              r"data.eval_batch_size=4096: a first feature map of .* more than"):
        load_model_from_checkpoint(path)
    # a user who chooses the sizes may have them
    _, config = load_model_from_checkpoint(path, ["model.T=256", "model.img_size=1024", "data.eval_batch_size=4096"])
    assert (config.model.T, config.model.img_size, config.data.eval_batch_size) == (256, 1024, 4096)


def spy_on_tensor_reads(monkeypatch) -> list[str]:
    """Record every whole-file tensor read of the checkpoint module (the data, not the header)."""
    import spikformer.checkpoint as ckpt

    reads: list[str] = []
    real = ckpt.safetensors_load_file
    monkeypatch.setattr(ckpt, "safetensors_load_file", lambda path, *a, **k: reads.append(path) or real(path, *a, **k))
    return reads


def sparse_safetensors_with_extra_tensor(source: Path, out: Path, extra_bytes: int) -> Path:
    """``source`` with one more F32 tensor of ``extra_bytes`` in its header, the data a hole of that length
    (sparse: nothing is written, the file takes no disk space)."""
    import json
    import struct

    raw = source.read_bytes()
    length = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + length])
    data = raw[8 + length:]
    header["smuggled.weight"] = {"dtype": "F32", "shape": [extra_bytes // 4],
                                 "data_offsets": [len(data), len(data) + extra_bytes]}
    text = json.dumps(header).encode()
    with out.open("wb") as handle:
        handle.write(struct.pack("<Q", len(text)) + text + data)
        handle.truncate(8 + len(text) + len(data) + extra_bytes)
    return out


def test_a_sparse_checkpoint_with_a_foreign_tensor_is_refused_before_its_data_is_read(tmp_path, monkeypatch):
    source = stored_config_weights(tmp_path / "w.safetensors")
    path = sparse_safetensors_with_extra_tensor(source, tmp_path / "sparse.safetensors", 6 * 2**30)
    assert path.stat().st_size > 6 * 2**30 and path.stat().st_blocks * 512 < 2**20
    reads = spy_on_tensor_reads(monkeypatch)
    with pytest.raises(CheckpointError, match=r"sparse.safetensors does not fit the model(.|\n)*unexpected keys: "
                                              r"smuggled.weight"):
        load_model_from_checkpoint(path)
    assert reads == []  # refused from the header alone


def test_a_zip_pth_that_inflates_far_beyond_its_size_is_refused_before_loading(tmp_path):
    import zipfile

    from spikformer.checkpoint import read_legacy_checkpoint

    path = tmp_path / "bomb.pth"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bomb/data.pkl", b"\0" * (64 * 2**20))  # 64 MiB of zeros in a 64 KB file
    assert path.stat().st_size < 2**20
    with pytest.raises(CheckpointError, match=r"bomb.pth: its zip members inflate to 67108864 bytes from a "):
        read_legacy_checkpoint(path)


# --- from_pretrained: every source through the checkpoint guards -------------------------------------------


@pytest.fixture
def hf_folder(tmp_path):
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(0)
    model = timm.create_model("spikformer_v2_8_384", embed_dim=32, depth=1, num_heads=4, img_size=32, T=2,
                              num_classes=3)
    save_for_hf(model, tmp_path / "hf", safe_serialization=True)
    return tmp_path / "hf"


def edit_config_json(folder: Path, edit) -> None:
    import json

    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


def test_a_sparse_4_gib_config_json_is_refused_by_its_length(hf_folder):
    import spikformer

    with (hf_folder / "config.json").open("r+b") as handle:
        handle.truncate(4 * 2**30)
    with pytest.raises(CheckpointError, match=r"config.json .* is 4294967296 bytes, more than the"):
        spikformer.from_pretrained(hf_folder)


@pytest.mark.parametrize("text, message", [
    ("{not json", r"config.json is not valid JSON"),
    ("[" * 100_000 + "]" * 100_000, r"config.json is not valid JSON"),
    ('{"num_classes": 3}', r"config.json names no 'architecture'"),
    ('{"architecture": "spikformer_v2_8_384", "model_args": [1]}', r"config.json: 'model_args' must be a mapping"),
    ('{"architecture": "no_such_model"}', r"config.json: cannot build 'no_such_model'"),
])
def test_a_broken_config_json_is_one_line_naming_the_file(hf_folder, text, message):
    import spikformer

    (hf_folder / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match=message) as info:
        spikformer.from_pretrained(hf_folder)
    assert "\n" not in str(info.value)


def test_hub_model_args_are_bounded_like_a_stored_config(hf_folder):
    import spikformer

    edit_config_json(hf_folder, lambda c: c["model_args"].update(embed_dim=10**6))
    with pytest.raises(CheckpointError, match=r"asks for model.embed_dim=1000000, more than the 4096"):
        spikformer.from_pretrained(hf_folder)


def test_int64_weights_in_a_folder_are_refused_not_cast(hf_folder):
    from safetensors.torch import load_file, save_file

    import spikformer

    state = load_file(hf_folder / "model.safetensors")
    state["head.weight"] = state["head.weight"].round().to(torch.int64)
    save_file(state, hf_folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"tensors of the wrong kind of dtype: head.weight \(torch.int64"):
        spikformer.from_pretrained(hf_folder)


def test_a_pytorch_model_bin_that_would_run_code_is_refused_without_timms_advice(hf_folder):
    import spikformer

    class RunsCode:
        def __reduce__(self):
            return (print, ("ran",))

    (hf_folder / "model.safetensors").unlink()
    torch.save({"head.weight": RunsCode()}, hf_folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"refused to load .*pytorch_model.bin") as info:
        spikformer.from_pretrained(hf_folder)
    assert "weights_only" not in str(info.value)


def test_from_pretrained_of_an_own_file_bounds_its_stored_sizes(tmp_path):
    import spikformer

    path = stored_config_weights(tmp_path / "w.safetensors", model={"T": 10**6})
    with pytest.raises(CheckpointError, match=r"asks for model.T=1000000, more than the 256"):
        spikformer.from_pretrained(path)


def test_from_pretrained_of_an_own_file_refuses_int64_weights(tmp_path):
    import spikformer
    from spikformer.checkpoint import write_checkpoint

    config = config_to_dict(load_config(None, TINY))
    state = build_model(load_config(None, TINY).model).state_dict()
    state["head.weight"] = state["head.weight"].to(torch.int64)
    write_checkpoint(tmp_path / "w.safetensors", state, {"layout": "state_dict", "config": config})
    with pytest.raises(CheckpointError, match=r"wrong kind of dtype: head.weight"):
        spikformer.from_pretrained(tmp_path / "w.safetensors")


# --- output paths, checked before the work -----------------------------------------------------------------


def test_frames_out_naming_a_folder_or_a_suffix_matplotlib_cannot_write_fails_before_reading(tmp_path, capsys):
    folder = tmp_path / "figures"
    folder.mkdir()
    assert main(["frames", "--config", "digits_dvs", "--out", str(folder)]) == 2
    assert f"--out {folder} is a folder" in capsys.readouterr().err
    assert not (tmp_path / "figures.png").exists()
    assert main(["frames", "--config", "digits_dvs", "--out", str(tmp_path / "f.xyz")]) == 2
    assert "matplotlib cannot write .xyz" in capsys.readouterr().err


def test_analyze_json_and_export_out_naming_a_folder_fail_before_the_work(tmp_path, capsys):
    folder = tmp_path / "result.json"
    folder.mkdir()
    assert main(["analyze", "--model", "spikformer_cifar_4_256", *TINY, "--json", str(folder),
                 "--out", str(tmp_path / "analysis")]) == 2
    assert f"--json {folder} is a folder" in capsys.readouterr().err
    assert not (tmp_path / "analysis").exists()  # nothing was measured
    onnx = tmp_path / "m.onnx"
    onnx.mkdir()
    assert main(["export", "--model", "spikformer_cifar_4_256", *TINY, "--out", str(onnx)]) == 2
    assert f"--out {onnx} is a folder" in capsys.readouterr().err


@pytest.mark.parametrize("content", [{0: torch.zeros(2), "head.bias": torch.ones(1)},
                                     {"state_dict": {0: torch.zeros(2)}}, {1: {"a": torch.zeros(1)}}],
                         ids=["raw", "under-state_dict", "top-level"])
def test_a_legacy_pth_with_integer_keys_is_refused_with_one_line(tmp_path, content):
    from spikformer.checkpoint import read_model_state

    torch.save(content, tmp_path / "int.pth")
    with pytest.raises(CheckpointError, match=r"int.pth: (no model state dict found|the state dict has non-string "
                                              r"keys)") as info:
        read_model_state(tmp_path / "int.pth")
    assert "\n" not in str(info.value)


def test_random_interpolation_trains_with_a_random_filter_and_evaluates_with_bicubic():
    from torchvision.transforms import InterpolationMode

    from spikformer.data.transforms import image_transform

    data = load_config(None, ["data.interpolation=random"]).data
    evaluation = image_transform(data, False, 32, 3, (0.5,) * 3, (0.5,) * 3, crop_pct=1.0)
    resize = evaluation.transforms[0]
    assert resize.interpolation == InterpolationMode.BICUBIC
    assert evaluation(Image.new("RGB", (40, 40))).shape == (3, 32, 32)
    image_transform(data, True, 32, 3, (0.5,) * 3, (0.5,) * 3, crop_pct=1.0)  # training keeps 'random'


# --- run folders --------------------------------------------------------------------------------------------


def tiny_run(out_dir, *extra: str) -> list[str]:
    """Overrides for a run of a few seconds on the embedded digits."""
    return ["model.embed_dim=16", "model.depth=1", "model.num_heads=2", "model.T=2", "model.img_size=16",
            "model.in_chans=1", "model.num_classes=10", "data.batch_size=16", "data.train_fraction=0.05",
            "data.eval_batch_size=180", "train.epochs=1", "train.amp=off", "train.progress=false",
            f"train.out_dir={out_dir}", *extra]


def test_out_dir_with_a_tilde_is_the_home_folder_not_a_folder_named_tilde(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", "digits", *tiny_run("~/runs/x")]) == 0
    assert (tmp_path / "home/runs/x/last.safetensors").is_file()
    assert not (tmp_path / "~").exists()


def test_a_restart_with_resume_auto_after_a_failure_before_the_first_checkpoint_is_accepted(tmp_path):
    import yaml

    from spikformer.train.run_folder import prepare_run_folder

    first = config_to_dict(load_config(None, tiny_run(tmp_path / "run")))  # started without train.resume
    (tmp_path / "run").mkdir()
    (tmp_path / "run/config.yaml").write_text(yaml.safe_dump(first, sort_keys=False))  # then it failed
    again = config_to_dict(load_config(None, tiny_run(tmp_path / "run", "train.resume=auto")))
    assert prepare_run_folder(tmp_path / "run", "auto", False, again) is None  # a fresh start, not refused


def test_resuming_a_finished_run_with_fewer_epochs_is_refused_and_keeps_its_config(tmp_path, capsys):
    assert main(["train", "--config", "digits", *tiny_run(tmp_path / "run", "train.epochs=2")]) == 0
    before = (tmp_path / "run/config.yaml").read_text()
    assert main(["train", "--config", "digits", *tiny_run(tmp_path / "run", "train.epochs=1"), "--resume", "auto"]) == 2
    assert "has trained 2 epochs, more than train.epochs=1" in capsys.readouterr().err
    assert (tmp_path / "run/config.yaml").read_text() == before


def test_overwrite_refuses_to_delete_the_config_file_it_is_reading(tmp_path, capsys):
    # out_dir is the folder that holds the config file, as with out_dir=.
    assert main(["train", "--config", "digits", *tiny_run(tmp_path)]) == 0
    config_file = tmp_path / "config.yaml"
    before = config_file.read_text()
    assert main(["train", "--config", str(config_file), "--overwrite"]) == 2
    assert "would delete the config file it reads" in capsys.readouterr().err
    assert config_file.read_text() == before


def test_eval_writes_event_frames_to_the_local_cache_not_under_the_stored_data_root(tmp_path, monkeypatch):
    from event_writers import write_dvsgesture

    root = tmp_path / "gesture"
    write_dvsgesture(root, {"ibmGestureTest/user25_led": [0, 1]}, events_per_file=60)
    model_keys = ["model.name=spikformer_dvs_2_256", "model.embed_dim=16", "model.depth=1", "model.num_heads=2",
                  "model.img_size=32", "model.T=2", "model.num_classes=11"]
    config = load_config(None, [*model_keys, "data.name=dvs128gesture", f"data.root={root}", "train.progress=false",
                                "train.amp=off"])
    save_model(tmp_path / "w.safetensors", build_model(config.model), config_to_dict(config))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert main(["eval", "--checkpoint", str(tmp_path / "w.safetensors")]) == 0
    assert not (root / "cache").exists()  # the file's data.root says where to read, not where to write
    assert list((tmp_path / "xdg/spikformer/frames").glob("dvs128gesture-*/**/*.npz"))
    # a data.root the user gives is the user's choice: its default cache folder is used
    assert main(["eval", "--checkpoint", str(tmp_path / "w.safetensors"), f"data.root={root}"]) == 0
    assert (root / "cache").is_dir()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_lif_backend_this_machine_cannot_run_is_refused_when_the_run_starts(tmp_path, capsys):
    assert main(["train", "--config", "digits", *tiny_run(tmp_path / "run", "model.lif_backend=triton")]) == 2
    assert "model.lif_backend=triton cannot run on cpu" in capsys.readouterr().err
    assert not (tmp_path / "run/last.safetensors").exists()
