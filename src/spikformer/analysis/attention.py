"""The spiking attention map ``Q K^T`` of one head of one SSA block, for one input."""

from __future__ import annotations

import torch
from torch import nn

from ..layers import SpikingSelfAttention


def attention_blocks(model: nn.Module) -> list[tuple[str, SpikingSelfAttention]]:
    """Every ``SpikingSelfAttention`` of ``model`` with its module name, in order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, SpikingSelfAttention)]


@torch.no_grad()
def attention_map(model: nn.Module, inputs: torch.Tensor, block: int = 0, head: int = 0) -> torch.Tensor:
    """``Q K^T`` of head ``head`` in SSA block ``block`` (counting from 0) for the first sample of ``inputs``:
    ``[T, N, N]`` integers, entry ``(t, i, j)`` the number of channels in which query token ``i`` and key
    token ``j`` both spike at step ``t``. SSA has no softmax; this is the map before it multiplies ``V``. For a
block with ``qk_pool`` the spikes are the max-pooled Q and K, the operands the forward multiplies."""
    blocks = attention_blocks(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no SpikingSelfAttention block to draw an attention map of")
    if not 0 <= block < len(blocks):
        raise ValueError(f"attention block {block} does not exist; the model has {len(blocks)} (0..{len(blocks) - 1})")
    _, ssa = blocks[block]
    if not 0 <= head < ssa.num_heads:
        raise ValueError(f"attention head {head} does not exist; block {block} has {ssa.num_heads} "
                         f"(0..{ssa.num_heads - 1})")
    captured: dict[str, torch.Tensor] = {}

    def keep(part: str):
        def hook(module, args, output):
            captured[part] = output

        return hook

    handles = [ssa.q.register_forward_hook(keep("q")), ssa.k.register_forward_hook(keep("k"))]
    was_training = model.training
    model.eval()
    try:
        model(inputs[:1])
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    # The operands the forward multiplies: after the token max-pool of the qk_pool variant, if any.
    q, k = (ssa.split_heads(t)[:, 0, head].float() for t in ssa.pool_qk(captured["q"], captured["k"]))  # [T, N, d]
    return q @ k.transpose(-2, -1)  # [T, N, N]
