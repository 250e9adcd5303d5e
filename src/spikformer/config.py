"""Run configuration: plain dataclasses, read from YAML, overridden by ``section.key=value`` strings.

A config flows one way (file -> overrides -> validated ``Config`` -> everything else) and is saved in every
run folder and inside every checkpoint, so a checkpoint describes itself.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .registry import did_you_mean


@dataclass
class ModelConfig:
    """The model's architecture. ``name`` picks a registered variant; a field left ``None`` takes the variant's
    value when the run starts (``spikformer.models.resolve_config``), and the run's saved ``config.yaml`` and
    checkpoints hold every field written out, so a model is always rebuilt from its own description."""

    # The registered variant (`spikformer models` lists them) whose values fill every field left null.
    name: str = "spikformer_cifar_4_256"
    # Time steps: each image is shown T times (event data: T frames per recording).
    T: int | None = None
    # Classes of the classifier head; null: the variant's (and a run takes it from its dataset).
    num_classes: int | None = None
    # Side of the square input image in pixels.
    img_size: int | None = None
    # Input channels (3 for RGB, 1 for grey, 2 for event polarities).
    in_chans: int | None = None
    # Width D of the tokens.
    embed_dim: int | None = None
    # Number of Spikformer blocks (SSA + MLP).
    depth: int | None = None
    # Attention heads of each SSA (embed_dim must be divisible by it).
    num_heads: int | None = None
    # Hidden width of each MLP as a multiple of embed_dim.
    mlp_ratio: float | None = None
    # Side of a patch in input pixels: the stem turns an image into (img_size / patch_size)^2 tokens.
    patch_size: int | None = None
    # Biases of the Q/K/V projections (the CIFAR family has them, ImageNet and DVS do not).
    qkv_bias: bool | None = None
    # The attention's scale s in (Q K^T) V * s (0.125; 0.25 for DVS).
    attn_scale: float | None = None
    # > 0: a 1-D max-pool of this (odd) width over the tokens of Q and K (the V1 paper's DVS128 Gesture
    # variant, spikformer_dvs_2_256_qkpool); 0: none.
    qk_pool: int | None = None
    # Stochastic depth: the probability of skipping a block's residual branch, growing to this value at the last
    # block.
    drop_path_rate: float = 0.0
    # The LIF kernel: auto (C on CPU, Triton on CUDA), torch, fused, c or triton; the same spikes.
    lif_backend: str = "auto"
    # The stem by name ("sps": V1's patch splitting, "scs": V2's convolutional stem) or by the import path of a
    # builder of your own (my_stems:build_stem, docs/neurons.md); None keeps the variant's.
    stem: str | None = None
    # Options of the stem (SCS: the keys of layers.SCSOptions); empty: the stem's defaults.
    stem_options: dict[str, Any] = field(default_factory=dict)
    # The spiking neuron of every layer: a registered name (lif, plif) or the import path of a SpikingNeuron
    # class of your own (my_neurons:IntegrateAndFire, docs/neurons.md).
    neuron: str = "lif"
    # Keyword arguments of the neuron (LIF: tau, v_threshold, v_reset, detach_reset, surrogate_alpha, backend).
    neuron_options: dict[str, Any] = field(default_factory=dict)
    # A checkpoint (own or official) whose weights initialise the model before training (fine-tuning).
    pretrained: str | None = None


@dataclass
class DataConfig:
    """The dataset, its loader, augmentation and mixing. Image keys follow timm's training script."""

    # The dataset by registered name (digits, digits-dvs, cifar10, cifar100, imagenet, folder, cifar10dvs,
    # dvs128gesture) or an importable path module:builder.
    name: str = "digits"
    # Folder of the dataset's files (null for the embedded digits and digits-dvs, which need none).
    root: str | None = None
    # Images per batch and process.
    batch_size: int = 64
    # Images per validation batch (null: batch_size).
    eval_batch_size: int | None = None
    # DataLoader worker processes (0: load in the main process); capped at the machine's CPU count.
    num_workers: int = 0
    # Fetch a missing dataset that can be downloaded (CIFAR) into data.root.
    download: bool = False
    # Random translation in pixels of the model's input (the digits' augmentation).
    shift: int = 2
    # Fraction of the training split to use (e.g. 0.1 for semi-supervised fine-tuning); taken per class.
    train_fraction: float = 1.0
    # --- event-camera datasets (cifar10dvs, dvs128gesture, digits-dvs); see docs/events.md ---
    # How a recording's events are integrated into model.T frames: "count" = equal event count per frame
    # (SpikingJelly's split_by="number", which the original CIFAR10-DVS code used), "time" = equal time bins.
    event_framing: str = "count"
    # Folder for the integrated frames (one compressed file per recording, so later epochs never re-parse
    # events). None: <data.root>/cache for the real datasets; memory for digits-dvs.
    cache_dir: str | None = None
    # Training augmentation of event frames. Probability of a horizontal flip; None = the dataset's default
    # (0.5 for CIFAR10-DVS; 0 for DVS128 Gesture, whose left/right classes a flip would swap, and digits-dvs).
    event_flip: float | None = None
    # Random circular shift (roll) of up to this many pixels in x and y; None = 5 pixels at 128x128, scaled
    # to the model's input size.
    event_roll: int | None = None
    # Probability of dropping each event (binomial thinning of the frame counts); 0 = off.
    event_drop: float = 0.0
    # After flip/roll/drop: "wide" = the original CIFAR10-DVS code's per-sample op, one of identity, ShearX,
    # TranslateX, TranslateY, Rotate, Cutout (data/event_augment.py); "none" = no further op.
    event_augment: str = "none"
    # Images per optimizer step over all processes (the paper's batch). Null: batch_size x processes x
    # train.accum_steps. Set, it fixes the accumulation for any number of processes:
    # accum_steps = global_batch_size / (batch_size x processes), which must be a whole number.
    global_batch_size: int | None = None
    # --- image augmentation (timm.data.create_transform); used by cifar10, cifar100, imagenet, folder ---
    auto_augment: str | None = None  # a RandAugment string such as "rand-m9-n1-mstd0.4-inc1" (timm's --aa)
    # The RandAugment op list by timm's op names (null: timm's standard 15), e.g. the original CIFAR code's five
    # [Equalize, Rotate, ShearX, TranslateXRel, TranslateYRel] (data/augment_ops.py).
    rand_augment_ops: list[str] | None = None
    # Resampling filter of resizes and crops.
    interpolation: str = "bicubic"
    # Training crop: RandomResizedCrop's area and aspect ranges (null: timm's 0.08-1.0 and 3/4-4/3).
    scale: tuple[float, float] | None = None
    # Training crop: RandomResizedCrop's aspect-ratio range (null: 3/4-4/3).
    ratio: tuple[float, float] | None = None
    # Evaluation: resize to img_size / crop_pct, then centre-crop (null: 1.0 for CIFAR, 0.875 for folders).
    crop_pct: float | None = None
    # Probability of a horizontal flip of a training image.
    hflip: float = 0.5
    color_jitter: float = 0.4  # timm applies it only when auto_augment is off
    random_erasing: float = 0.0  # probability (timm's --reprob)
    # What fills an erased rectangle: per-pixel noise, per-channel noise or zeros (timm's --remode).
    random_erasing_mode: str = "pixel"
    # Rectangles erased per image at most (timm's --recount).
    random_erasing_count: int = 1
    # Where erasing applies: "batch" = on the normalised training batch after mixup/cutmix (timm's prefetch
    # loader, which the original recipes used); "sample" = in each image's transform, before mixing.
    random_erasing_stage: str = "batch"
    # Normalisation (null: the dataset's own statistics); one value per input channel.
    mean: list[float] | None = None
    # Normalisation's standard deviation, one value per input channel (null: the dataset's own).
    std: list[float] | None = None
    # --- mixing (timm.data.Mixup), on when mixup_alpha or cutmix_alpha > 0; the loss becomes soft-target CE ---
    # Mixup's Beta(alpha, alpha) (0: off).
    mixup_alpha: float = 0.0
    # CutMix's Beta(alpha, alpha) (0: off).
    cutmix_alpha: float = 0.0
    mixup_prob: float = 1.0  # probability that a batch is mixed at all
    mixup_switch_prob: float = 0.5  # probability of cutmix instead of mixup when both are on
    # Mixing of a whole batch with one draw, per pair or per element.
    mixup_mode: str = "batch"
    # Mixing stops from this epoch on (0-based; 0: never), as the CIFAR recipe's "off after epoch 200".
    mixup_off_epoch: int = 0


