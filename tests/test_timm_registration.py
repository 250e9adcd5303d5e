"""``import spikformer`` makes every variant a timm model, whichever of the two a program imports first, and
without importing timm (or torch) itself: a program that never touches timm pays nothing for it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from spikformer.models import list_models

SRC = str(Path(__file__).resolve().parents[1] / "src")


def run_fresh(code: str) -> dict:
    """Run ``code`` in a fresh interpreter (our sources first) and return the JSON it prints."""
    done = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {SRC!r})\n{code}"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


REPORT = """
import json, timm
model = timm.create_model("spikformer_cifar_4_384", device="meta")
from spikformer.models import Spikformer
print(json.dumps({"names": timm.list_models("spikformer*"), "spikformer": isinstance(model, Spikformer)}))
"""


@pytest.mark.parametrize("order", ["import spikformer\nimport timm", "import timm\nimport spikformer",
                                   "import spikformer\nfrom timm.models import create_model"])
def test_import_spikformer_registers_every_variant_with_timm(order):
    seen = run_fresh(order + REPORT)
    assert sorted(seen["names"]) == list_models() and seen["spikformer"]


def test_import_spikformer_alone_imports_neither_timm_nor_torch():
    seen = run_fresh("import json, spikformer\nprint(json.dumps([m for m in ('timm', 'torch', 'spikformer.models') "
                     "if m in sys.modules]))")
    assert seen == []


@pytest.mark.parametrize("argv", [["--version"], ["configs"], ["train", "--config", "digitz"],
                                  ["pretrain", "--config", "digitz"]])
def test_commands_that_need_no_model_answer_without_importing_torch(argv):
    seen = run_fresh(f"import json\nfrom spikformer.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n"
                     f"    pass\nprint(json.dumps([m for m in ('timm', 'torch') if m in sys.modules]))")
    assert seen == []
