"""Every named variant as data: the variant table, ``register_variant``, ``list_models``, ``get_variant``.

A variant fixes its family's structure (stem, bias choices, attention scale) and its default sizes. The table
is consulted only to *resolve* a config into a complete architecture (``resolve.py``); a resolved description
(which every run folder and own checkpoint stores) never looks at it again, so editing a row here changes new
models only. Each name is also a timm entry point (``zoo.py`` generates them from this table).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..registry import Registry


@dataclass(frozen=True)
class Variant:
    """One registered model: its constructor arguments and what the paper reports for it."""

    family: str
    embed_dim: int
    depth: int
    num_heads: int
    img_size: int
    patch_size: int
    in_chans: int
    num_classes: int
    T: int
    qkv_bias: bool
    attn_scale: float
    mlp_ratio: float = 4.0
    stem: str = "sps"
    stem_options: dict[str, Any] = field(default_factory=dict)
    qk_pool: int = 0  # max-pool width over tokens after Q and K (0: none)
    paper_accuracy: str = ""
    description: str = ""

    def model_kwargs(self) -> dict[str, Any]:
        kwargs = asdict(self)
        for key in ("family", "paper_accuracy", "description"):
            kwargs.pop(key)
        return kwargs


def _cifar(depth: int, dim: int, heads: int, accuracy: str) -> Variant:
    return Variant("cifar", dim, depth, heads, 32, 4, 3, 10, 4, qkv_bias=True, attn_scale=0.125,
                   paper_accuracy=accuracy, description=f"CIFAR family, {depth} blocks x {dim}")


def _imagenet(depth: int, dim: int, heads: int, accuracy: str) -> Variant:
    return Variant("imagenet", dim, depth, heads, 224, 16, 3, 1000, 4, qkv_bias=False, attn_scale=0.125,
                   paper_accuracy=accuracy, description=f"ImageNet family, {depth} blocks x {dim}")


VARIANTS: Registry[Variant] = Registry("model", listing="`spikformer models` lists all", suggestions=3)
for _name, _variant in {
    # CIFAR 4-256's head count is not stated in the sources (it changes no parameter count); we use 8.
    "spikformer_cifar_4_256": _cifar(4, 256, 8, "CIFAR-10 93.94 / CIFAR-100 75.96 (T=4)"),
    "spikformer_cifar_2_384": _cifar(2, 384, 12, "CIFAR-10 94.80 / CIFAR-100 76.95 (T=4)"),
    "spikformer_cifar_4_384": _cifar(4, 384, 12, "CIFAR-10 95.19 / CIFAR-100 77.86 (T=4; 95.51/78.21 at 400 ep)"),
    "spikformer_8_384": _imagenet(8, 384, 12, "ImageNet 70.24 (T=4)"),
    "spikformer_6_512": _imagenet(6, 512, 8, "ImageNet 72.46 (T=4)"),
    "spikformer_8_512": _imagenet(8, 512, 8, "ImageNet 73.38 (T=4)"),
    "spikformer_10_512": _imagenet(10, 512, 8, "ImageNet 73.68 (T=4)"),
    "spikformer_8_768": _imagenet(8, 768, 12, "ImageNet 74.81 (T=4)"),
    "spikformer_dvs_2_256": Variant(
        "dvs", 256, 2, 16, 128, 16, 2, 10, 16, qkv_bias=False, attn_scale=0.25,
        paper_accuracy="CIFAR10-DVS 78.9 (T=10) / 80.9 (T=16); DVS128 Gesture 96.9 / 98.3",
        description="neuromorphic family, 2 blocks x 256, event frames of 2 polarities",
    ),
    "spikformer_dvs_2_256_qkpool": Variant(
        "dvs", 256, 2, 8, 128, 16, 2, 11, 16, qkv_bias=False, attn_scale=0.25, qk_pool=3,
        paper_accuracy="DVS128 Gesture 98.3 (T=16; 97.9 without the Q/K max-pool)",
        description="the DVS variant as the paper trained DVS128 Gesture: 8 heads, 1-D max-pool after Q and K",
    ),
}.items():
    VARIANTS.add(_name, _variant)


def register_variant(name: str, variant: Variant) -> None:
    """Add a variant (used by the V2 family and by users who define their own); ``timm.create_model(name)``
    then builds it too."""
    from .zoo import register_timm_entry_point  # zoo imports this table, so it is looked up at call time

    VARIANTS.add(name, variant)
    register_timm_entry_point(name)


def list_models(pattern: str = "") -> list[str]:
    return sorted(name for name in VARIANTS if pattern in name)


def get_variant(name: str) -> Variant:
    return VARIANTS.get(name)