@dataclass
class OptimConfig:
    """The optimizer and the learning-rate schedule."""

    # The optimizer.
    name: str = "adamw"
    # Peak learning rate (after warm-up).
    lr: float = 5e-4
    # Decoupled weight decay (AdamW) or L2 (SGD); biases and norms are exempt.
    weight_decay: float = 0.06
    # AdamW's moment coefficients.
    betas: tuple[float, float] = (0.9, 0.999)
    # AdamW's denominator epsilon.
    eps: float = 1e-8
    # SGD's momentum.
    momentum: float = 0.9
    # The learning-rate schedule after warm-up: cosine to min_lr, or constant.
    schedule: str = "cosine"
    # The schedule advances every optimizer step ("step") or, like the original timm trainer, once per
    # epoch ("epoch").
    schedule_unit: str = "step"
    # Epochs of linear warm-up from warmup_lr to lr (fractions allowed).
    warmup_epochs: float = 0.0
    # Learning rate at the start of the warm-up.
    warmup_lr: float = 1e-5
    # Learning rate at the end of the cosine.
    min_lr: float = 1e-5
    # Extra epochs at ``min_lr`` after the cosine (timm's cooldown); the run lasts epochs + cooldown.
    cooldown_epochs: int = 0
    # Label smoothing of the cross-entropy (unused when mixup/cutmix give soft targets).
    label_smoothing: float = 0.1
    # Clip the gradients' global norm to this value (null: no clipping).
    clip_grad: float | None = None
    # Layer-wise learning-rate decay for fine-tuning: each block deeper from the head gets this factor (null:
    # off).
    layer_decay: float | None = None


