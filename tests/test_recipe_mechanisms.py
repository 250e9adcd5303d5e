"""Each mechanism of the papers' recipes against SPEC §2: the RandAugment op lists and their distributions, the
posterize of the Pillow the original ran on, crops, random erasing after mixing, the mixing probability, the
original CIFAR10-DVS augmentation and split, and the float16 autocast choice. Draw counts are large enough that
an op missing, misweighted or out of range fails (bounds at 5 standard deviations, seeded)."""

from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from static_data import write_cifar10
from timm.data.auto_augment import NAME_TO_OP, RandAugment
from timm.data.auto_augment import posterize as timm_posterize
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from spikformer.config import load_config as read_config
from spikformer.data import build_dataset
from spikformer.data.augment_ops import CIFAR_RAND_OPS, augment_ops, build_auto_augment, posterize
from spikformer.data.cifar10dvs import CLASSES, cifar10dvs_recordings
from spikformer.data.event_augment import OPS, EventAugmentWide
from spikformer.data.event_dataset import EventAugment
from spikformer.data.transforms import (
    BatchErasing,
    BatchMixing,
    build_batch_erasing,
    chain_batch_transforms,
    image_transform,
)
from spikformer.errors import ConfigError
from spikformer.models import resolve_config
from spikformer.train import Trainer, engine

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CIFAR_RECIPE = CONFIGS / "cifar10_4_384.yaml"
IMAGENET_RECIPE = CONFIGS / "imagenet_8_384.yaml"
DVS_RECIPE = CONFIGS / "cifar10dvs_2_256.yaml"


def load_config(path, overrides=()):
    """The config as a run sees it: read, then resolved (datasets take the model's input from it)."""
    return resolve_config(read_config(path, list(overrides)))


@pytest.fixture(autouse=True)
def _seed_python_and_numpy():
    # timm's augmentations draw from random and numpy (conftest seeds torch): every count below is reproducible.
    random.seed(0)
    np.random.seed(0)


def within(count: float, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def recipe_rand_augment(path: Path, tmp_path: Path) -> RandAugment:
    write_cifar10(tmp_path / "cifar")
    overrides = [f"data.root={tmp_path / 'cifar'}"]
    if "imagenet" in path.name:  # the ImageNet recipe's augmentation, on CIFAR-sized stand-in files
        overrides += ["data.name=cifar10", "model.num_classes=10"]
    steps = build_dataset(load_config(path, overrides), "train").transform.transforms
    return next(step for step in steps if isinstance(step, RandAugment))


def record_ops(augment: RandAugment) -> list[tuple[str, float | None]]:
    """Make every op of ``augment`` log (name, its level argument) when it is applied."""
    log = []

    def recording(name, fn):
        def apply(img, *args, **kwargs):
            log.append((name, args[0] if args else None))
            return fn(img, *args, **kwargs)
        return apply

    for op in augment.ops:
        op.aug_fn = recording(op.name, op.aug_fn)
    return log


# --- posterize: Pillow 9's behaviour on today's Pillow ---------------------------------------------------------


def test_posterize_keeps_the_top_bits_as_pillow_does_and_zero_bits_is_black():
    rng = np.random.default_rng(0)
    for mode, shape in (("RGB", (9, 7, 3)), ("L", (9, 7))):
        image = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)
        for bits in range(1, 9):
            assert np.array_equal(np.asarray(posterize(image, bits)), np.asarray(ImageOps.posterize(image, bits)))
        black = posterize(image, 0)
        assert black.mode == mode and black.size == image.size and not np.asarray(black).any()


def test_todays_pillow_refuses_zero_bits_and_the_recipes_ops_do_not_ask_it():
    image = Image.new("RGB", (8, 8), (200, 30, 90))
    if int(Image.__version__.split(".")[0]) >= 10:
        with pytest.raises(ValueError):
            ImageOps.posterize(image, 0)  # the crash the recipes hit in their first epoch
    augment = build_auto_augment("rand-m9-mstd0.5-inc1", 224, (0.485, 0.456, 0.406), "bicubic")
    posterizing = [op for op in augment_ops(augment) if "Posterize" in op.name]
    assert [op.name for op in posterizing] == ["PosterizeIncreasing"]
    op = posterizing[0]
    op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0.0  # the magnitude at which inc1 asks for 0 bits
    assert op.level_fn(10, op.hparams) == (0,) and not np.asarray(op(image)).any()  # black, as Pillow 9 gave
    assert NAME_TO_OP["PosterizeIncreasing"] is timm_posterize  # timm's own table is left alone


