"""A pytest plugin that runs timm's own ``tests/test_models.py`` on our variants alone (tests/test_timm_suite.py).

timm's test file chooses its models with ``timm.list_models(filter, exclude_filters, ...)``, evaluated when the
file is imported. This plugin imports spikformer (which registers our names) and wraps ``list_models`` so that
each call answers timm's own selection restricted to our names, with our names placed in two of timm's lists:

- ``NON_STD_FILTERS`` (recognised by its ``'vit_*'``): the transformers whose ``forward_features`` is not a
  ``[B, C, H, W]`` map. Ours returns ``[T, B, N, D]`` (tokens over time), so our models get timm's non-standard
  config test and, like the ViTs, not the feature-map test (``features_only`` is covered by our own tests).
- ``EXCLUDE_JIT_FILTERS`` (recognised by its ``'*naflex*'``): the models TorchScript cannot compile. Ours run
  custom autograd Functions (the surrogate gradient) and C kernels; TorchScript is deprecated in PyTorch, and
  models deploy through ``spikformer export``.

``SPIKFORMER_TIMM_SUITE_MODELS`` (comma-separated) narrows the run to some of our names.
"""

from __future__ import annotations

import fnmatch
import os

import timm
import timm.models

import spikformer  # noqa: F401  (registers every variant with timm)
from spikformer.models import list_models as our_models

OURS = [name for name in our_models()
        if not os.environ.get("SPIKFORMER_TIMM_SUITE_MODELS")
        or name in os.environ["SPIKFORMER_TIMM_SUITE_MODELS"].split(",")]
OUR_PATTERN = "spikformer_*"
_timm_list_models = timm.list_models


def _as_list(filters) -> list[str]:
    return [filters] if isinstance(filters, str) and filters else list(filters or [])


def _with_ours(filters, marker: str) -> list[str]:
    filters = _as_list(filters)
    return [*filters, OUR_PATTERN] if marker in filters else filters


def list_our_models(filter="", module="", pretrained=False, exclude_filters="", name_matches_cfg=False,
                    include_tags=None):
    """timm's ``list_models`` restricted to our names, with our names in NON_STD_FILTERS and EXCLUDE_JIT_FILTERS."""
    include = _with_ours(filter, "vit_*")
    exclude = _with_ours(_with_ours(exclude_filters, "vit_*"), "*naflex*")
    chosen = _timm_list_models(filter="", module=module, pretrained=pretrained, exclude_filters="",
                               name_matches_cfg=name_matches_cfg, include_tags=include_tags)
    chosen = [n for n in chosen if n in OURS]
    if include:
        chosen = [n for n in chosen if any(fnmatch.fnmatch(n, f) for f in include)]
    return [n for n in chosen if not any(fnmatch.fnmatch(n, f) for f in exclude)]


timm.list_models = timm.models.list_models = list_our_models


def pytest_collection_modifyitems(config, items):
    """Keep the tests parametrised over the listed models (drop those that name timm's own models)."""
    keep = [item for item in items
            if getattr(item, "callspec", None) and item.callspec.params.get("model_name") in OURS]
    config.hook.pytest_deselected(items=[item for item in items if item not in keep])
    items[:] = keep
