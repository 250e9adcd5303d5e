"""timm entry points: one thin function per registered variant, so ``timm.create_model(name)`` works."""

from __future__ import annotations

from timm.models import register_model

from .registry import create_model
from .spikformer import Spikformer

# timm passes its own bookkeeping arguments to entry points; they mean nothing for these models.
_TIMM_ONLY = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def _create(name: str, pretrained: bool, **kwargs) -> Spikformer:
    for key in _TIMM_ONLY:
        kwargs.pop(key, None)
    return create_model(name, pretrained=pretrained, **kwargs)


@register_model
def spikformer_cifar_4_256(pretrained: bool = False, **kwargs) -> Spikformer:
    return _create("spikformer_cifar_4_256", pretrained, **kwargs)


@register_model
def spikformer_cifar_2_384(pretrained: bool = False, **kwargs) -> Spikformer:
    return _create("spikformer_cifar_2_384", pretrained, **kwargs)


@register_model
def spikformer_cifar_4_384(pretrained: bool = False, **kwargs) -> Spikformer:
    return _create("spikformer_cifar_4_384", pretrained, **kwargs)


@register_model
def spikformer_8_384(pretrained: bool = False, **kwargs) -> Spikformer:
    return _create("spikformer_8_384", pretrained, **kwargs)


@register_model
def spikformer_6_512(pretrained: bool = False, **kwargs) -> Spikformer:
    return _create("spikformer_6_512", pretrained, **kwargs)


@register_model
def spikformer_8_512(pretrained: bool = False, **kwargs) -> Spikformer:
    return _create("spikformer_8_512", pretrained, **kwargs)


@register_model
def spikformer_10_512(pretrained: bool = False, **kwargs) -> Spikformer:
    return _create("spikformer_10_512", pretrained, **kwargs)


@register_model
def spikformer_8_768(pretrained: bool = False, **kwargs) -> Spikformer:
    return _create("spikformer_8_768", pretrained, **kwargs)


@register_model
def spikformer_dvs_2_256(pretrained: bool = False, **kwargs) -> Spikformer:
    return _create("spikformer_dvs_2_256", pretrained, **kwargs)


@register_model
def spikformer_dvs_2_256_qkpool(pretrained: bool = False, **kwargs) -> Spikformer:
    return _create("spikformer_dvs_2_256_qkpool", pretrained, **kwargs)
