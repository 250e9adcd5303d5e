"""Automatic image augmentation as the original recipes ran it: timm's RandAugment over a chosen op list, each
op behaving as it did under the Pillow of the original runs.

Op lists: timm's standard 15 ops (ImageNet recipe; ``inc1`` picks their increasing-severity versions) or
``CIFAR_RAND_OPS``, the five ops of the original CIFAR code (SPEC §2), given to timm's
``rand_augment_transform`` as its ``transforms`` list.

Posterize: timm's ``inc1`` RandAugment asks ``posterize`` for 0 bits when a sampled magnitude reaches its
maximum (10). Pillow <= 9 answered with a black image; Pillow >= 10 raises ``ValueError``, which would end a
run a few hundred images into its first ImageNet epoch. ``posterize`` below is Pillow 9's lookup table, defined
for 0 to 8 bits, and ``use_pillow9_posterize`` installs it in the ops of one augmentation object: nothing
global is patched, so timm's own table is untouched for other code.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image
from timm.data.auto_augment import (
    NAME_TO_OP,
    AugmentOp,
    augment_and_mix_transform,
    auto_augment_transform,
    rand_augment_transform,
)
from timm.data.auto_augment import posterize as timm_posterize
from timm.data.transforms import str_to_pil_interp

from ..errors import ConfigError
from ..registry import did_you_mean

# The original CIFAR code's own RandAugment list (SPEC §2): one colour op (Equalize) and four geometric ones; no
# posterize, solarize, colour, contrast, brightness or sharpness.
CIFAR_RAND_OPS = ("Equalize", "Rotate", "ShearX", "TranslateXRel", "TranslateYRel")


def posterize(img: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """Keep the top ``bits_to_keep`` bits of every channel of an ``L`` or ``RGB`` image, for 0 to 8 bits:
    Pillow 9's ``ImageOps.posterize`` (0 bits: a black image), which later Pillow refuses for 0 bits."""
    bits = max(0, min(8, int(bits_to_keep)))
    if bits == 8:
        return img
    mask = 0xFF & ~((1 << (8 - bits)) - 1)
    return img.point([value & mask for value in range(256)] * len(img.getbands()))


def augment_ops(transform) -> list[AugmentOp]:
    """Every timm ``AugmentOp`` inside a timm RandAugment, AugMix or AutoAugment object."""
    if hasattr(transform, "policy"):  # AutoAugment: sub-policies of ops
        return [op for sub_policy in transform.policy for op in sub_policy]
    return list(getattr(transform, "ops", []))


def use_pillow9_posterize(transform):
    """Route the posterize ops of a timm augmentation object to :func:`posterize`; returns ``transform``."""
    for op in augment_ops(transform):
        if op.aug_fn is timm_posterize:
            op.aug_fn = posterize
    return transform


def check_op_names(ops: Sequence[str]) -> None:
    unknown = [name for name in ops if name not in NAME_TO_OP]
    if unknown:
        hint = did_you_mean(unknown[0], NAME_TO_OP)
        raise ConfigError(f"data.rand_augment_ops: unknown op {unknown[0]!r}{hint}; timm's ops are "
                          f"{', '.join(sorted(NAME_TO_OP))}")


def build_auto_augment(policy: str, img_size: int, mean: Sequence[float], interpolation: str,
                       ops: Sequence[str] | None = None):
    """timm's augmentation for ``policy`` (``rand-...``, ``augmix-...`` or an AutoAugment name) with the
    parameters timm's ``create_transform`` gives it (translations relative to ``img_size``, fill = ``mean``),
    over ``ops`` when given (RandAugment only), with Pillow 9's posterize."""
    params = {"translate_const": int(img_size * 0.45),
              "img_mean": tuple(min(255, round(255 * x)) for x in mean)}
    if interpolation and interpolation != "random":
        params["interpolation"] = str_to_pil_interp(interpolation)
    if ops is not None:
        if not policy.startswith("rand"):
            raise ConfigError(f"data.rand_augment_ops applies to a RandAugment policy (rand-...), but "
                              f"data.auto_augment={policy!r}; remove data.rand_augment_ops or use a rand- policy")
        check_op_names(ops)
    try:
        if policy.startswith("rand"):
            transform = rand_augment_transform(policy, params, transforms=list(ops) if ops is not None else None)
        elif policy.startswith("augmix"):
            transform = augment_and_mix_transform(policy, {**params, "translate_pct": 0.3})
        else:
            transform = auto_augment_transform(policy, params)
    except (AssertionError, KeyError, ValueError) as error:
        raise ConfigError(f"data.auto_augment={policy!r} is not a timm augmentation policy ({error or 'unknown'}); "
                          f"e.g. rand-m9-mstd0.5-inc1") from None
    return use_pillow9_posterize(transform)
