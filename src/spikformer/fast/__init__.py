"""The fast path, applied from outside the model: one call turns a plain model into a fast one.

The model files (``layers``, ``models``, ``neurons``) hold the papers' math in plain PyTorch; that path is the
oracle every fused op here is tested against. :func:`accelerate` swaps each module of a built model for its
fast twin (:mod:`spikformer.fast.modules`, same parameters and state dict) under a :class:`FastPolicy`:

- SSA's spike products on the CPU kernel (:mod:`spikformer.fast.attention`);
- the stem's max-pool without int64 indices, on the CPU kernel where it applies (:class:`SpikeMaxPool2d`);
- channels-last stem images on the CPU, and the cheap stem convs recomputed in backward;
- spikes saved for backward at 1 bit each, checkpointed blocks' inputs as int8 (:mod:`spikformer.fast.memory`).

``create_model`` (and so the run loop and the benchmarks) returns accelerated models; ``accelerate(model,
policy=FastPolicy.off())`` gives the plain computation back. The compiled kernels live in
:mod:`spikformer.fast.kernels`; :func:`status` says whether they built, and why not.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["FastPolicy", "accelerate", "status"]

_LAZY = {"FastPolicy": ".policy", "accelerate": ".policy", "status": ".policy"}


def __getattr__(name: str) -> Any:
    # The neurons import this package's kernels; the modules here import the model, which imports the
    # neurons: loading the model side only when it is asked for keeps that a chain, not a cycle.
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