@dataclass
class TrainConfig:
    """The run: its length, folder, device, precision, checkpoints and display."""

    # Training epochs (the schedule's length; the run lasts epochs + optim.cooldown_epochs).
    epochs: int = 10
    # The run folder: config.yaml, metrics.csv, checkpoints, logs.
    out_dir: str = "runs/default"
    # Seed of the weights' initialisation, the data order and augmentation.
    seed: int = 0
    # auto (a GPU when there is one), cpu, cuda, cuda:N or mps.
    device: str = "auto"
    # "auto": bfloat16 autocast on CPU and on GPUs that support it, float16 with loss scaling otherwise.
    # "gpu_fp16": float16 autocast with loss scaling on GPUs (the original recipes), "auto" elsewhere.
    amp: str = "auto"
    # Batches whose gradients are accumulated per optimizer step (see data.global_batch_size).
    accum_steps: int = 1
    # Validate every this many epochs (and always after the last).
    eval_every: int = 1
    # Also write last.safetensors every this many optimizer steps (0: at epoch ends only).
    save_every_steps: int = 0
    # Continue a run: a checkpoint path, or auto (the run folder's last.safetensors if there is one).
    resume: str | None = None
    # Allow starting a new run in a folder that already holds one (its files are replaced).
    overwrite: bool = False
    # Ask PyTorch for deterministic kernels (slower; bit-identical reruns on one machine).
    deterministic: bool = False
    # At a non-finite loss: stop the run (saving nothing new) or skip the step.
    nan_policy: str = "stop"
    # Keep an exponential moving average of the weights with this decay (e.g. 0.9998); evaluated and saved
    # beside them (null: off).
    ema_decay: float | None = None
    # Run the model through torch.compile.
    compile: bool = False
    # Recompute each block in the backward pass instead of storing its activations (model.set_grad_checkpointing):
    # for the biggest models; same gradients, about one more forward pass of the blocks per step.
    checkpointing: bool = False
    # Synchronise BatchNorm statistics over all processes of a distributed run.
    sync_bn: bool = False
    # BatchNorm normalises with its running statistics and leaves them unchanged (its affine weights still
    # train): for fine-tuning with small batches, and for comparing runs whose per-process batches differ.
    freeze_bn: bool = False
    # CPU threads of PyTorch (null: PyTorch's default).
    threads: int | None = None
    # Show progress bars.
    progress: bool = True
    # Batches between the plain progress lines printed when the output is not a terminal (display only).
    log_interval: int = 10
    # Write TensorBoard logs into the run folder (when tensorboard is installed).
    tensorboard: bool = True