@pytest.mark.parametrize("policy", ["rand-m9-mstd0.5-inc1", "rand-m0-n3-mstd0", "augmix-m5-w3", "v0", "original"])
def test_every_timm_policy_we_build_uses_our_posterize(policy):
    ops = augment_ops(build_auto_augment(policy, 32, (0.5, 0.5, 0.5), "bicubic"))
    assert ops and all(op.aug_fn is not timm_posterize for op in ops)


def test_an_op_list_needs_a_rand_policy_and_known_names():
    with pytest.raises(ConfigError, match="did you mean 'TranslateXRel'"):
        build_auto_augment("rand-m9", 32, (0.5,) * 3, "bicubic", ["TranslateXrel"])
    with pytest.raises(ConfigError, match="applies to a RandAugment policy"):
        build_auto_augment("v0", 32, (0.5,) * 3, "bicubic", ["Rotate"])
    data = load_config(None, ["data.rand_augment_ops=[Rotate]"]).data  # a list without a policy to use it
    with pytest.raises(ConfigError, match="data.auto_augment is not"):
        image_transform(data, True, 32, 3, (0.5,) * 3, (0.5,) * 3, 1.0)


# --- the CIFAR RandAugment: the original's 5 ops -----------------------------------------------------------------


def test_cifar_randaugment_draws_one_of_the_originals_five_ops_at_half_probability(tmp_path):
    augment = recipe_rand_augment(CIFAR_RECIPE, tmp_path)
    assert [op.name for op in augment.ops] == list(CIFAR_RAND_OPS) and augment.num_layers == 1
    assert all(op.prob == 0.5 and op.magnitude == 9 and op.magnitude_std == 0.4 for op in augment.ops)
    fill = tuple(round(255 * m) for m in (0.4914, 0.4822, 0.4465))  # fill = the dataset mean
    assert all(op.kwargs["fillcolor"] == fill and op.kwargs["resample"] == Image.BICUBIC for op in augment.ops)
    log = record_ops(augment)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    draws = 20_000
    for _ in range(draws):
        augment(image)
    counts = Counter(name for name, _ in log)
    assert set(counts) == set(CIFAR_RAND_OPS)
    assert all(within(counts[name], draws, 0.5 / 5) for name in CIFAR_RAND_OPS)  # uniform op, then p = 0.5
    levels = {name: np.array([level for n, level in log if n == name]) for name in CIFAR_RAND_OPS if name != "Equalize"}
    # magnitude ~ N(9, 0.4) clipped to [0, 10], i.e. 90% of each op's maximum on average, random sign
    for name, maximum in (("Rotate", 30.0), ("ShearX", 0.3), ("TranslateXRel", 0.45), ("TranslateYRel", 0.45)):
        values = levels[name]
        assert np.abs(values).max() <= maximum + 1e-9
        assert abs(np.abs(values).mean() - 0.9 * maximum) < 0.01 * maximum
        assert np.abs(values).min() > 0.7 * maximum  # mstd 0.4: a magnitude below 7 is 5 standard deviations away
        assert within((values > 0).sum(), len(values), 0.5)


# timm's RandAugment list with the "inc1" (increasing magnitude) ops, which the ImageNet recipe leaves in place
TIMM_INCREASING_OPS = ["AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
                       "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
                       "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"]


def test_imagenet_randaugment_is_timms_15_increasing_ops_two_per_image_bicubic(tmp_path):
    augment = recipe_rand_augment(IMAGENET_RECIPE, tmp_path)
    assert [op.name for op in augment.ops] == TIMM_INCREASING_OPS and augment.num_layers == 2  # rand-m9-mstd0.5-inc1
    assert all(op.prob == 0.5 and op.magnitude == 9 and op.magnitude_std == 0.5 for op in augment.ops)
    assert all(op.kwargs["resample"] == Image.BICUBIC for op in augment.ops)


def on_line(pixels: np.ndarray, a: np.ndarray, b: np.ndarray, tolerance: float = 2.0) -> np.ndarray:
    """Whether each RGB pixel lies on the line through colours ``a`` and ``b`` (up to rounding)."""
    direction = (b - a) / np.linalg.norm(b - a)
    offset = pixels.reshape(-1, 3).astype(np.float64) - a
    residual = offset - np.outer(offset @ direction, direction)
    return np.linalg.norm(residual, axis=1) <= tolerance


