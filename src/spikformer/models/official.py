"""Checkpoint dialects of the original research code, converted to this package's parameter names.

The original modules name layers ``proj_conv{,1,2,3}``/``proj_bn*`` (stem), ``{q,k,v,proj}_{linear|conv}``
and ``fc{1,2}_{linear|conv}`` with ``_bn`` partners, under ``block.{i}``. CIFAR code uses ``nn.Linear``
(weights ``[out, in]``), ImageNet code 1x1 ``Conv1d``/``Conv2d`` (``[out, in, 1]``/``[out, in, 1, 1]``), DVS
code ``Conv1d``. All are the same linear map, so a weight is reshaped to ``[out, in]``. Modules the forward
pass never uses (``norm1``, ``norm2``, ``norm``, ``pos_embed``) are dropped: they cannot change an output.
"""

from __future__ import annotations

import re

import torch

_STEM_INDEX = {"": 0, "1": 1, "2": 2, "3": 3}
_UNUSED = re.compile(r"^(block\.\d+\.norm[12]\.|norm\.|pos_embed$)")
_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^patch_embed\.proj_conv(\d?)\.(.+)$"), "patch_embed.stages.{stem}.conv.{1}"),
    (re.compile(r"^patch_embed\.proj_bn(\d?)\.(.+)$"), "patch_embed.stages.{stem}.bn.{1}"),
    (re.compile(r"^patch_embed\.rpe_conv\.(.+)$"), "patch_embed.rpe.conv.{0}"),
    (re.compile(r"^patch_embed\.rpe_bn\.(.+)$"), "patch_embed.rpe.bn.{0}"),
    (re.compile(r"^block\.(\d+)\.attn\.(q|k|v|proj)_(?:linear|conv)\.(.+)$"), "blocks.{0}.attn.{1}.linear.{2}"),
    (re.compile(r"^block\.(\d+)\.attn\.(q|k|v|proj)_bn\.(.+)$"), "blocks.{0}.attn.{1}.bn.{2}"),
    (re.compile(r"^block\.(\d+)\.mlp\.(fc[12])_(?:linear|conv)\.(.+)$"), "blocks.{0}.mlp.{1}.linear.{2}"),
    (re.compile(r"^block\.(\d+)\.mlp\.(fc[12])_bn\.(.+)$"), "blocks.{0}.mlp.{1}.bn.{2}"),
]


def is_official_state_dict(state_dict: dict[str, torch.Tensor]) -> bool:
    return any(key.startswith(("block.", "patch_embed.proj_conv")) for key in state_dict)


def strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Remove a DataParallel/DDP ``module.`` (or torch.compile ``_orig_mod.``) prefix from every key."""
    if state_dict and all(key.startswith(prefix) for key in state_dict):
        return {key[len(prefix):]: value for key, value in state_dict.items()}
    return state_dict


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: torch.nn.Module | None = None
                         ) -> dict[str, torch.Tensor]:
    """Rename and reshape an original-code state dict to this package's names (other keys pass through)."""
    for prefix in ("module.", "_orig_mod."):
        state_dict = strip_prefix(state_dict, prefix)
    if not is_official_state_dict(state_dict):
        return dict(state_dict)
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if _UNUSED.match(key):
            continue
        out[_rename(key)] = _as_linear_weight(key, value)
    return out


def _rename(key: str) -> str:
    for pattern, template in _RULES:
        match = pattern.match(key)
        if match:
            groups = match.groups()
            stem = _STEM_INDEX.get(groups[0], 0) if key.startswith("patch_embed.proj_") else 0
            return template.format(*groups, stem=stem)
    return key


def _as_linear_weight(key: str, value: torch.Tensor) -> torch.Tensor:
    # 1x1 Conv1d/Conv2d weights of the attention and MLP are Linear weights with trailing unit dimensions.
    if key.endswith("weight") and re.search(r"_(conv)\.weight$", key) and key.startswith("block."):
        return value.reshape(value.shape[0], value.shape[1])
    return value


def timm_filter_fn(state_dict: dict[str, torch.Tensor], model: torch.nn.Module | None = None
                   ) -> dict[str, torch.Tensor]:
    """timm's ``pretrained_filter_fn``: any file this package reads, as the model's plain state dict.

    Takes the ``model.``-prefixed weights of an own training checkpoint (``best.safetensors`` before it became
    a plain state dict, ``last.safetensors``), leaving its ``ema.``/optimizer entries, then the original code's
    names through ``checkpoint_filter_fn``. A plain state dict passes unchanged.
    """
    if any(key.startswith("model.") for key in state_dict) and not any(key.startswith("patch_embed.")
                                                                       for key in state_dict):
        state_dict = {key[len("model."):]: value for key, value in state_dict.items() if key.startswith("model.")}
    return checkpoint_filter_fn(state_dict, model)


def accept_checkpoint_dialects(model: torch.nn.Module) -> None:
    """Make ``model.load_state_dict`` (and so timm's ``checkpoint_path=``/``load_checkpoint``) accept what
    ``timm_filter_fn`` accepts: official checkpoints and ``model.``-prefixed training checkpoints."""
    model.register_load_state_dict_pre_hook(_filter_in_place)


def _filter_in_place(module, state_dict, prefix, *args) -> None:
    if prefix:  # only the model's own (top-level) load sees the whole dict
        return
    filtered = timm_filter_fn(dict(state_dict), module)
    if filtered.keys() != state_dict.keys():
        state_dict.clear()
        state_dict.update(filtered)