@dataclass
class SSLConfig:
    """Masked pre-training (``spikformer pretrain``); supervised training ignores this section.

    Defaults follow the closest published practice for spiking encoders (docs/v2.md): half of the patches
    masked and a T=1 encoder as in Spike-driven Transformer V3's MAE variant, its 4-block decoder of width 256,
    and MAE's loss on per-patch normalised pixels.
    """

    # Fraction of the patches (of the token grid) hidden from the encoder and reconstructed.
    mask_ratio: float = 0.5
    # Time steps of the spiking encoder while pre-training (replaces model.T; fine-tuning may use another T).
    T: int = 1
    # Tokens the SSA blocks see: "all" (hidden ones empty, as SparK and SimMIM: the encoder must fill them
    # in) or "visible" (as MAE: the decoder fills them in).
    encoder_tokens: str = "all"
    # The non-spiking decoder: transformer blocks of this width over all tokens (0 blocks: a per-token
    # projection, only with encoder_tokens "all").
    decoder_dim: int = 256
    # Transformer blocks of the decoder (see decoder_dim).
    decoder_depth: int = 4
    # Attention heads of each decoder block.
    decoder_heads: int = 8
    # Normalise each target patch by its own mean and std before the MSE (MAE's norm_pix_loss).
    norm_pix_loss: bool = True
    # Validation images shown in the run folder's reconstructions.png (0: no figure).
    num_visualize: int = 8


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ssl: SSLConfig = field(default_factory=SSLConfig)


_CHOICES = {
    ("data", "event_framing"): ("count", "time"),
    ("optim", "name"): ("adamw", "sgd"),
    ("optim", "schedule"): ("cosine", "constant"),
    ("optim", "schedule_unit"): ("step", "epoch"),
    ("train", "amp"): ("auto", "bf16", "fp16", "off", "gpu_fp16"),
    ("train", "nan_policy"): ("stop", "skip"),
    ("ssl", "encoder_tokens"): ("all", "visible"),
    ("data", "interpolation"): ("bicubic", "bilinear", "nearest", "random"),
    ("data", "random_erasing_mode"): ("pixel", "rand", "const"),
    ("data", "random_erasing_stage"): ("batch", "sample"),
    ("data", "event_augment"): ("none", "wide"),
    ("data", "mixup_mode"): ("batch", "pair", "elem"),
}
_MINIMUM = {
    ("model", "T"): 1, ("model", "num_classes"): 1, ("model", "img_size"): 1, ("model", "in_chans"): 1,
    ("model", "embed_dim"): 8, ("model", "depth"): 0, ("model", "num_heads"): 1, ("model", "patch_size"): 1,
    ("model", "qk_pool"): 0,
    ("data", "batch_size"): 1, ("data", "eval_batch_size"): 1, ("data", "num_workers"): 0,
    ("data", "shift"): 0, ("data", "event_roll"): 0, ("data", "global_batch_size"): 1, ("data", "color_jitter"): 0.0,
    ("data", "random_erasing_count"): 1, ("data", "mixup_alpha"): 0.0, ("data", "cutmix_alpha"): 0.0,
    ("data", "mixup_off_epoch"): 0, ("optim", "weight_decay"): 0.0, ("optim", "warmup_epochs"): 0,
    ("optim", "warmup_lr"): 0.0, ("optim", "min_lr"): 0.0, ("optim", "cooldown_epochs"): 0,
    ("optim", "momentum"): 0.0,
    ("train", "epochs"): 1, ("train", "accum_steps"): 1, ("train", "eval_every"): 1,
    ("train", "save_every_steps"): 0, ("train", "threads"): 1, ("train", "log_interval"): 1,
    ("ssl", "T"): 1, ("ssl", "decoder_dim"): 1, ("ssl", "decoder_depth"): 0, ("ssl", "decoder_heads"): 1,
    ("ssl", "num_visualize"): 0,
}
# Strictly positive: a zero here trains nothing (lr), divides by zero (eps) or clips every gradient to zero.
_POSITIVE = {("optim", "lr"), ("optim", "eps"), ("optim", "clip_grad"), ("model", "mlp_ratio"), ("model", "attn_scale"),
             ("data", "train_fraction"), ("optim", "layer_decay"), ("data", "crop_pct")}
