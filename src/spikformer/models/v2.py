"""The Spikformer V2 family: V1's blocks behind the Spiking Convolutional Stem, registered by name.

The paper gives an 8-layer model (80.38% ImageNet top-1, T=4, supervised) and a 172M-parameter 16-layer model
(81.10% at T=1 after masked pre-training), not their widths. We register the 8-layer model at V1's three
ImageNet widths and the 16-layer one at width 896 (14 heads of 64), the head-dim-64 width closest to 172M:
169,729,272 parameters with the default SCS (-1.3%; width 912 would give 175.8M, +2.2%). ``docs/v2.md``
lists every count; ``tests/test_v2_models.py`` pins them.
"""

from __future__ import annotations

from .registry import Variant, register_variant


def _v2(depth: int, dim: int, heads: int, T: int, accuracy: str) -> Variant:
    return Variant("v2", dim, depth, heads, 224, 16, 3, 1000, T, qkv_bias=False, attn_scale=0.125, stem="scs",
                   paper_accuracy=accuracy,
                   description=f"Spikformer V2 (SCS stem), {depth} blocks x {dim}")


V2_VARIANTS = {
    "spikformer_v2_8_384": _v2(8, 384, 12, 4, "ImageNet 80.38 (T=4, 8 layers; width not stated)"),
    "spikformer_v2_8_512": _v2(8, 512, 8, 4, "ImageNet 80.38 (T=4, 8 layers; width not stated)"),
    "spikformer_v2_8_768": _v2(8, 768, 12, 4, "ImageNet 80.38 (T=4, 8 layers; width not stated)"),
    "spikformer_v2_16_896": _v2(16, 896, 14, 1, "ImageNet 81.10 (T=1, 172M, after masked pre-training)"),
}
for _name, _variant in V2_VARIANTS.items():
    register_variant(_name, _variant)  # and its timm entry point

