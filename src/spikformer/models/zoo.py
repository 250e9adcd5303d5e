"""Building models: ``create_model``/``build_model`` and the timm entry points, all through timm's own builder.

Every registered variant is built by ``timm.models.build_model_with_cfg`` with its family's pretrained config
(input size and channels, mean/std, crop_pct, interpolation, ``first_conv``, ``classifier``, where weights
come from), so ``timm.data.resolve_model_data_config``, ``pretrained=True`` with a local file or a
``local-dir:``/``hf-hub:`` folder, ``checkpoint_path=``, ``num_classes=`` on load, ``features_only=True`` and
timm's ``device=``/``dtype=`` keywords work as for timm's own models (docs/timm.md). The entry points are
generated from the variant table: registering a variant registers its timm name.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .. import fast
from ..errors import ConfigError
from .official import accept_checkpoint_dialects, timm_filter_fn
from .registry import VARIANTS, Variant, get_variant
from .resolve import OVERRIDABLE, constructor_kwargs, resolve_model_config, resolve_model_kwargs
from .spikformer import Spikformer

# The statistics each family's data pipeline normalises with (spikformer.data: CIFAR's, timm's ImageNet
# defaults; event counts are not normalised).
_CIFAR_MEAN, _CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
_ORIGIN = "https://github.com/ZK-Zhou/spikformer"
log = logging.getLogger(__name__)


def _family_cfg(variant: Variant) -> dict[str, Any]:
    """timm's pretrained config of a variant. No weights are hosted (``url``/``hf_hub_id`` empty): pretrained
    weights come from a local file (``pretrained_cfg_overlay=dict(file=...)``), a ``local-dir:`` folder or a
    Hub id the user names."""
    channels, size = variant.in_chans, variant.img_size
    base = dict(url="", num_classes=variant.num_classes, input_size=(channels, size, size), pool_size=None,
                first_conv="patch_embed.stages.0.conv", classifier="head", origin_url=_ORIGIN,
                fixed_input_size=False)
    if variant.family == "cifar":
        return dict(base, mean=_CIFAR_MEAN, std=_CIFAR_STD, crop_pct=1.0, interpolation="bicubic",
                    paper_ids="arXiv:2209.15425")
    if variant.family == "dvs":  # event-count frames [B, T, 2, H, W]: no normalisation, no interpolation
        return dict(base, mean=(0.0,) * channels, std=(1.0,) * channels, crop_pct=1.0, interpolation="nearest",
                    paper_ids="arXiv:2209.15425")
    return dict(base, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, crop_pct=0.875,
                interpolation="bicubic", paper_ids="arXiv:2401.02020" if variant.family == "v2" else "arXiv:2209.15425")


# timm looks up an entry point's configs in its module's ``default_cfgs`` when it is registered.
default_cfgs: dict[str, Any] = {}


def _square_size(value: Any) -> Any:
    """timm records sizes as ``(H, W)`` (e.g. in a ``save_for_hf`` config.json); the model takes one int."""
    if isinstance(value, list | tuple):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"img_size {list(value)} is not square; Spikformer takes one size (H = W)")
        return int(value[0])
    return value


def _build(name: str, pretrained: bool = False, **kwargs: Any) -> Spikformer:
    """The one builder: resolve ``name`` + overrides into a complete description, then timm's builder."""
    kwargs.pop("pretrained_model_args", None)  # timm's record of a source's args: already merged into kwargs
    global_pool = kwargs.pop("global_pool", None)
    if global_pool not in (None, "avg", "token_time_avg"):
        raise ValueError(f"global_pool={global_pool!r}: Spikformer pools by the mean over tokens and time steps "
                         f"('avg'); other pooling does not apply to it")
    if "img_size" in kwargs:
        kwargs["img_size"] = _square_size(kwargs["img_size"])
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    timm_args = {key: kwargs.pop(key) for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir",
                                                  "features_only", "out_indices", "feature_cls") if key in kwargs}
    resolved = resolve_model_kwargs(name, **kwargs)
    if pretrained:
        _describe_source_file(name, timm_args)
    feature_cfg = dict(feature_cls="getter", out_indices=resolved["depth"])
    with torch.device(device) if device is not None else contextlib.nullcontext():
        try:
            model = build_model_with_cfg(
                Spikformer, name, pretrained, pretrained_filter_fn=timm_filter_fn, feature_cfg=feature_cfg,
                **timm_args, **constructor_kwargs(resolved),
            )
        except RuntimeError as error:
            if not str(error).startswith("No pretrained weights exist"):
                raise
            raise ValueError(
                f"no pretrained weights are hosted for {name}; name a file (pretrained_cfg_overlay=dict(file=PATH)), "
                f"a folder (timm.create_model('local-dir:PATH')) or a Hub id ('hf-hub:ORG/NAME'), or use "
                f"spikformer.from_pretrained(...)") from None
    if dtype is not None:
        model = model.to(dtype)
    target = getattr(model, "model", model)  # a features_only wrapper holds the model
    if pretrained and not timm_args.get("features_only"):
        _say_if_the_head_was_not_loaded(name, target.pretrained_cfg.get("num_classes"), resolved["num_classes"])
    fast.accelerate(target)  # the fused ops (spikformer.fast); FastPolicy.off() undoes them
    # What timm's save_for_hf writes into config.json: the complete description, so a folder rebuilds the
    # same architecture whatever the variant table says then.
    target._model_args = {k: v for k, v in resolved.items() if k != "drop_path_rate"}
    accept_checkpoint_dialects(target)
    return model