@pytest.mark.parametrize("recipe, colour_ops", [(CIFAR_RECIPE, False), (IMAGENET_RECIPE, True)])
def test_only_the_imagenet_list_changes_colours_cifar_only_moves_pixels(recipe, colour_ops, tmp_path):
    # A one-colour image: a geometric op can only blend it with the fill colour (and Equalize leaves a single
    # colour alone), so every pixel stays on the line between the two; a colour op (invert, solarize ...) leaves it.
    augment = recipe_rand_augment(recipe, tmp_path)
    colour = np.array([200.0, 30.0, 90.0])
    fill = np.array(augment.ops[0].kwargs["fillcolor"], dtype=np.float64)
    image = Image.new("RGB", (32, 32), tuple(int(c) for c in colour))
    off_line = sum(not on_line(np.asarray(augment(image)), colour, fill).all() for _ in range(3_000))
    assert (off_line > 0) == colour_ops


def test_cifar_crop_is_the_whole_image_and_imagenet_crops_the_whole_area(tmp_path):
    write_cifar10(tmp_path / "cifar")
    config = load_config(CIFAR_RECIPE, [f"data.root={tmp_path / 'cifar'}"])
    crop = build_dataset(config, "train").transform.transforms[0]
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    assert all(np.array_equal(np.asarray(crop(image)), np.asarray(image)) for _ in range(20))  # identity
    imagenet = load_config(IMAGENET_RECIPE, [f"data.root={tmp_path / 'cifar'}", "data.name=cifar10",
                                             "model.num_classes=10"])
    crop = build_dataset(imagenet, "train").transform.transforms[0]
    assert crop.scale == (1.0, 1.0) and crop.ratio == pytest.approx((3 / 4, 4 / 3))
    for width, height in ((400, 300), (300, 400), (500, 500)):  # aspect within 3/4..4/3: the whole image
        assert all(crop.get_params(Image.new("RGB", (width, height)), crop.scale, crop.ratio) ==
                   (0, 0, height, width) for _ in range(20))
    i, j, h, w = crop.get_params(Image.new("RGB", (800, 300)), crop.scale, crop.ratio)  # wider: the centre 4:3
    assert (h, w) == (300, 400) and j == 200


# --- random erasing: const boxes on the normalised batch, after mixing ---------------------------------------------


