"""The dataset is checked against the model before any training or evaluation: the class count, the channels
(colour made grey is said in one line), and the class names, which every checkpoint stores and eval and
analyze check; top-5 is reported only with more than 5 classes. Data are written in the real on-disk layouts
(tests/static_data.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from static_data import WNIDS, write_cifar10, write_image_tree

from spikformer.checkpoint import read_checkpoint, stored_class_names
from spikformer.cli import main
from spikformer.config import load_config
from spikformer.data import build_dataset
from spikformer.errors import CheckpointError, ConfigError
from spikformer.models import resolve_config
from spikformer.train import Trainer

# A model of seconds on 16x16 inputs.
TINY_MODEL = ["model.name=spikformer_cifar_4_256", "model.embed_dim=16", "model.depth=1", "model.num_heads=2",
              "model.T=1", "model.img_size=16", "model.patch_size=4"]


def tree_config(root: Path, out: Path, *extra: str) -> list[str]:
    return [*TINY_MODEL, "data.name=folder", f"data.root={root}", "data.batch_size=4", "data.auto_augment=null",
            "train.epochs=1", "train.amp=off", "train.progress=false", "train.tensorboard=false",
            f"train.out_dir={out}", *extra]


def test_a_three_class_folder_under_a_ten_class_head_is_refused_naming_the_classes(tmp_path, capsys):
    root = write_image_tree(tmp_path / "data", classes=("cat", "dog", "fox"), train_per_class=2, val_per_class=1)
    with pytest.raises(ConfigError, match=r"data.name=folder has 3 classes \(cat, dog, fox\) but "
                                          r"model.num_classes=10; set model.num_classes=3"):
        Trainer(load_config(None, tree_config(root, tmp_path / "run", "model.num_classes=10")))
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_a_two_class_imagenet_tree_under_the_recipes_thousand_classes_is_refused_by_the_command(tmp_path, capsys):
    root = write_image_tree(tmp_path / "data", classes=WNIDS[:2], train_per_class=2, val_per_class=1)
    code = main(["train", "--config", "imagenet_8_384", f"data.root={root}", "data.batch_size=2",
                 f"train.out_dir={tmp_path / 'run'}", "train.progress=false"])
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0
    assert f"data.name=imagenet has 2 classes ({', '.join(WNIDS[:2])}) but model.num_classes=1000" in error


def test_colour_made_grey_is_said_once_and_class_names_go_into_checkpoints_eval_and_analyze(tmp_path, capsys):
    # RGB (and CMYK) JPEGs under a 1-channel model: converted, and the run says so in one line (also in
    # train.log). The class count comes from the data; with 3 classes there is no top-5.
    root = write_image_tree(tmp_path / "data", classes=("cat", "dog", "fox"), train_per_class=4, val_per_class=2)
    run = tmp_path / "run"
    assert main(["train", "--config", "digits", *tree_config(root, run, "model.in_chans=1", "model.num_classes=null",
                                                             "data.mean=[0.5]", "data.std=[0.25]")]) == 0
    printed = capsys.readouterr().out
    note = "data.name=folder: colour images (e.g. "
    assert printed.count(note) == 1 and "are converted to grey for model.in_chans=1" in printed
    assert "set model.in_chans=3 to train on the colours" in printed
    assert sum(note in line for line in (run / "train.log").read_text().splitlines()) == 1
    assert "top5" not in printed
    with (run / "metrics.csv").open() as handle:
        assert [row["val_top5"] for row in csv.DictReader(handle)] == [""]
    for name in ("best.safetensors", "last.safetensors"):
        assert read_checkpoint(run / name)[1]["class_names"] == ["cat", "dog", "fox"], name

    result = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(run / "best.safetensors"), "--json", str(result)]) == 0
    document = json.loads(result.read_text())
    assert document["class_names"] == ["cat", "dog", "fox"] and "top5" not in document
    assert "top5" not in capsys.readouterr().out

    # The same number of classes, other names: the labels would mean other classes. Refused in one line.
    other = write_image_tree(tmp_path / "other", classes=("ant", "cat", "dog"), train_per_class=1, val_per_class=1)
    assert main(["eval", "--checkpoint", str(run / "best.safetensors"), f"data.root={other}"]) == 2
    error = capsys.readouterr().err
    assert "was trained on 3 classes (cat, dog, fox) but data.name=folder gives 3 (lacks fox; adds ant)" in error
    assert main(["analyze", "--checkpoint", str(run / "best.safetensors"), f"data.root={other}", "--no-figures",
                 "--batches", "1", "--out", str(tmp_path / "analysis")]) == 2
    assert "was trained on 3 classes (cat, dog, fox)" in capsys.readouterr().err
    report = tmp_path / "analysis.json"
    assert main(["analyze", "--checkpoint", str(run / "best.safetensors"), "--no-figures", "--batches", "1",
                 "--out", str(tmp_path / "analysis"), "--json", str(report)]) == 0
    assert json.loads(report.read_text())["class_names"] == ["cat", "dog", "fox"]


def test_cifar_made_grey_says_so_and_names_its_classes(tmp_path):
    write_cifar10(tmp_path / "cifar", per_batch=2, test=2)
    config = resolve_config(load_config(None, ["data.name=cifar10", f"data.root={tmp_path / 'cifar'}",
                                               "model.name=spikformer_cifar_4_256", "model.in_chans=1"]))
    dataset = build_dataset(config, "train")
    assert "colour images (e.g. image 0 of cifar10, RGB) are converted to grey" in dataset.input_conversion()
    assert dataset.classes[:2] == ["airplane", "automobile"]
    colour = build_dataset(resolve_config(load_config(None, ["data.name=cifar10", f"data.root={tmp_path / 'cifar'}",
                                                             "model.name=spikformer_cifar_4_256"])), "train")
    assert colour.input_conversion() is None


def test_a_grey_image_tree_under_a_grey_model_converts_nothing_worth_saying(tmp_path):
    root = write_image_tree(tmp_path, classes=("a", "b"), train_per_class=2, val_per_class=1)
    for path in root.rglob("*.JPEG"):  # store every file grey
        from PIL import Image

        with Image.open(path) as image:
            grey = image.convert("L")
        grey.save(path, format="JPEG")
    config = resolve_config(load_config(None, [*TINY_MODEL, "model.in_chans=1", "data.name=folder",
                                               f"data.root={root}"]))
    assert build_dataset(config, "train").input_conversion() is None


@pytest.mark.parametrize("names", [[], "cat", ["cat", "cat"], ["cat", ""], ["x" * 257], [1, 2], ["a"] * 100_001])
def test_stored_class_names_that_are_not_a_list_of_distinct_names_are_refused(names):
    with pytest.raises(CheckpointError, match="class_names are not a list of 1 to 100000 distinct names"):
        stored_class_names("x.safetensors", {"class_names": names})
    assert stored_class_names("x.safetensors", {}) is None
    assert stored_class_names("x.safetensors", {"class_names": ["cat", "dog"]}) == ["cat", "dog"]