def _describe_source_file(name: str, timm_args: dict[str, Any]) -> None:
    """Fill in the pretrained config of a weights file (``pretrained_cfg_overlay=dict(file=...)``) from the file
    itself, where the overlay leaves them out: its head's class count (timm keeps the stored classifier only
    when it equals the model's ``num_classes``) and its first conv's input channels (from which timm adapts the
    first conv to the model's ``in_chans``)."""
    overlay = timm_args.get("pretrained_cfg_overlay")
    if not isinstance(overlay, dict) or not overlay.get("file"):
        return
    from ..checkpoint import read_model_state

    state, _ = read_model_state(overlay["file"])
    state = timm_filter_fn(state)
    overlay = dict(overlay)
    head = state.get("head.weight")
    overlay.setdefault("num_classes", int(head.shape[0]) if head is not None else 0)
    first_conv = state.get("patch_embed.stages.0.conv.weight")
    if first_conv is not None and "input_size" not in overlay:
        overlay["input_size"] = (int(first_conv.shape[1]), *_family_cfg(VARIANTS.get(name))["input_size"][1:])
    timm_args["pretrained_cfg_overlay"] = overlay


def _say_if_the_head_was_not_loaded(name: str, source_classes: int | None, model_classes: int) -> None:
    """timm drops the source's classifier when its class count differs from the model's: say so, in one line."""
    if source_classes is None or source_classes == model_classes:
        return
    source = f"the weights' classifier has {source_classes} classes" if source_classes else \
        "the weights carry no classifier"
    if model_classes == 0:
        log.warning(f"{name}: {source} and the model none (num_classes=0): the classifier is dropped")
    else:
        keep = f" (num_classes={source_classes} keeps the trained one)" if source_classes else ""
        log.warning(f"{name}: {source} and the model {model_classes} classes: its head is initialised afresh{keep}")


def create_model(name: str, pretrained: bool = False, **overrides: Any) -> Spikformer:
    """Build a registered variant, e.g. ``create_model("spikformer_8_512", embed_dim=64, depth=1)``.

    The same as ``timm.create_model(name, ...)`` for timm's keywords (``pretrained``, ``pretrained_cfg_overlay``,
    ``checkpoint_path``, ``features_only``, ``device``, ``dtype``); overrides are ``resolve.OVERRIDABLE``.
    """
    import timm

    get_variant(name)  # an unknown name is refused with the nearest ones, before timm's bare "Unknown model"
    return timm.create_model(name, pretrained=pretrained, **overrides)


def build_model(model_config) -> Spikformer:
    """Build the model a ``ModelConfig`` describes: a resolved description is taken field by field, a sparse
    one (a config file, a checkpoint written before descriptions were complete) is resolved first. Weights
    from ``model_config.pretrained`` are loaded by the caller (see ``spikformer.checkpoint``)."""
    from ..config import model_overrides

    try:
        resolved = resolve_model_config(model_config)
        return _build(resolved.name, **model_overrides(resolved))
    except ConfigError:
        raise
    except (ValueError, TypeError) as error:  # a config (or a checkpoint's stored one) the model refuses
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"model {model_config.name!r} cannot be built with these model.* options: "
                          f"{first_line}") from None


def register_timm_entry_point(name: str) -> Callable[..., Spikformer]:
    """Make ``timm.create_model(name)`` build the registered variant ``name`` (with its family's config)."""

    def entry_point(pretrained: bool = False, **kwargs: Any) -> Spikformer:
        return _build(name, pretrained, **kwargs)

    entry_point.__name__ = entry_point.__qualname__ = name
    entry_point.__module__ = __name__
    entry_point.__doc__ = f"{VARIANTS.get(name).description} ({VARIANTS.get(name).paper_accuracy})."
    default_cfgs.update(generate_default_cfgs({name: _family_cfg(VARIANTS.get(name))}))
    setattr(sys.modules[__name__], name, entry_point)
    return register_model(entry_point)


for _name in list(VARIANTS):
    register_timm_entry_point(_name)

__all__ = ["OVERRIDABLE", "build_model", "create_model", "register_timm_entry_point", *VARIANTS]
