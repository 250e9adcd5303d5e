"""Where ``spikformer analyze`` writes by default, and the public plotting API of ``spikformer.analysis``."""

from __future__ import annotations

import pytest
import torch

import spikformer.analysis
from spikformer.checkpoint import save_model
from spikformer.cli import main
from spikformer.config import config_to_dict, load_config
from spikformer.models import build_model

TINY = ["model.embed_dim=16", "model.depth=1", "model.num_heads=2", "model.img_size=16"]


def test_analyze_writes_into_the_checkpoints_run_folder_so_runs_do_not_overwrite_each_other(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config("digits", TINY)
    for run in ("runs/a", "runs/b"):
        (tmp_path / run).mkdir(parents=True)
        save_model(tmp_path / run / "best.safetensors", build_model(config.model), config_to_dict(config))
        assert (
            main(
                [
                    "analyze",
                    "--checkpoint",
                    f"{run}/best.safetensors",
                    "--batches",
                    "1",
                    "--batch-size",
                    "4",
                    "--no-figures",
                ]
            )
            == 0
        )
    for run in ("runs/a", "runs/b"):
        assert (tmp_path / run / "analysis" / "best_val" / "layers.csv").is_file()
        assert (tmp_path / run / "analysis" / "best_val" / "firing_rates.csv").is_file()
    assert not (tmp_path / "runs" / "analyze").exists()


def test_figures_are_drawn_through_the_public_analysis_api(tmp_path):
    pytest.importorskip("matplotlib")
    assert {"plot_firing_rates", "plot_raster", "plot_attention_map"} <= set(spikformer.analysis.__all__)
    rates = {"stem.lif": 0.2, "blocks.0.attn.q.lif": 0.1}
    paths = [
        spikformer.analysis.plot_firing_rates(rates, tmp_path / "rates.png"),
        spikformer.analysis.plot_raster((torch.rand(4, 2, 32) < 0.2).float(), tmp_path / "raster.png", "q"),
        spikformer.analysis.plot_attention_map(torch.rand(4, 16, 16), tmp_path / "attention.png", torch.rand(1, 8, 8)),
    ]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
