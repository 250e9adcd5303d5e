"""The architecture resolved once: a config's model section (variant name + sparse overrides) becomes a
complete, explicit description, which the run folder's ``config.yaml`` and every own checkpoint then carry.

``resolve_config`` is the step a run takes when it starts (train, pretrain, eval, analyze ...): it fills every
architecture field of ``config.model`` from the variant table, then runs the checks that need the model
(divisibility, the stem's options, a build on the meta device), so that a bad config fails before any data is
read. A description that is already complete is taken as it is, without the table: an own checkpoint computes
the same function whatever the table says today, and loads even if its variant was renamed or removed.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from ..config import Config, ModelConfig, model_overrides
from ..errors import ConfigError
from ..registry import did_you_mean
from .registry import get_variant

# The constructor arguments that a description fixes; the variant table supplies any left None.
ARCHITECTURE_FIELDS = (
    "T", "num_classes", "img_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio", "patch_size",
    "qkv_bias", "attn_scale", "qk_pool", "stem",
)
# Everything ``create_model(name, **overrides)`` accepts besides the name: every ModelConfig field but the
# name and the weights to start from. A field with a default (not None) is always written out as it is.
_NOT_CONSTRUCTOR = ("name", "pretrained")
_DEFAULTS = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
             for f in dataclasses.fields(ModelConfig) if f.name not in _NOT_CONSTRUCTOR}
OVERRIDABLE = tuple(_DEFAULTS)
_DEFAULT_NEURON = ("lif", {})


def is_resolved(model: ModelConfig) -> bool:
    """True when every architecture field is set, so the variant table is not needed to build the model."""
    return all(getattr(model, key) is not None for key in ARCHITECTURE_FIELDS)


def resolve_model_kwargs(name: str, **overrides: Any) -> dict[str, Any]:
    """The complete constructor arguments of ``name`` with ``overrides`` applied (a value None keeps the
    variant's); unknown overrides are a ``TypeError`` naming the nearest option (Python's and timm's error for an
    unexpected keyword argument)."""
    unknown = [key for key in overrides if key not in OVERRIDABLE]
    if unknown:
        hints = ", ".join(f"{key!r}{did_you_mean(key, OVERRIDABLE)}" for key in unknown)
        raise TypeError(f"unknown model option {hints}; options: {', '.join(OVERRIDABLE)}")
    given = {key: value for key, value in overrides.items() if value is not None}
    if all(key in given for key in ARCHITECTURE_FIELDS):
        kwargs = {key: given[key] for key in ARCHITECTURE_FIELDS}  # complete: the table is not consulted
        kwargs["stem_options"] = dict(given.get("stem_options") or {})
    else:
        kwargs = get_variant(name).model_kwargs()
        for key, value in given.items():
            if key == "stem_options":
                kwargs[key] = {**kwargs[key], **value}
            elif key == "stem" and value != kwargs["stem"]:
                # Another stem's options mean nothing to this one: only the caller's own options are kept.
                kwargs[key], kwargs["stem_options"] = value, dict(given.get("stem_options") or {})
            elif key in ARCHITECTURE_FIELDS:
                kwargs[key] = value
    kwargs["stem_options"] = {**stem_option_defaults(kwargs["stem"]), **kwargs["stem_options"]}
    for key, default in _DEFAULTS.items():  # the fields no variant sets (drop path, backend, neuron ...)
        if key not in ARCHITECTURE_FIELDS and key != "stem_options":
            value = given.get(key, default)
            kwargs[key] = dict(value) if isinstance(value, dict) else value
    return kwargs


def stem_option_defaults(stem: str) -> dict[str, Any]:
    """The options a stem uses when given none, written out so that a description states its stem's layout
    (a later change of a stem's defaults then leaves stored descriptions, and their checkpoints, alone)."""
    from ..layers import _STEMS

    if stem == "scs":
        from ..layers import SCSOptions

        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in dataclasses.asdict(SCSOptions()).items()}
    try:
        builder = _STEMS.get(stem)
    except ValueError:
        return {}  # an unknown stem: the build reports it, naming the stems there are
    fixed = ("in_chans", "embed_dim", "patch_size", "lif_backend", "neuron", "neuron_options")
    return {name: p.default for name, p in inspect.signature(builder).parameters.items()
            if name not in fixed and p.default is not inspect.Parameter.empty}


