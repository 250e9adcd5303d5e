"""docs/tutorial.md is executed as written: its Python blocks, in order, in an empty folder."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "tutorial.md"


def test_the_tutorial_trains_a_model_that_fires_and_learns_then_analyzes_and_exports(tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnxscript")
    pytest.importorskip("nir")
    pytest.importorskip("matplotlib")
    blocks = re.findall(r"```python\n(.*?)```", TUTORIAL.read_text(), flags=re.S)
    assert len(blocks) == 5
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()  # the tutorial calls logging.basicConfig: keep it from outliving the test
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    namespace: dict = {}
    exec(compile("\n".join(blocks), str(TUTORIAL), "exec"), namespace)
    captured = capsys.readouterr()
    assert re.search(r"top-1 \d+\.\d% on 360 test images", captured.out)
    assert "busiest spiking layer" in captured.out
    # It learns (chance is 10%; 59.7% with torch 2.14, 36.9% with the floor's torch 2.6, whose kernels round
    # differently over these five short epochs) and every spiking layer fires.
    assert namespace["scores"]["top1"] >= 25.0
    rates = namespace["report"].firing_rates
    assert min(rates.values()) > 0.001, {layer: rate for layer, rate in rates.items() if rate <= 0.001}
    run = tmp_path / "runs" / "tutorial"
    assert (run / "firing_rates.png").read_bytes()[:4] == b"\x89PNG"
    assert (run / "model.onnx").stat().st_size > 0
    assert (run / "model.nir").stat().st_size > 0
    import onnx

    props = {p.key: p.value for p in onnx.load(str(run / "model.onnx")).metadata_props}
    assert json.loads(props["mean"]) == [0.3] and props["T"] == "2"
    # The exporter's own INFO messages (dozens of rewrite notes) stay out of the tutorial's log.
    assert "onnx_ir" not in captured.err and "initializer" not in captured.err + captured.out