# Within [0, 1]; those also in _BELOW_ONE must be < 1 (a drop rate or decay of 1 freezes or erases everything).
_OPEN_UNIT_INTERVAL = {("data", "train_fraction"), ("data", "event_flip"), ("data", "event_drop"),
                       ("optim", "label_smoothing"), ("optim", "layer_decay"),
                       ("train", "ema_decay"), ("model", "drop_path_rate"), ("optim", "momentum"),
                       ("ssl", "mask_ratio"),
                       ("data", "hflip"), ("data", "crop_pct"), ("data", "random_erasing"), ("data", "mixup_prob"),
                       ("data", "mixup_switch_prob")}
_BELOW_ONE = {("data", "event_drop"), ("optim", "label_smoothing"), ("train", "ema_decay"),
              ("model", "drop_path_rate")}


def section_names() -> list[str]:
    return [f.name for f in dataclasses.fields(Config)]


def setting_choices(section: str, key: str) -> tuple[str, ...]:
    """The values a string setting accepts (e.g. ``("train", "amp")``), for CLIs that offer the same choices."""
    if (section, key) not in _CHOICES:
        raise KeyError(f"{section}.{key} is not a setting with a fixed set of values")
    return _CHOICES[(section, key)]


def _section_class(section: str) -> type:
    return typing.get_type_hints(Config)[section]


