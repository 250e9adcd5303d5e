"""Optional dependencies, imported on first use with an error that names the extra to install.

Usage: ``plt = require("matplotlib.figure", "drawing figures")`` raises ``MissingExtraError`` ("drawing figures
needs the matplotlib package: pip install 'spikformer[analysis]'") when matplotlib is not installed.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingExtraError

# The top-level package -> the extra of pyproject.toml that installs it.
EXTRAS = {"matplotlib": "analysis", "tonic": "events", "aedat": "events", "onnx": "export", "onnxscript": "export",
          "onnxruntime": "export", "nir": "export", "tensorboard": "logging"}


def install_hint(package: str) -> str:
    """``pip install 'spikformer[analysis]'`` for ``matplotlib`` (or a plain ``pip install NAME``)."""
    extra = EXTRAS.get(package.split(".")[0])
    return f"pip install 'spikformer[{extra}]'" if extra else f"pip install {package.split('.')[0]}"


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` for ``purpose``, or raise ``MissingExtraError`` naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        missing = (error.name or module).split(".")[0]
        raise MissingExtraError(f"{purpose} needs the {missing} package: {install_hint(missing)}") from None
