"""docs/tutorial.md is executed as written: its Python blocks, in order, in an empty folder."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "tutorial.md"


def test_the_tutorial_trains_analyzes_and_exports(tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnxscript")
    pytest.importorskip("nir")
    blocks = re.findall(r"```python\n(.*?)```", TUTORIAL.read_text(), flags=re.S)
    assert len(blocks) == 5
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()  # the tutorial calls logging.basicConfig: keep it from outliving the test
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    namespace: dict = {}
    exec(compile("\n".join(blocks), str(TUTORIAL), "exec"), namespace)
    out = capsys.readouterr().out
    assert re.search(r"top-1 \d+\.\d% on 360 test images", out)
    assert "busiest spiking layer" in out
    assert (tmp_path / "runs" / "tutorial" / "model.onnx").stat().st_size > 0
    assert (tmp_path / "runs" / "tutorial" / "model.nir").stat().st_size > 0
