"""``spikformer predict``: image files -> top-k classes with names, from a checkpoint or an exported ONNX file;
and the preprocessing an ONNX export carries in its metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from spikformer import cli
from spikformer.checkpoint import save_model
from spikformer.config import config_to_dict, load_config
from spikformer.data.digits import DIGITS_MEAN, DIGITS_STD, digits_split
from spikformer.models import build_model, resolve_config

TINY = [
    "model.embed_dim=16",
    "model.num_heads=2",
    "model.depth=1",
    "model.T=2",
    "model.img_size=8",
    "model.patch_size=4",
    "model.num_classes=10",
]
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A digits checkpoint (seeded random weights, BatchNorm statistics of the data) and 6 test digits as PNGs."""
    root = tmp_path_factory.mktemp("predict")
    config = resolve_config(load_config("digits", TINY))
    torch.manual_seed(0)
    model = build_model(config.model)
    images, _ = digits_split("val")
    pixels = (images[:6] * 255).round().astype(np.uint8)  # [6, 8, 8] at the model's img_size
    folder = root / "digits"
    folder.mkdir()
    for i, pixel in enumerate(pixels):
        Image.fromarray(pixel, mode="L").save(folder / f"digit_{i}.png")
    inputs = (torch.from_numpy(pixels).float().unsqueeze(1) / 255 - DIGITS_MEAN) / DIGITS_STD
    model.train()
    with torch.no_grad():
        model(inputs)  # BatchNorm statistics of these inputs, so that logits differ between images
    model.eval()
    with torch.no_grad():
        expected = model(inputs).softmax(-1)
    save_model(root / "best.safetensors", model, config_to_dict(config), class_names=NAMES)
    return root, folder, expected


def _predicted(out: str) -> dict[str, list[tuple[str, float]]]:
    table = {}
    for line in out.strip().splitlines():
        path, *top = line.split()
        table[path.rsplit("/", 1)[-1]] = [(top[i], float(top[i + 1].rstrip("%")) / 100) for i in range(0, len(top), 2)]
    return table


def test_predict_gives_the_top_k_classes_by_name_of_each_image_file(digits_run, capsys):
    root, folder, expected = digits_run
    assert (
        cli.main(["predict", str(root / "best.safetensors"), str(folder), "-k", "3", "--json", str(root / "p.json")])
        == 0
    )
    table = _predicted(capsys.readouterr().out)
    assert sorted(table) == [f"digit_{i}.png" for i in range(6)]
    for i in range(6):
        probabilities, indices = expected[i].topk(3)
        assert [name for name, _ in table[f"digit_{i}.png"]] == [NAMES[j] for j in indices.tolist()]
        assert [p for _, p in table[f"digit_{i}.png"]] == pytest.approx(probabilities.tolist(), abs=1.5e-3)
    document = json.loads((root / "p.json").read_text())
    assert len(document) == 6 and len(document[0]["top"]) == 3


def test_top_k_is_capped_at_the_number_of_classes(digits_run, capsys):
    root, folder, _ = digits_run
    assert cli.main(["predict", str(root / "best.safetensors"), str(folder / "digit_0.png"), "-k", "50"]) == 0
    assert len(_predicted(capsys.readouterr().out)["digit_0.png"]) == 10


def test_the_onnx_export_carries_preprocessing_and_class_names_and_predicts_the_same(digits_run, capsys):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    import onnx

    root, folder, _ = digits_run
    assert cli.main(["export", "--checkpoint", str(root / "best.safetensors"), "--out", str(root / "m.onnx")]) == 0
    props = {p.key: p.value for p in onnx.load(str(root / "m.onnx")).metadata_props}
    assert json.loads(props["mean"]) == [DIGITS_MEAN] and json.loads(props["std"]) == [DIGITS_STD]
    assert (props["img_size"], props["in_chans"], props["T"], props["input"]) == ("8", "1", "2", "images")
    assert json.loads(props["class_names"]) == NAMES
    capsys.readouterr()
    assert cli.main(["predict", str(root / "best.safetensors"), str(folder)]) == 0
    from_checkpoint = _predicted(capsys.readouterr().out)
    assert cli.main(["predict", str(root / "m.onnx"), str(folder)]) == 0
    from_onnx = _predicted(capsys.readouterr().out)
    assert {k: [n for n, _ in v] for k, v in from_onnx.items()} == {
        k: [n for n, _ in v] for k, v in from_checkpoint.items()
    }


def test_predict_refuses_a_path_that_is_no_image_in_one_line(digits_run, tmp_path, capsys):
    root, _, _ = digits_run
    (tmp_path / "notes.png").write_text("not an image")
    assert cli.main(["predict", str(root / "best.safetensors"), str(tmp_path / "notes.png")]) == 2
    assert "notes.png is not a readable image" in capsys.readouterr().err
    assert cli.main(["predict", str(root / "best.safetensors"), str(tmp_path / "missing")]) == 2
    assert "is neither an image file nor a folder" in capsys.readouterr().err