def test_erasing_comes_after_mixing_so_its_boxes_are_exact_zeros(tmp_path):
    config = load_config(CIFAR_RECIPE)
    batch = chain_batch_transforms(BatchMixing(config.data, 10, 0.1), build_batch_erasing(config.data))
    assert [type(step) for step in batch.steps] == [BatchMixing, BatchErasing]
    erased_samples, boxes = 0, []
    for _ in range(200):
        images = torch.cat([torch.ones(4, 3, 32, 32), -torch.ones(4, 3, 32, 32)])  # mixing pairs 1 with -1
        out, targets = batch(images, torch.tensor([0, 1, 2, 3, 4, 5, 6, 7]))
        assert targets.shape == (8, 10)
        for sample in out:
            zero = (sample == 0).all(0)  # a mixed pixel is 2 lam - 1, never exactly 0
            if zero.any():
                erased_samples += 1
                rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
                h, w = len(rows), len(cols)
                assert zero[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all() and zero.sum() == h * w  # one box
                assert (sample != 0).all(0)[~zero].all() and len(sample[:, ~zero].unique()) == 1  # mixed elsewhere
                boxes.append((h * w / 1024, h / w))
    assert within(erased_samples, 1600, 0.25)
    areas, aspects = np.array(boxes).T
    assert areas.min() >= 0.02 - 1 / 32 and areas.max() <= 1 / 3 + 1 / 32  # 2-33% of the area (rounded sides)
    assert aspects.min() >= 0.3 - 0.1 and aspects.max() <= 1 / 0.3 + 0.4


def test_erasing_in_the_sample_transform_is_one_key_away(tmp_path):
    write_cifar10(tmp_path / "cifar")
    per_sample = load_config(CIFAR_RECIPE, [f"data.root={tmp_path / 'cifar'}", "data.random_erasing_stage=sample"])
    assert build_batch_erasing(per_sample.data) is None
    steps = build_dataset(per_sample, "train").transform.transforms
    assert type(steps[-1]).__name__ == "RandomErasing" and steps[-1].mode == "const"
    recipe = load_config(CIFAR_RECIPE, [f"data.root={tmp_path / 'cifar'}"])
    assert all(type(s).__name__ != "RandomErasing" for s in build_dataset(recipe, "train").transform.transforms)


def test_batch_erasing_of_event_frames_uses_one_box_for_all_steps():
    frames = torch.ones(6, 4, 2, 16, 16)  # [B, T, C, H, W]
    out, _ = BatchErasing(1.0)(frames, torch.zeros(6))
    assert torch.equal(frames, torch.ones_like(frames))  # a copy is erased
    zero = out == 0
    assert zero.any() and all(torch.equal(zero[:, t], zero[:, 0]) for t in range(4))


def test_dvs_mixing_mixes_half_of_the_batches():
    config = load_config(DVS_RECIPE)
    mixing = BatchMixing(config.data, 10, 0.1)
    frames, labels = torch.rand(2, 2, 2, 4, 4), torch.tensor([0, 1])
    mixed = sum(not torch.equal(mixing(frames, labels)[0], frames) for _ in range(2_000))
    assert within(mixed, 2_000, 0.5)


# --- the original CIFAR10-DVS augmentation --------------------------------------------------------------------------


def torchvision_op(frames: torch.Tensor, op: str, magnitude: float) -> torch.Tensor:
    """The original's op on all the frames, written out with torchvision: shear ``degrees(m)`` for ``m`` radians,
    translation by whole pixels, rotation in degrees; nearest interpolation, zero fill."""
    nearest = InterpolationMode.NEAREST
    if op == "rotate":
        return TF.rotate(frames, magnitude, interpolation=nearest, fill=0.0)
    shear = [math.degrees(magnitude), 0.0] if op == "shear_x" else [0.0, 0.0]
    translate = {"translate_x": [int(magnitude), 0], "translate_y": [0, int(magnitude)]}.get(op, [0, 0])
    return TF.affine(frames, angle=0.0, translate=translate, scale=1.0, shear=shear, interpolation=nearest, fill=0.0)


@pytest.mark.parametrize("op", ["shear_x", "translate_x", "translate_y", "rotate"])
def test_event_ops_equal_torchvisions_nearest_zero_filled_transforms(op):
    augment = EventAugmentWide()
    frames = torch.poisson(torch.full((3, 2, 20, 24), 1.5))
    moved = 0
    for magnitude in torch.linspace(-augment.maximum(op), augment.maximum(op), augment.bins).tolist():
        out = augment.apply(frames, op, magnitude)
        assert torch.equal(out, torchvision_op(frames, op, magnitude))
        moved += not torch.equal(out, frames)
    assert moved > augment.bins // 2  # not both identities: most magnitudes move the frames


def test_event_augmentation_draws_each_op_uniformly_with_31_signed_magnitudes():
    augment, draws = EventAugmentWide(), 12_000
    samples = [augment.draw() for _ in range(draws)]
    counts = Counter(op for op, _ in samples)
    assert set(counts) == set(OPS) and all(within(counts[op], draws, 1 / 6) for op in OPS)
    for op, maximum in (("shear_x", 0.3), ("translate_x", 5.0), ("translate_y", 5.0), ("rotate", 30.0)):
        values = np.array([m for o, m in samples if o == op])
        bins = np.linspace(-maximum, maximum, 31)
        assert np.abs(values).max() == pytest.approx(maximum) and np.isin(values.round(5), bins.round(5)).all()
        assert len(np.unique(values.round(5))) == 31 and within((values > 0).sum(), len(values), 15 / 31, 6)


def test_event_augmentation_treats_all_frames_alike_and_keeps_counts_integer():
    augment = EventAugmentWide()
    frame = torch.poisson(torch.full((1, 2, 128, 128), 0.5))
    frames = frame.expand(16, -1, -1, -1).clone()  # 16 identical time steps
    for _ in range(300):
        out = augment(frames)
        assert out.shape == frames.shape and torch.equal(out, out[:1].expand_as(out))
        assert (out >= 0).all() and torch.equal(out, out.round()) and out.sum() <= frames.sum()


def test_cutout_erases_one_square_of_0_1_to_11_percent_every_time():
    augment = EventAugmentWide()
    frames = torch.ones(2, 2, 128, 128)
    pixels = 128 * 128
    areas = []
    for _ in range(200):
        out = augment.apply(frames, "cutout", 0.0)
        zero = (out == 0)[0, 0]
        side = int(zero.any(1).sum())
        assert side > 0  # p = 1: every cutout erases
        assert side == int(zero.any(0).sum()) and zero.sum() == side * side  # a square
        assert torch.equal(out == 0, zero.expand_as(out))  # the same square in every frame and polarity
        # torchvision rounds the side of an area drawn uniformly from 0.1-11% of the frame
        assert (math.sqrt(0.001 * pixels) - 0.5) ** 2 <= side * side <= (math.sqrt(0.11 * pixels) + 0.5) ** 2
        areas.append(side * side / pixels)
    assert min(areas) < 0.01 and max(areas) > 0.08  # the whole range is drawn (each side fails with p < 1e-7)


def test_recipe_augmentation_flips_then_applies_one_op(tmp_path):
    seen = []
    augment = EventAugment(flip=1.0, ops=lambda frames: seen.append(frames.clone()) or frames)
    frames = torch.arange(2 * 2 * 4 * 4, dtype=torch.float32).reshape(2, 2, 4, 4)
    augment(frames)
    assert torch.equal(seen[0], frames.flip(-1))


def test_event_augmentation_runs_3000_samples_of_the_recipes_frame_size():
    # The augmentation draws that would show a 1-in-1,000 failure, on frames of the recipe's 2 x 128 x 128 (two
    # time steps: every op treats all steps alike); the files on disk are exercised in test_recipe_pipelines.py.
    config = load_config(DVS_RECIPE)
    from spikformer.data.event_dataset import augment_from_config

    augment = augment_from_config(config, train=True, default_flip=0.5)
    assert (augment.flip, augment.roll, augment.drop) == (0.5, 0, 0.0)
    assert augment.ops == EventAugmentWide(translate=5.0)
    frames = torch.poisson(torch.full((2, 2, 128, 128), 0.3))
    total = frames.sum()
    for _ in range(3_000):
        out = augment(frames)
        assert out.shape == frames.shape and out.sum() <= total


# --- the CIFAR10-DVS split: string-sorted names, first ceil(90%) train --------------------------------------------


def test_cifar10dvs_split_follows_string_sorted_file_names(tmp_path):
    for name in CLASSES:  # the release's 1,000 recordings per class (empty: indexing reads no events)
        folder = tmp_path / "CIFAR10DVS" / name
        folder.mkdir(parents=True)
        for i in range(1000):
            (folder / f"cifar10_{name}_{i}.aedat4").touch()
    train, val = cifar10dvs_recordings(str(tmp_path), "train"), cifar10dvs_recordings(str(tmp_path), "val")
    assert (len(train.keys), len(val.keys)) == (9000, 1000)
    assert not set(train.keys) & set(val.keys)
    for name in CLASSES:
        numbers = sorted(int(k.rsplit("_", 1)[1]) for k in val.keys if k.startswith(f"{name}/"))
        # in string order the last 100 of 0..999 are 909, 91, 910-919, 92, 920-929, ... 99, 990-999
        assert numbers == sorted([909, *range(91, 100), *range(910, 1000)])
        assert len(set(numbers) - set(range(900, 1000))) == 9  # 9 per class (90 in all) differ from number order


# --- float16 autocast with loss scaling on GPUs, the CPU's own choice elsewhere ------------------------------------


def test_gpu_fp16_is_float16_on_cuda_and_auto_on_a_cpu(monkeypatch):
    assert engine.autocast_dtype(torch.device("cuda"), "gpu_fp16") is torch.float16  # the trainer scales the loss
    for native in (True, False):
        monkeypatch.setattr(engine, "cpu_has_native_bfloat16", lambda native=native: native)
        cpu = torch.device("cpu")
        assert engine.autocast_dtype(cpu, "gpu_fp16") is engine.autocast_dtype(cpu, "auto")


@pytest.mark.parametrize("amp, scaled", [("fp16", True), ("gpu_fp16", False)])  # gpu_fp16 on a CPU: no float16
def test_a_float16_autocast_trains_with_a_loss_scaler(amp, scaled, tmp_path):
    # With the test above: the recipes' gpu_fp16 on CUDA is float16 autocast, and float16 brings the GradScaler.
    write_cifar10(tmp_path / "cifar", per_batch=2, test=2)
    config = load_config(CIFAR_RECIPE, [
        f"train.amp={amp}", f"data.root={tmp_path / 'cifar'}", f"train.out_dir={tmp_path / 'run'}", "data.batch_size=4",
        "model.embed_dim=16", "model.depth=1", "model.num_heads=2", "data.num_workers=0", "train.progress=false",
        "train.tensorboard=false", "train.threads=1"])
    trainer = Trainer(config)
    assert (trainer.amp_dtype is torch.float16) == scaled and trainer.scaler.is_enabled() == scaled
    assert math.isfinite(trainer.train_one_epoch(0)["train_loss"])  # two steps through the scaler (or around it)
