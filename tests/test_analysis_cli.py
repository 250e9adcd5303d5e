"""``spikformer analyze`` and ``spikformer energy-table``: the JSON schema, the CSV, the figures, the errors."""

import csv
import json

import pytest

from spikformer.analysis import paper_first_conv_energy_mj
from spikformer.checkpoint import save_model
from spikformer.cli import main
from spikformer.config import config_to_dict, load_config
from spikformer.models import build_model

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY = ["model.embed_dim=16", "model.depth=1", "model.num_heads=2"]


def assert_valid_png(path):
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    height, width = imread(path).shape[:2]
    assert height > 50 and width > 50


@pytest.fixture
def digits_checkpoint(tmp_path):
    config = load_config("configs/digits.yaml", [*TINY, "model.img_size=16"])
    path = tmp_path / "tiny.safetensors"
    save_model(path, build_model(config.model), config_to_dict(config))
    return path


def test_analyze_random_weights_writes_json_csv_and_figures(tmp_path, capsys):
    out = tmp_path / "analysis"
    code = main(["analyze", "--model", "spikformer_cifar_4_256", *TINY, "--batches", "2", "--batch-size", "2",
                 "--out", str(out), "--json", str(tmp_path / "report.json"), "--attn-head", "1"])
    assert code == 0
    doc = json.loads((tmp_path / "report.json").read_text())
    assert doc["model"] == "spikformer_cifar_4_256" and doc["T"] == 4
    static = doc["static"]  # as NeuroBench's Footprint and ConnectionSparsity define them
    assert static["footprint_bytes"] > 4 * static["parameters"] > 0  # float32 parameters and the BN buffers
    assert static["connection_sparsity"] == 0.0  # freshly initialised: no zero weight
    for layer in doc["layers"]:
        assert {"name", "kind", "firing_rate", "flops", "sops", "energy_mj"} <= set(layer)
        assert layer["kind"] in ("MAC", "AC")
        if layer["kind"] == "MAC":
            assert layer["firing_rate"] is None and layer["sops"] == 0
        else:
            assert layer["firing_rate"] >= 0
            full_fan_out = layer["firing_rate"] * 4 * layer["flops"]  # a conv's padded borders reach fewer
            assert layer["sops"] <= full_fan_out * (1 + 1e-12)
            if not layer["name"].endswith(".conv"):
                assert layer["sops"] == pytest.approx(full_fan_out)
    assert [layer["kind"] for layer in doc["layers"]][0] == "MAC"  # random pixels into the first conv
    total = doc["total"]
    assert {"flops", "sops", "energy_mj", "ann_energy_mj"} <= set(total)
    assert total["flops"] == pytest.approx(sum(layer["flops"] for layer in doc["layers"]))
    assert total["sops"] == pytest.approx(sum(layer["sops"] for layer in doc["layers"]))
    assert total["energy_mj"] == pytest.approx(sum(layer["energy_mj"] for layer in doc["layers"]))
    assert total["ann_energy_mj"] == pytest.approx(4.6e-9 * total["flops"])

    with (out / "layers.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [row["name"] for row in rows[:-1]] == [layer["name"] for layer in doc["layers"]]
    assert rows[-1]["name"] == "total"
    with (out / "firing_rates.csv").open() as f:
        lif_rows = list(csv.DictReader(f))
    assert len(lif_rows) == 12 and {"t0", "t3"} <= set(lif_rows[0])
    for name in ("firing_rates.png", "raster.png", "attention.png"):
        assert_valid_png(out / name)
    printed = capsys.readouterr().out
    assert "blocks.0.attn.q@kT" not in printed and "blocks.0.attn.kT@v" in printed  # N=64 > d=8
    assert "as an ANN" in printed
    assert "connection sparsity 0.0000" in printed


def test_analyze_a_checkpoint_on_its_own_dataset(digits_checkpoint, tmp_path):
    code = main(["analyze", "--checkpoint", str(digits_checkpoint), "--batches", "1", "--batch-size", "8",
                 "--out", str(tmp_path), "--json", str(tmp_path / "r.json"), "--no-figures",
                 "--raster-layer", "patch_embed.rpe.lif"])
    assert code == 0
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["input"] == "val" and doc["samples"] == 8 and doc["weights"] == str(digits_checkpoint)
    assert doc["layers"][0]["name"] == "patch_embed.stages.0.conv" and doc["layers"][0]["kind"] == "MAC"
    assert not list(tmp_path.glob("*.png"))


def test_analyze_names_the_fix_for_an_unknown_raster_layer(capsys):
    code = main(["analyze", "--model", "spikformer_cifar_4_256", *TINY, "--batches", "1", "--batch-size", "1",
                 "--no-figures", "--raster-layer", "blocks.0.attn.q"])
    assert code == 2
    assert "did you mean 'blocks.0.attn.q.lif'" in capsys.readouterr().err


def test_analyze_rejects_an_attention_head_the_model_does_not_have(capsys, tmp_path):
    code = main(["analyze", "--model", "spikformer_cifar_4_256", *TINY, "--batches", "1", "--batch-size", "1",
                 "--out", str(tmp_path), "--attn-head", "5"])
    assert code == 2
    assert "heads 0..1" in capsys.readouterr().err


def test_energy_table_in_markdown_with_the_paper_constant(tmp_path, capsys):
    code = main(["energy-table", "--models", "cifar_4", *TINY, "model.img_size=16", "--markdown",
                 "--paper-constant", "--json", str(tmp_path / "table.json")])
    assert code == 0
    printed = capsys.readouterr().out
    lines = [line for line in printed.splitlines() if line.startswith("|")]
    assert lines[0].startswith("| model | params | T |") and len(lines) == 2 + 2
    rows = json.loads((tmp_path / "table.json").read_text())
    assert [row["model"] for row in rows] == ["spikformer_cifar_4_256", "spikformer_cifar_4_384"]
    for row in rows:
        assert row["T"] == 4 and row["params"] > 0 and row["paper_constant"]
        assert row["energy_mj"] == pytest.approx(0.9e-9 * row["sops"] + paper_first_conv_energy_mj())
        assert row["ratio"] == pytest.approx(row["ann_energy_mj"] / row["energy_mj"])


def test_energy_table_rows_of_checkpoints(digits_checkpoint, capsys):
    assert main(["energy-table", "--checkpoint", str(digits_checkpoint)]) == 0
    table = capsys.readouterr().out
    assert "spikformer_cifar_4_256" in table and "1x16x16" in table and str(digits_checkpoint) in table


def test_energy_table_refuses_overrides_of_another_section(capsys):
    assert main(["energy-table", "--models", "cifar_4_256", "train.epochs=1"]) == 2
    assert "model.key=value" in capsys.readouterr().err


def test_demo_prints_synaptic_operations_and_energy(tmp_path, capsys):
    code = main(["demo", *TINY, "model.img_size=16", "train.epochs=1", "data.train_fraction=0.05",
                 f"train.out_dir={tmp_path}", "train.progress=false", "train.tensorboard=false"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "synaptic operations, energy" in printed and "as an ANN" in printed
