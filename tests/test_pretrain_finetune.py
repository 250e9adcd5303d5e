"""Pre-train -> save -> fine-tune on the digits, through the commands a user runs (tiny model, one epoch)."""

from __future__ import annotations

import logging
import sys
import types
from pathlib import Path

import pytest
import torch

from spikformer.checkpoint import read_checkpoint
from spikformer.cli import main
from spikformer.config import load_config
from spikformer.errors import CheckpointError, ConfigError
from spikformer.train import Trainer

TINY = ["model.embed_dim=16", "model.num_heads=2", "model.depth=1", "model.img_size=16", "train.epochs=1",
        "train.progress=false", "data.eval_batch_size=120", "optim.warmup_epochs=0"]
TINY_SSL = ["ssl.decoder_dim=16", "ssl.decoder_heads=2", "ssl.decoder_depth=1", "ssl.num_visualize=2",
            "data.train_fraction=0.05", "data.batch_size=16"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A one-epoch pre-training run folder (module-scoped: several tests read it)."""
    out = tmp_path_factory.mktemp("pretrain")
    code = main(["pretrain", "--config", "configs/digits_v2_pretrain.yaml", *TINY, *TINY_SSL,
                 f"train.out_dir={out}"])
    assert code == 0
    return out


def finetune_config(tmp_path: Path, encoder: Path | str | None, *extra: str):
    return load_config("configs/digits_v2_finetune.yaml", [
        *TINY, "model.T=2", f"model.pretrained={encoder}" if encoder else "model.pretrained=null",
        f"train.out_dir={tmp_path / 'finetune'}", *extra])


def test_pretraining_writes_the_encoder_the_metrics_and_the_figure(pretrained):
    for name in ("config.yaml", "metrics.csv", "last.safetensors", "encoder.safetensors", "reconstructions.png"):
        assert (pretrained / name).stat().st_size > 0, name
    assert (pretrained / "reconstructions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tensors, metadata = read_checkpoint(pretrained / "encoder.safetensors")
    assert metadata["kind"] == "pretrained_encoder"
    assert metadata["config"]["model"]["T"] == 1  # the encoder was pre-trained at ssl.T
    assert metadata["config"]["ssl"]["mask_ratio"] == 0.5
    assert any(key.startswith("patch_embed.") for key in tensors)  # a plain state dict of the encoder
    assert not any("decoder" in key or key.startswith("head.") for key in tensors)
    rows = (pretrained / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,lr,train_loss,val_loss") and len(rows) == 2


def test_finetuning_loads_the_encoder_drops_the_decoder_and_starts_a_fresh_head(pretrained, tmp_path):
    encoder, _ = read_checkpoint(pretrained / "encoder.safetensors")
    trainer = Trainer(finetune_config(tmp_path, pretrained / "encoder.safetensors"))
    state = trainer.model.state_dict()
    body = [key for key in state if not key.startswith("head.")]
    assert body and all(torch.equal(state[key], encoder[key]) for key in body)
    assert trainer.model.T == 2  # fine-tuned at another number of time steps than pre-trained (1)
    assert trainer.model.head.out_features == 10
    assert not any("decoder" in key for key in state)
    result = trainer.fit()
    assert 0.0 <= result["best_top1"] <= 100.0
    assert (tmp_path / "finetune" / "best.safetensors").exists()


def test_finetuning_uses_layer_decay_and_drop_path_from_the_config(tmp_path):
    trainer = Trainer(finetune_config(tmp_path, None, "model.depth=2", "optim.layer_decay=0.75"))
    scales = sorted({group["lr_scale"] for group in trainer.optimizer.param_groups})
    assert scales == pytest.approx([0.75**3, 0.75**2, 0.75, 1.0])  # stem, block 0, block 1, head
    assert [block.drop_path.drop_prob for block in trainer.model.blocks] == pytest.approx([0.0, 0.1])


def test_finetuning_from_the_pretraining_state_names_the_encoder_file(pretrained, tmp_path):
    with pytest.raises(CheckpointError, match="encoder.safetensors"):
        Trainer(finetune_config(tmp_path, pretrained / "last.safetensors"))


@pytest.mark.parametrize("changes, message", [
    (["model.depth=2"], "lacks 39 of the model's backbone tensors"),  # block 1 would start untrained
    (["model.stem=sps", "model.stem_options={}"], "shape mismatches"),
    (["model.stem_options={depths: [2, 2, 2, 1]}"], "lacks 6 of the model.s backbone tensors"),  # default SCS
])
def test_an_encoder_of_another_model_is_refused_not_half_loaded(pretrained, tmp_path, changes, message):
    with pytest.raises(CheckpointError, match=message):
        Trainer(finetune_config(tmp_path, pretrained / "encoder.safetensors", *changes))


def test_reconstruct_command_renders_input_mask_reconstruction(pretrained, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["reconstruct", "--checkpoint", str(pretrained / "last.safetensors"), "--out", str(out),
                 "--num", "3"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "3 images" in capsys.readouterr().out


def test_reconstruct_command_refuses_an_encoder_only_file(pretrained, tmp_path, capsys):
    assert main(["reconstruct", "--checkpoint", str(pretrained / "encoder.safetensors"),
                 "--out", str(tmp_path / "x.png")]) == 2
    assert "holds no decoder" in capsys.readouterr().err


def test_pretraining_resumes_from_its_last_state(pretrained, tmp_path):
    from spikformer.ssl.pretrain import Pretrainer

    config = load_config(pretrained / "config.yaml", ["train.epochs=2", "train.resume=auto"])
    trainer = Pretrainer(config)
    result = trainer.fit()
    assert trainer.position.epoch == 2
    assert len((pretrained / "metrics.csv").read_text().splitlines()) == 3  # epoch 1 kept, epoch 2 added
    assert Path(result["encoder"]).exists()


def test_pretraining_rejects_options_it_would_ignore():
    from spikformer.ssl.pretrain import Pretrainer

    with pytest.raises(ConfigError, match="layer_decay is for fine-tuning"):
        Pretrainer(load_config("configs/digits_v2_pretrain.yaml", ["optim.layer_decay=0.75"]))


def test_pretraining_honours_nan_policy_freeze_bn_and_tensorboard(tmp_path, monkeypatch, caplog):
    # The options the run loop owns mean the same in pre-training as in training.
    from spikformer.ssl.pretrain import MaskedPretrainingTask, Pretrainer

    step, calls = MaskedPretrainingTask.step, []

    def nan_at_call_2(self, loop, batch):
        loss, stats = step(self, loop, batch)
        calls.append(1)
        return (loss * float("nan"), stats) if len(calls) == 2 else (loss, stats)

    monkeypatch.setattr(MaskedPretrainingTask, "step", nan_at_call_2)
    scalars = []

    class SummaryWriter:  # stands in for TensorBoard's (an optional dependency): records what it is given
        def __init__(self, log_dir):
            self.log_dir = log_dir

        def add_scalar(self, key, value, step):
            scalars.append((Path(self.log_dir).name, key, step))

        def close(self):
            pass

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=SummaryWriter))
    config = load_config("configs/digits_v2_pretrain.yaml", [
        *TINY, *TINY_SSL, "ssl.num_visualize=0", "train.nan_policy=skip", "train.freeze_bn=true",
        "train.tensorboard=true", f"train.out_dir={tmp_path}"])
    trainer = Pretrainer(config)
    running = {k: v.clone() for k, v in trainer.model.state_dict().items() if "running_" in k}
    caplog.set_level(logging.INFO, logger="spikformer")  # the run's messages go through the spikformer logger
    trainer.fit()
    assert "non-finite loss (nan) at epoch 1, batch 2 (optimizer step 2); step skipped" in caplog.text
    assert trainer.position.step == trainer.steps_per_epoch - 1
    state = trainer.model.state_dict()
    assert running and all(torch.equal(state[k], v) for k, v in running.items())  # BatchNorm statistics frozen
    assert ("tensorboard", "train_loss", 1) in scalars and ("tensorboard", "val_loss", 1) in scalars


def test_reconstruct_checks_the_weights_against_a_meta_model_before_building_it(pretrained, tmp_path, monkeypatch,
                                                                                 capsys):
    import spikformer.ssl as ssl

    built = []
    real = ssl.build_masked_model
    monkeypatch.setattr(ssl, "build_masked_model", lambda cfg: built.append(torch.empty(0).device.type) or real(cfg))
    assert main(["reconstruct", "--checkpoint", str(pretrained / "last.safetensors"), "model.embed_dim=2048",
                 "ssl.decoder_dim=2048", "--out", str(tmp_path / "r.png")]) == 2
    assert "does not fit the model" in capsys.readouterr().err
    assert built == ["meta"]  # a 2048-wide model was never allocated
