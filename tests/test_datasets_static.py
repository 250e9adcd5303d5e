"""Static-image datasets read from their standard on-disk formats (CIFAR pickles, ImageNet-style folders),
their timm pipelines, batch mixing, and a train -> evaluate round trip on them."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from static_data import WNIDS, write_cifar10, write_cifar100, write_image_tree
from timm.data.auto_augment import RandAugment
from timm.data.random_erasing import RandomErasing

from spikformer.cli import main
from spikformer.config import load_config
from spikformer.data import build_dataset
from spikformer.data.transforms import BatchMixing
from spikformer.errors import ConfigError, DatasetError
from spikformer.models import resolve_config


def config_for(name, root, *overrides):
    return resolve_config(load_config(None, [f"data.name={name}", f"data.root={root}", *overrides]))


def test_cifar10_reads_the_official_python_pickles(tmp_path):
    folder = write_cifar10(tmp_path, per_batch=3, test=4)
    train = build_dataset(config_for("cifar10", tmp_path), "train")
    val = build_dataset(config_for("cifar10", tmp_path), "val")
    assert (len(train), len(val), train.num_classes) == (15, 4, 10)
    with (folder / "data_batch_2").open("rb") as handle:
        batch = pickle.load(handle, encoding="bytes")
    row, label = batch[b"data"][0], batch[b"labels"][0]
    # rows hold the red, green and blue 32x32 planes one after the other
    assert np.array_equal(train.images[3], row.reshape(3, 32, 32).transpose(1, 2, 0)) and train.labels[3] == label
    assert train.classes[:2] == ["airplane", "automobile"]
    image, target = val[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and target == val.labels[0]


def test_cifar100_uses_the_fine_labels_and_accepts_the_extracted_folder_as_root(tmp_path):
    folder = write_cifar100(tmp_path, train=12, test=4)
    dataset = build_dataset(config_for("cifar100", folder, "model.num_classes=100"), "train")
    with (folder / "train").open("rb") as handle:
        fine = pickle.load(handle, encoding="bytes")[b"fine_labels"]
    assert dataset.num_classes == 100 and dataset.labels.tolist() == fine
    assert dataset.classes[0] == "class0"


def test_a_missing_cifar_folder_names_the_expected_layout(tmp_path):
    with pytest.raises(DatasetError, match=r"cifar-10-batches-py/ with the pickles data_batch_1.*python version"):
        build_dataset(config_for("cifar10", tmp_path / "nowhere"), "train")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "readme.txt").write_text("not cifar")
    with pytest.raises(DatasetError, match="it holds readme.txt"):
        build_dataset(config_for("cifar100", tmp_path / "other"), "val")
    with pytest.raises(ConfigError, match="needs data.root"):
        build_dataset(resolve_config(load_config(None, ["data.name=cifar10"])), "train")


def test_a_malformed_cifar_pickle_is_one_dataset_error(tmp_path):
    folder = write_cifar10(tmp_path)
    (folder / "data_batch_3").write_bytes(b"truncated")
    with pytest.raises(DatasetError, match="data_batch_3 is not a CIFAR pickle"):
        build_dataset(config_for("cifar10", tmp_path), "train")
    with (folder / "data_batch_3").open("wb") as handle:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, handle, protocol=2)
    with pytest.raises(DatasetError, match="rows of 3072 pixels"):
        build_dataset(config_for("cifar10", tmp_path), "train")


class _RunsCode:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))  # unpickling would create the file


def test_a_cifar_pickle_that_would_run_code_is_refused(tmp_path):
    folder = write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    with (folder / "test_batch").open("wb") as handle:
        pickle.dump({b"data": _RunsCode(marker), b"labels": []}, handle, protocol=2)
    with pytest.raises(DatasetError, match="refusing to load"):
        build_dataset(config_for("cifar10", tmp_path), "val")
    assert not marker.exists()


def test_download_is_not_attempted_when_the_files_are_there(tmp_path, monkeypatch):
    import torchvision

    write_cifar10(tmp_path)
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", lambda *a, **k: pytest.fail("tried to download"))
    assert len(build_dataset(config_for("cifar10", tmp_path, "data.download=true"), "train")) == 20


def test_a_failed_download_names_the_manual_route(tmp_path, monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", offline)
    with pytest.raises(DatasetError, match=r"could not download cifar100.*cs.toronto.edu"):
        build_dataset(config_for("cifar100", tmp_path, "data.download=true"), "train")


def test_imagenet_folders_give_wnid_labels_rgb_images_at_the_model_size(tmp_path):
    write_image_tree(tmp_path, train_per_class=3, val_per_class=3)  # mixed sizes; grey and CMYK files among them
    config = config_for("imagenet", tmp_path, "model.name=spikformer_8_384", "model.img_size=48")
    train, val = build_dataset(config, "train"), build_dataset(config, "val")
    assert train.classes == list(WNIDS) and train.num_classes == 3 and len(train) == 9
    assert [label for _, label in val.samples] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    with Image.open(val.samples[1][0]) as stored:
        assert stored.mode == "L"  # a grey JPEG ...
    image, label = val[1]
    assert image.shape == (3, 48, 48) and label == 0  # ... becomes 3 channels at the model's size
    with Image.open(val.samples[2][0]) as stored:
        assert stored.mode == "CMYK"
    assert val[2][0].shape == (3, 48, 48)


def test_imagenet_layout_errors_name_the_expected_layout(tmp_path):
    imagenet = ("imagenet", "model.name=spikformer_8_384")
    with pytest.raises(DatasetError, match=r"does not exist.*train/<class>/\*.JPEG"):
        build_dataset(config_for(imagenet[0], tmp_path / "missing", imagenet[1]), "train")
    write_image_tree(tmp_path / "named", classes=("cat", "dog"))
    with pytest.raises(DatasetError, match="WordNet IDs.*data.name=folder"):
        build_dataset(config_for(imagenet[0], tmp_path / "named", imagenet[1]), "train")
    root = write_image_tree(tmp_path / "flat", val_per_class=0)
    Image.new("RGB", (8, 8)).save(root / "val" / "ILSVRC2012_val_00000001.JPEG")
    for wnid in WNIDS:
        (root / "val" / wnid).rmdir()
    with pytest.raises(DatasetError, match=r"holds images directly.*sort it into val/<wnid>/"):
        build_dataset(config_for(imagenet[0], root, imagenet[1]), "val")
    root = write_image_tree(tmp_path / "noval")
    (root / "val").rename(root / "elsewhere")
    with pytest.raises(DatasetError, match="has no val/ folder"):
        build_dataset(config_for(imagenet[0], root, imagenet[1]), "val")
    with pytest.raises(ConfigError, match="cannot be downloaded"):
        build_dataset(config_for(imagenet[0], root, imagenet[1], "data.download=true"), "train")


def test_a_folder_tree_takes_any_class_names_and_colour_modes(tmp_path):
    root = write_image_tree(tmp_path, classes=("apple", "pear"), extension=".jpg")
    Image.new("RGBA", (40, 30), (255, 0, 0, 128)).save(root / "train" / "pear" / "transparent.png")
    (root / "val").rename(root / "test")  # test/ is accepted for val/
    dataset = build_dataset(config_for("folder", root, "model.in_chans=1"), "train")
    assert dataset.classes == ["apple", "pear"] and len(dataset) == 9
    assert all(dataset[i][0].shape == (1, 32, 32) for i in range(len(dataset)))  # grey model: 1 channel
    with pytest.raises(DatasetError, match="train/ lacks"):
        (root / "test" / "plum").mkdir()
        build_dataset(config_for("folder", root), "val")


def test_an_unreadable_image_names_the_file(tmp_path):
    root = write_image_tree(tmp_path)
    bad = root / "train" / WNIDS[0] / "broken.JPEG"
    bad.write_bytes(b"not a jpeg")
    dataset = build_dataset(config_for("folder", root), "train")
    with pytest.raises(DatasetError, match="broken.JPEG"):
        dataset[[path for path, _ in dataset.samples].index(str(bad))]


def test_training_pipeline_is_timms_with_randaugment_erasing_and_bicubic_crops(tmp_path):
    write_cifar10(tmp_path)
    config = config_for("cifar10", tmp_path, "data.auto_augment=rand-m9-n1-mstd0.4-inc1", "data.random_erasing=0.25",
                        "data.scale=[1.0, 1.0]", "data.mean=[0.5, 0.5, 0.5]", "data.std=[0.25, 0.25, 0.25]",
                        "data.random_erasing_stage=sample")  # per image, before mixing (default: on the batch)
    steps = build_dataset(config, "train").transform.transforms
    assert any(isinstance(t, RandAugment) and len(t.ops) == 15 and t.num_layers == 1 for t in steps)
    assert any(isinstance(t, RandomErasing) and t.probability == 0.25 for t in steps)
    crop = steps[0]
    assert crop.scale == (1.0, 1.0) and "bicubic" in repr(crop)
    normalize = next(t for t in steps if type(t).__name__ == "Normalize")
    assert list(normalize.mean) == [0.5, 0.5, 0.5] and list(normalize.std) == [0.25, 0.25, 0.25]


def test_evaluation_resizes_to_size_over_crop_pct_then_centre_crops(tmp_path):
    write_image_tree(tmp_path)
    config = config_for("imagenet", tmp_path, "model.name=spikformer_8_384", "data.crop_pct=0.875")
    steps = build_dataset(config, "val").transform.transforms
    assert steps[0].size == 256 and steps[1].size == (224, 224)  # 224 / 0.875 = 256
    with pytest.raises(ConfigError, match="data.mean has 2 values"):
        config_for("imagenet", tmp_path, "data.mean=[0.5, 0.5]")


def test_mixing_gives_soft_targets_and_stops_at_the_off_epoch():
    config = load_config(None, ["data.mixup_alpha=0.5", "data.cutmix_alpha=1.0", "data.mixup_off_epoch=3"])
    mixing = BatchMixing(config.data, num_classes=4, label_smoothing=0.1)
    images, labels = torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    mixing.set_epoch(2)
    mixed, targets = mixing(images, labels)
    assert targets.shape == (6, 4) and torch.allclose(targets.sum(1), torch.ones(6))
    assert not torch.equal(mixed, images) and targets.max() < 0.925 + 1e-6  # pairs mixed (lam < 1)
    assert targets.min() >= 0.025 - 1e-6  # mixed targets are smoothed too: no class falls to 0
    mixing.set_epoch(3)
    unmixed, smoothed = mixing(images, labels)
    assert torch.equal(unmixed, images)
    assert torch.allclose(smoothed, torch.nn.functional.one_hot(labels, 4) * 0.9 + 0.025)  # label smoothing only


def test_mixing_an_odd_batch_only_smooths_and_event_frames_share_one_box():
    config = load_config(None, ["data.cutmix_alpha=1.0"])
    mixing = BatchMixing(config.data, num_classes=3, label_smoothing=0.0)
    odd = torch.rand(3, 2, 8, 8)
    out, targets = mixing(odd, torch.tensor([0, 1, 2]))
    assert torch.equal(out, odd) and torch.equal(targets, torch.eye(3))
    frames = torch.arange(2 * 4 * 2 * 8 * 8, dtype=torch.float32).reshape(2, 4, 2, 8, 8)  # [B, T, C, H, W]
    mixed, _ = mixing(frames, torch.tensor([0, 1]))
    pasted = mixed[0] != frames[0]  # where sample 0 received sample 1's pixels
    assert pasted.any() and all(torch.equal(pasted[t], pasted[0]) for t in range(4))
    with pytest.raises(ConfigError, match="batch_size must be even"):
        load_config(None, ["data.mixup_alpha=0.8", "data.batch_size=5"])


def test_train_on_cifar_then_evaluate_at_another_T_into_json(tmp_path, capsys):
    write_cifar10(tmp_path / "cifar", per_batch=2, test=5)
    run = tmp_path / "run"
    (tmp_path / "tiny.yaml").write_text(
        "model: {name: spikformer_cifar_4_256, embed_dim: 16, depth: 1, num_heads: 2, T: 2}\n"
        f"data: {{name: cifar10, root: {tmp_path / 'cifar'}, batch_size: 4, mixup_alpha: 0.5}}\n"
        "optim: {warmup_epochs: 0}\n"
        f"train: {{epochs: 1, out_dir: {run}, amp: 'off', progress: false, tensorboard: false}}\n")
    assert main(["train", "--config", str(tmp_path / "tiny.yaml")]) == 0
    out = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(run / "best.safetensors"), "model.T=8", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["T"] == 8 and result["count"] == 5 and result["split"] == "val"
    assert {"top1", "top5", "loss"} <= set(result) and 0 <= result["top1"] <= 100
    assert "T=8" in capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(run / "best.safetensors"), f"data.root={tmp_path / 'gone'}"]) == 2
    assert "expected cifar-10-batches-py/" in capsys.readouterr().err