def _suggest(word: Any, options: list[str]) -> str:
    return did_you_mean(word, options, cutoff=0.4)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (converting ints to floats, lists to tuples)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if tp is Any:
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(f"{where} must be a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is list:
        (arg,) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return [_coerce(v, arg, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        _check_plain_tree(value, where, ())
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        _check_int64(value, where)
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads "5e-4" (no dot) as a string; people write it that way, so accept it.
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{where} must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {_type_name(tp)}")


INT64_BOUNDS = (-(2**63), 2**63 - 1)  # what torch, NumPy and the checkpoint's JSON readers hold exactly
MAX_OPTION_DEPTH = 16  # stem and neuron options are flat keyword arguments; a few levels leave room


def _check_int64(value: int, where: str) -> None:
    if not INT64_BOUNDS[0] <= value <= INT64_BOUNDS[1]:
        digits = len(str(abs(value)))
        shown = str(value) if digits <= 30 else f"{str(value)[:30]}... ({digits} digits)"
        raise ConfigError(f"{where} must be an integer of at most 64 bits (between -2^63 and 2^63 - 1), got {shown}")


def _check_plain_tree(value: Any, where: str, parents: tuple[int, ...]) -> None:
    """A free-form option value (``stem_options``, ``neuron_options``) holds plain YAML data a constructor can
    take: string keys, finite numbers that fit 64 bits, strings, booleans, lists and mappings, and no
    structure that contains itself (a recursive YAML alias)."""
    if isinstance(value, dict | list | tuple):
        if id(value) in parents:
            raise ConfigError(f"{where} refers back to itself (a recursive YAML alias); write the value out")
        if len(parents) >= MAX_OPTION_DEPTH:
            raise ConfigError(f"{where} nests more than {MAX_OPTION_DEPTH} levels deep")
        items = value.items() if isinstance(value, dict) else ((f"[{i}]", v) for i, v in enumerate(value))
        for key, item in items:
            if isinstance(value, dict) and not isinstance(key, str):
                raise ConfigError(f"{where} has the key {key!r}; option names are strings")
            inner = f"{where}{key}" if isinstance(value, list | tuple) else f"{where}.{key}"
            _check_plain_tree(item, inner, (*parents, id(value)))
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{where} must be a finite number, got {value!r}")
    elif isinstance(value, int) and not isinstance(value, bool):
        _check_int64(value, where)
    elif value is not None and not isinstance(value, str | bool):
        raise ConfigError(f"{where} must be plain YAML data (a number, string, list or mapping), got a "
                          f"{type(value).__name__}")


def _check_range(section: str, key: str, value: Any) -> None:
    where = f"{section}.{key}"
    if value is None:
        return
    choices = _CHOICES.get((section, key))
    if choices and value not in choices:
        raise ConfigError(f"{where} must be one of {', '.join(choices)}, got {value!r}{_suggest(value, choices)}")
    if not isinstance(value, int | float) or isinstance(value, bool):
        return
    low = _MINIMUM.get((section, key))
    if low is not None and value < low:
        raise ConfigError(f"{where} must be >= {low}, got {value!r}")
    if (section, key) in _POSITIVE and value <= 0:
        raise ConfigError(f"{where} must be > 0, got {value!r}")
    if (section, key) in _OPEN_UNIT_INTERVAL and not 0.0 <= value <= 1.0:
        raise ConfigError(f"{where} must be between 0 and 1, got {value!r}")
    if (section, key) in _BELOW_ONE and value >= 1.0:
        raise ConfigError(f"{where} must be below 1, got {value!r}")


def _build_section(section: str, values: dict[str, Any]) -> Any:
    cls = _section_class(section)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if not isinstance(key, str) or key not in hints:
            raise ConfigError(f"unknown key {section}.{key}{_suggest(key, list(hints))}; "
                              f"valid keys of '{section}': {', '.join(hints)}")
        choices = _CHOICES.get((section, key), ())
        if isinstance(value, bool) and ("on" if value else "off") in choices:
            value = "on" if value else "off"  # YAML 1.1 reads an unquoted off/on as a boolean
        kwargs[key] = _coerce(value, hints[key], f"{section}.{key}")
        _check_range(section, key, kwargs[key])
    return cls(**kwargs)


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Validate a nested mapping ``{section: {key: value}}`` into a ``Config``."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of sections ({', '.join(section_names())}), got {raw!r}")
    sections = section_names()
    for name, values in raw.items():
        if name not in sections:
            raise ConfigError(f"unknown config section {name!r}{_suggest(str(name), sections)}; "
                              f"sections: {', '.join(sections)}")
        if values is not None and not isinstance(values, dict):
            raise ConfigError(f"config section {name!r} must be a mapping of keys to values, got {values!r}")
    built = {name: _build_section(name, raw.get(name) or {}) for name in sections}
    config = Config(**built)
    _check_consistency(config)
    return config


def _check_consistency(config: Config) -> None:
    """Cross-field checks that a single field's type cannot express. Checks that need the model's resolved
    architecture (divisibility, the stem, the channel count) run when a run starts, in
    ``spikformer.models.resolve_config``: this module imports nothing of the package above it."""
    if config.optim.min_lr > config.optim.lr:
        raise ConfigError(f"optim.min_lr ({config.optim.min_lr}) is larger than optim.lr ({config.optim.lr})")
    if config.optim.warmup_epochs > config.train.epochs:
        raise ConfigError(f"optim.warmup_epochs ({config.optim.warmup_epochs}) exceeds train.epochs "
                          f"({config.train.epochs})")
    if not all(0.0 <= beta < 1.0 for beta in config.optim.betas):
        raise ConfigError(f"optim.betas must both be in [0, 1), got {list(config.optim.betas)}")
    _check_device(config.train.device)
    _check_ssl(config.ssl)
    for where, value in (("train.out_dir", config.train.out_dir), ("data.root", config.data.root),
                         ("train.resume", config.train.resume), ("model.pretrained", config.model.pretrained)):
        if value is not None and (not value.strip() or "\0" in value):
            raise ConfigError(f"{where} must be a path (or null), got {value!r}")
    _check_data_pipeline(config.data)


def _check_data_pipeline(data: DataConfig) -> None:
    if data.std is not None and any(v <= 0 for v in data.std):
        raise ConfigError(f"data.std must be positive, got {data.std}")
    for key in ("scale", "ratio"):
        bounds = getattr(data, key)
        if bounds is not None and not 0 < bounds[0] <= bounds[1]:
            raise ConfigError(f"data.{key} must be [low, high] with 0 < low <= high, got {list(bounds)}")
    mixing = data.mixup_alpha > 0 or data.cutmix_alpha > 0
    if mixing and data.batch_size % 2:
        raise ConfigError(f"mixup/cutmix pairs the samples of a batch, so data.batch_size must be even "
                          f"(got {data.batch_size})")


def _check_device(name: str) -> None:
    # Only the spelling is checked here: whether a CUDA device exists is a property of the machine, and a
    # checkpoint trained on a GPU must still load its config on a CPU-only machine.
    if name == "auto":
        return
    import torch

    try:
        torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"train.device {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None


def _check_ssl(ssl: SSLConfig) -> None:
    if ssl.decoder_dim % ssl.decoder_heads:
        raise ConfigError(f"ssl.decoder_dim {ssl.decoder_dim} is not divisible by ssl.decoder_heads "
                          f"{ssl.decoder_heads}")
    if ssl.decoder_depth == 0 and ssl.encoder_tokens == "visible":
        raise ConfigError("ssl.decoder_depth=0 leaves hidden patches nothing to be predicted from when "
                          "ssl.encoder_tokens=visible; use decoder_depth >= 1 or encoder_tokens=all")


def model_overrides(model: ModelConfig) -> dict[str, Any]:
    """The fields of ``model`` that are passed to ``create_model`` (everything set except name/pretrained)."""
    values = dataclasses.asdict(model)
    values.pop("name")
    values.pop("pretrained")
    for key in ("stem_options", "neuron_options"):
        if not values[key]:
            values.pop(key)
    return {key: value for key, value in values.items() if value is not None}


def config_to_dict(config: Config) -> dict[str, Any]:
    raw = dataclasses.asdict(config)
    return _plain(raw)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


_FLOAT_WITHOUT_DOT = re.compile(r"^[-+]?\d+[eE][-+]?\d+$")


def parse_override(text: str) -> tuple[str, str, Any]:
    """``"section.key=value"`` -> ``(section, key, value)``; the value is read as YAML (``1e-3``, ``true``,
    ``[1, 2]``, ``null``)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value (e.g. train.epochs=5)")
    path, _, value_text = text.partition("=")
    parts = path.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"override {text!r}: the key must be section.key with section one of "
                          f"{', '.join(section_names())} (e.g. model.embed_dim=64)")
    try:
        value = yaml.load(value_text, Loader=_BoundedSafeLoader) if value_text.strip() else None
    except YAMLInputTooLarge as error:
        raise ConfigError(f"override {text[:80]!r}: {error}") from None
    except yaml.YAMLError:
        value = value_text
    if isinstance(value, str) and _FLOAT_WITHOUT_DOT.match(value.strip()):
        value = float(value)  # YAML 1.1 reads "5e-3" (no dot) as a string; everyone means the number
    return parts[0], parts[1], value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of sections ({', '.join(section_names())}), got {raw!r}")
    for name, values in raw.items():
        if values is not None and not isinstance(values, dict):
            raise ConfigError(f"config section {name!r} must be a mapping of keys to values, got {values!r}")
    raw = {name: dict(values or {}) for name, values in raw.items()}
    for text in overrides:
        section, key, value = parse_override(text)
        raw.setdefault(section, {})[key] = value
    return raw


# Bounds of a YAML document. A config has a few dozen keys, uses an alias or two, and nests 3-4 levels; a
# "billion laughs" file (aliases of lists of aliases) is a 1 KB document that expands to billions of nodes, which
# validation, error messages and yaml.safe_dump would all walk.
MAX_YAML_ALIASES = 100
MAX_YAML_NODES = 100_000  # counted with every alias expanded
MAX_YAML_DEPTH = 50
MAX_YAML_INT_DIGITS = 40  # 64-bit integers have 20 digits; Python refuses to even parse 4,300


class YAMLInputTooLarge(yaml.YAMLError):
    """A YAML document beyond the bounds above."""


class _BoundedSafeLoader(yaml.SafeLoader):
    """PyYAML's safe loader (plain data only) that refuses documents with more than ``MAX_YAML_ALIASES``
    aliases, more than ``MAX_YAML_NODES`` nodes once the aliases are expanded, or deeper than
    ``MAX_YAML_DEPTH``, before any Python object is built from them."""

    def compose_node(self, parent, index):
        self._aliases = getattr(self, "_aliases", 0) + self.check_event(yaml.AliasEvent)
        if self._aliases > MAX_YAML_ALIASES:
            raise YAMLInputTooLarge(f"the YAML uses more than {MAX_YAML_ALIASES} aliases (*name); a config needs "
                                    f"a few at most (refused as a possible 'billion laughs' document)")
        self._depth = getattr(self, "_depth", 0) + 1
        if self._depth > MAX_YAML_DEPTH:
            raise YAMLInputTooLarge(f"the YAML nests more than {MAX_YAML_DEPTH} levels deep")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self):
        node = super().compose_document()
        sizes: dict[int, int] = {}

        def expanded(item) -> int:  # the node count with aliases expanded, each shared node counted once
            if sizes.get(id(item)) == -1:  # reached again while its own children are being counted
                raise YAMLInputTooLarge("an alias (*name) refers back to the node that contains it (a recursive "
                                        "YAML alias, which no config value can be)")
            if id(item) not in sizes:
                sizes[id(item)] = -1
                children = item.value if isinstance(item, yaml.SequenceNode) else (
                    [part for pair in item.value for part in pair] if isinstance(item, yaml.MappingNode) else [])
                sizes[id(item)] = min(1 + sum(expanded(child) for child in children), MAX_YAML_NODES + 1)
            return sizes[id(item)]

        if node is not None and expanded(node) > MAX_YAML_NODES:
            raise YAMLInputTooLarge(f"the YAML expands to more than {MAX_YAML_NODES} values once its aliases are "
                                    f"resolved (refused as a 'billion laughs' document)")
        return node

    def construct_yaml_int(self, node):
        digits = sum(character.isdigit() for character in str(node.value))
        if digits > MAX_YAML_INT_DIGITS:
            raise YAMLInputTooLarge(f"an integer of {digits} digits (a config value fits 64 bits: at most 20)")
        return super().construct_yaml_int(node)


_BoundedSafeLoader.add_constructor("tag:yaml.org,2002:int", _BoundedSafeLoader.construct_yaml_int)


class _StrictSafeLoader(_BoundedSafeLoader):
    """PyYAML's safe loader (plain data only: no tags that build Python objects), bounded, that also refuses a
    key given twice in one mapping, which would otherwise silently drop the first value."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may be overridden by explicit keys
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"found the key {key!r} twice",
                    key_node.start_mark)
            if isinstance(key, Hashable):
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config with a safe loader: plain data only, so no file can construct objects or run code."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config {str(path)!r} is a directory; pass a YAML file (the configs/ folder has examples)")
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist (the configs/ folder has examples)")
    try:
        raw = yaml.load(path.read_text(), Loader=_StrictSafeLoader)  # a SafeLoader subclass: plain data only
    except yaml.constructor.ConstructorError as error:
        if error.problem and "could not determine a constructor" in error.problem:
            raise ConfigError(f"config file {str(path)!r} uses a YAML tag that would build a Python object "
                              f"({error.problem.strip()}, {error.problem_mark}); configs hold plain values "
                              f"only") from None
        raise ConfigError(f"config file {str(path)!r}: {error}") from None
    except YAMLInputTooLarge as error:
        raise ConfigError(f"config file {str(path)!r} is refused: {error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {error}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(path)!r} is not a text file") from None
    except OSError as error:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {error.strerror or error}") from None
    return raw or {}


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read ``path`` (a file, or the name of a packaged config such as ``digits``; or start from the defaults),
    apply ``section.key=value`` overrides, validate."""
    from .config_files import config_path

    raw = read_yaml(config_path(path)) if path is not None else {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections, got {type(raw).__name__}")
    return config_from_dict(apply_overrides(raw, list(overrides)))


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))


def format_config(config: Config) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False).rstrip()