def constructor_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Resolved kwargs as ``Spikformer(**...)`` takes them. The neuron is passed only when it is not the
    default LIF, so that the model class may still predate the ``neuron=`` keyword."""
    kwargs = dict(kwargs)
    if (kwargs.get("neuron"), kwargs.get("neuron_options") or {}) == _DEFAULT_NEURON:
        kwargs.pop("neuron", None)
        kwargs.pop("neuron_options", None)
    return kwargs


def resolve_model_config(model: ModelConfig, leave_num_classes_open: bool = False) -> ModelConfig:
    """``model`` with every architecture field written out (``ValueError`` for an unknown name).
    ``leave_num_classes_open`` keeps an unset ``num_classes`` unset, for a run that takes it from its data."""
    kwargs = resolve_model_kwargs(model.name, **model_overrides(model))
    if leave_num_classes_open and model.num_classes is None:
        kwargs["num_classes"] = None
    return dataclasses.replace(model, **kwargs)


def resolve_config(config: Config, leave_num_classes_open: bool = False) -> Config:
    """A copy of ``config`` whose model section is complete, after the checks that need the model; raises
    ``ConfigError`` naming the key to fix. Idempotent: a resolved config resolves to itself."""
    try:
        model = resolve_model_config(config.model, leave_num_classes_open)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"model: {error}") from None
    _check_architecture(model)
    _check_ssl_grid(config, model)
    for key in ("mean", "std"):
        values = getattr(config.data, key)
        if values is not None and len(values) != model.in_chans:
            raise ConfigError(f"data.{key} has {len(values)} values but the model takes {model.in_chans} input "
                              f"channels; give one per channel")
    return dataclasses.replace(config, model=model)


def _check_architecture(model: ModelConfig) -> None:
    if model.img_size % model.patch_size:
        raise ConfigError(f"model.img_size {model.img_size} is not divisible by model.patch_size {model.patch_size}")
    if model.embed_dim % model.num_heads:
        raise ConfigError(f"model.embed_dim {model.embed_dim} is not divisible by model.num_heads {model.num_heads}")
    from ..neurons import lif_backends

    backends = ["auto", *lif_backends()]
    if model.lif_backend not in backends:  # the LIF looks its backend up only in its first forward pass
        raise ConfigError(f"model.lif_backend must be one of {', '.join(backends)}, got {model.lif_backend!r}"
                          f"{did_you_mean(model.lif_backend, backends)}")
    _check_model_builds(model)


def _check_model_builds(model: ModelConfig) -> None:
    """Build the model on the meta device (no memory, milliseconds), so that every constructor check (stem,
    patch size, stem options, neuron) fails here, when the run starts, rather than later. One block stands
    for all: blocks are identical, so the depth cannot make a build fail."""
    import torch

    from .spikformer import Spikformer

    kwargs = resolve_model_kwargs(model.name, **model_overrides(model))
    kwargs["depth"] = min(kwargs["depth"], 1)
    if kwargs["num_classes"] is None:
        kwargs["num_classes"] = 1
    try:
        with torch.device("meta"):
            Spikformer(**constructor_kwargs(kwargs))
    except (ValueError, TypeError, RuntimeError, OverflowError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"model {model.name!r} cannot be built with these model.* options: {first_line}") from None


def _check_ssl_grid(config: Config, model: ModelConfig) -> None:
    grid = model.img_size // model.patch_size
    masked = round(grid * grid * config.ssl.mask_ratio)
    if not 0 < masked < grid * grid:
        raise ConfigError(f"ssl.mask_ratio {config.ssl.mask_ratio} masks {masked} of the {grid * grid} patches; it "
                          f"must hide at least one and leave at least one visible")
