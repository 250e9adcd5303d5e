"""Nothing is lost on faults: signals save and stop, a non-finite loss stops (or skips) and keeps the last good
checkpoint, and a run folder is never overwritten without being asked."""

from __future__ import annotations

import csv
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from spikformer.checkpoint import read_checkpoint
from spikformer.cli import main
from spikformer.config import load_config
from spikformer.errors import CheckpointError, ConfigError
from spikformer.train import NonFiniteLossError, Trainer

BATCHES_PER_EPOCH = 4  # 70 training digits (train_fraction 0.05) in batches of 16, the last one dropped


def tiny(out_dir: Path, *extra: str) -> list[str]:
    """Overrides for a run of a few seconds: a 1-block, 16-wide model on 16x16 digits, T=2."""
    return ["model.embed_dim=16", "model.depth=1", "model.num_heads=2", "model.T=2", "model.img_size=16",
            "model.in_chans=1", "model.num_classes=10", "data.batch_size=16", "data.train_fraction=0.05",
            "data.eval_batch_size=180", "optim.lr=1e-3", "train.epochs=2", "train.amp=off",
            "train.progress=false", f"train.out_dir={out_dir}", *extra]


def position(path: Path) -> dict:
    return read_checkpoint(path)[1]["position"]


class NaNAtCalls(nn.Module):
    """Cross-entropy, except that the loss of the given (1-based) calls is NaN."""

    def __init__(self, bad_calls) -> None:
        super().__init__()
        self.bad_calls, self.calls = set(bad_calls), 0

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        loss = nn.functional.cross_entropy(logits, labels)
        return loss * float("nan") if self.calls in self.bad_calls else loss


# --- signals -----------------------------------------------------------------------------------------


def start_training(tmp_path: Path) -> tuple[subprocess.Popen, queue.Queue]:
    config = write_config(tmp_path / "tiny.yaml", tiny(tmp_path / "run", "train.epochs=1000", "train.eval_every=1000"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    proc = subprocess.Popen([sys.executable, "-m", "spikformer", "train", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    return proc, lines


def wait_for_line(proc: subprocess.Popen, lines: queue.Queue, prefix: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if lines.get(timeout=0.5).startswith(prefix):
                return
        except queue.Empty:
            if proc.poll() is not None:
                pytest.fail(f"training exited early ({proc.returncode}): {proc.stderr.read()}")
    proc.kill()
    pytest.fail(f"no line starting with {prefix!r} within {timeout} s")


@pytest.mark.parametrize("signum", [pytest.param(signal.SIGINT, marks=pytest.mark.slow), signal.SIGTERM])
def test_a_signal_from_outside_saves_a_checkpoint_and_exits_with_128_plus_its_number(tmp_path, signum, caplog):
    # End to end: another process signals `python -m spikformer train`. (SIGINT takes the same path and is
    # covered in-process below; its subprocess variant is marked slow.)
    proc, lines = start_training(tmp_path)
    try:
        wait_for_line(proc, lines, "epoch 2/1000")  # two epochs done: the run is well inside its loop
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum, stderr
    assert f"training interrupted by {signal.Signals(signum).name}; state saved to" in stderr
    assert "Traceback" not in stderr
    last = tmp_path / "run" / "last.safetensors"
    saved = position(last)
    assert saved["epoch"] >= 2 and saved["step"] == saved["epoch"] * BATCHES_PER_EPOCH + saved["batch"]

    # The saved state resumes: finish the interrupted epoch (and one more if it stopped between epochs).
    resumed_epochs = saved["epoch"] + 1
    config = load_config(tmp_path / "tiny.yaml", ["train.resume=auto", f"train.epochs={resumed_epochs}"])
    caplog.set_level(logging.INFO, logger="spikformer")  # the run's messages go through the spikformer logger
    result = Trainer(config).fit()
    where = (f"in epoch {saved['epoch'] + 1} of {resumed_epochs}, after batch {saved['batch']} of {BATCHES_PER_EPOCH}"
             if saved["batch"] else f"after epoch {saved['epoch']} of {resumed_epochs}")
    assert f"resumed from {last}: {where}" in caplog.text
    assert result["epoch"] == resumed_epochs  # the last epoch, numbered from 1
    assert position(last)["epoch"] == resumed_epochs and position(last)["step"] == resumed_epochs * BATCHES_PER_EPOCH


def test_sigint_mid_epoch_saves_that_step_returns_130_and_the_run_resumes_exactly(tmp_path, monkeypatch, capsys):
    # The signal is raised in this process at a chosen step (epoch 2, batch 2), while the trainer's handler is
    # installed; the CLI turns the stop into exit code 130 (128 + SIGINT).
    argv = ["train", "--config", str(write_config(tmp_path / "tiny.yaml", tiny(tmp_path / "run", "train.epochs=3")))]
    step = Trainer.optimizer_step

    def step_then_signal(self):
        step(self)
        if self.position.step == BATCHES_PER_EPOCH + 2:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(Trainer, "optimizer_step", step_then_signal)
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN when the suite runs as a background job
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "spikformer train: training interrupted by SIGINT; state saved to" in err and "train.resume=auto" in err
    assert signal.getsignal(signal.SIGINT) is before  # handlers are put back
    saved = position(tmp_path / "run" / "last.safetensors")
    assert (saved["epoch"], saved["batch"], saved["step"]) == (1, 2, BATCHES_PER_EPOCH + 2)

    monkeypatch.setattr(Trainer, "optimizer_step", step)
    assert main([*argv, "--resume", "auto"]) == 0
    resumed, _ = read_checkpoint(tmp_path / "run" / "last.safetensors")
    assert main(["train", "--config", argv[2], "train.out_dir=" + str(tmp_path / "straight")]) == 0
    straight, _ = read_checkpoint(tmp_path / "straight" / "last.safetensors")
    for key in straight:
        if key.startswith("model."):
            assert torch.equal(resumed[key], straight[key]), key


def test_sigterm_during_the_last_pretraining_validation_saves_and_exits_143(tmp_path, monkeypatch, capsys):
    from test_resume import pretrain_argv

    from spikformer.ssl.pretrain import MaskedPretrainingTask

    validate = MaskedPretrainingTask.validate

    def signalled_in_the_last_validation(self, loop):
        if loop.position.epoch == loop.total_epochs:
            signal.raise_signal(signal.SIGTERM)
        return validate(self, loop)

    monkeypatch.setattr(MaskedPretrainingTask, "validate", signalled_in_the_last_validation)
    before = signal.getsignal(signal.SIGTERM)
    assert main(pretrain_argv(tmp_path / "run", "train.deterministic=false")) == 128 + signal.SIGTERM
    assert "spikformer pretrain: training interrupted by SIGTERM; state saved to" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before
    assert position(tmp_path / "run" / "last.safetensors")["epoch"] == 3  # the last epoch, validated and saved
    with (tmp_path / "run" / "metrics.csv").open() as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1", "2", "3"]


def write_config(path: Path, overrides: list[str]) -> Path:
    raw: dict = {}
    for item in overrides:
        key, _, value = item.partition("=")
        section, name = key.split(".")
        raw.setdefault(section, {})[name] = yaml.safe_load(value)
    path.write_text(yaml.safe_dump(raw))
    return path


# --- non-finite loss and weights ---------------------------------------------------------------------


def test_a_nan_loss_stops_training_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    # Call 6 is epoch 2, batch 2; a checkpoint is written after every step, so the last good one is step 5.
    config = load_config(None, tiny(tmp_path, "train.epochs=3", "train.save_every_steps=1"))
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at epoch 2, batch 2 \(optimizer "
                                                 r"step 6\); training stopped and the last good checkpoint"):
        Trainer(config, criterion=NaNAtCalls({6})).fit()
    tensors, meta = read_checkpoint(tmp_path / "last.safetensors")
    assert (meta["position"]["epoch"], meta["position"]["batch"], meta["position"]["step"]) == (1, 1, 5)
    assert all(torch.isfinite(t).all() for k, t in tensors.items() if k.startswith("model."))
    assert (tmp_path / "best.safetensors").exists()


def test_nan_policy_skip_skips_the_bad_steps_and_finishes(tmp_path, caplog):
    config = load_config(None, tiny(tmp_path, "train.nan_policy=skip"))
    caplog.set_level(logging.INFO, logger="spikformer")
    result = Trainer(config, criterion=NaNAtCalls({3, 6})).fit()
    out = caplog.text
    assert "non-finite loss (nan) at epoch 1, batch 3 (optimizer step 3); step skipped" in out
    assert "non-finite loss (nan) at epoch 2, batch 2 (optimizer step 5); step skipped" in out
    assert result["epoch"] == 2  # the second (last) epoch, numbered from 1
    assert position(tmp_path / "last.safetensors")["step"] == 2 * BATCHES_PER_EPOCH - 2
    tensors, _ = read_checkpoint(tmp_path / "last.safetensors")
    assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())


def test_nan_policy_skip_still_stops_a_run_that_has_diverged(tmp_path):
    config = load_config(None, tiny(tmp_path, "train.nan_policy=skip", "train.epochs=3"))
    with pytest.raises(NonFiniteLossError, match="at epoch 3, batch 3"):  # the 10th NaN in a row: call 11
        Trainer(config, criterion=NaNAtCalls(range(2, 100))).fit()


def test_weights_made_non_finite_by_a_step_are_never_saved(tmp_path):
    # A finite loss can still give an overflowing update; the step after it would fail, but the epoch's
    # checkpoints are written first. Poison the weights in the last step of epoch 2.
    config = load_config(None, tiny(tmp_path, "train.epochs=3"))
    trainer = Trainer(config)
    step = trainer.optimizer_step

    def step_then_poison():
        step()
        if trainer.position.step == 2 * BATCHES_PER_EPOCH:
            with torch.no_grad():
                trainer.model.head.bias[0] = float("inf")

    trainer.optimizer_step = step_then_poison
    with pytest.raises(NonFiniteLossError, match=r"non-finite weights \(head.bias\) after optimizer step 8"):
        trainer.fit()
    assert position(tmp_path / "last.safetensors")["epoch"] == 1
    for name in ("last.safetensors", "best.safetensors"):
        tensors, _ = read_checkpoint(tmp_path / name)
        bias = tensors["model.head.bias" if name == "last.safetensors" else "head.bias"]  # best: a plain state dict
        assert torch.isfinite(bias).all(), name


# --- run folders ---------------------------------------------------------------------------------------


def test_a_run_folder_is_never_overwritten_without_being_asked(tmp_path, capsys):
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text("train:\n  epochs: 1\n")
    argv = ["train", "--config", str(config_file), *tiny(tmp_path / "run", "train.epochs=1")]
    assert main(argv) == 0
    first = (tmp_path / "run" / "last.safetensors").read_bytes()
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "train.overwrite=true" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "run" / "last.safetensors").read_bytes() == first
    assert main([*argv, "--overwrite"]) == 0


def test_an_out_dir_that_is_a_file_or_unwritable_is_a_config_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        Trainer(load_config(None, tiny(tmp_path / "file"))).fit()
    with pytest.raises(ConfigError, match="cannot create the run folder"):
        Trainer(load_config(None, tiny(tmp_path / "file" / "run"))).fit()


def test_resuming_with_another_model_lists_what_does_not_fit(tmp_path):
    Trainer(load_config(None, tiny(tmp_path, "train.epochs=1"))).fit()
    wider = load_config(None, tiny(tmp_path, "model.embed_dim=32", "train.resume=auto"))
    with pytest.raises(ConfigError, match=r"cannot resume from .*last.safetensors: the run was started with other "
                                          r"settings \(model.embed_dim 16 -> 32\)"):
        Trainer(wider).fit()
    # Whatever the configs say, the weights are checked too (a checkpoint whose config lacks a key).
    from spikformer.checkpoint import match_state_dict, read_model_state

    state, _ = read_model_state(tmp_path / "last.safetensors")
    with pytest.raises(CheckpointError, match=r"(?s)does not fit the model.*shape mismatches: "
                                              r"patch_embed.stages.0.conv.weight: checkpoint \[2, 1, 3, 3\]"):
        match_state_dict(Trainer(wider).model, state)


def test_metrics_of_an_interrupted_run_are_not_duplicated_on_resume(tmp_path):
    first = Trainer(load_config(None, tiny(tmp_path, "train.epochs=2")))
    first.total_epochs = 1  # stops after epoch 1 of 2, as an interrupted run does
    first.fit()
    Trainer(load_config(None, tiny(tmp_path, "train.epochs=2", "train.resume=auto"))).fit()
    with (tmp_path / "metrics.csv").open() as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1", "2"]


def finished_run(tmp_path: Path, *extra: str) -> list[str]:
    config_file = write_config(tmp_path / "tiny.yaml", tiny(tmp_path / "run", "train.epochs=1"))
    argv = ["train", "--config", str(config_file), *extra]
    assert main(argv) == 0
    return argv


def test_a_best_checkpoint_without_last_is_never_overwritten_by_a_fresh_start(tmp_path, capsys):
    argv = finished_run(tmp_path)
    run = tmp_path / "run"
    (run / "last.safetensors").unlink()  # deleted, or a kill before the first save of a later run
    best = (run / "best.safetensors").read_bytes()
    rows = (run / "metrics.csv").read_text()
    capsys.readouterr()
    assert main([*argv, "--resume", "auto"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run (config.yaml, metrics.csv, best.safetensors" in err
    assert "no last.safetensors to continue from" in err and "--overwrite" in err
    assert (run / "best.safetensors").read_bytes() == best and (run / "metrics.csv").read_text() == rows


@pytest.mark.parametrize("change, named", [
    ("optim.lr=5e-3", "optim.lr 0.001 -> 0.005"), ("optim.weight_decay=0.5", "optim.weight_decay 0.06 -> 0.5"),
    ("data.batch_size=8", "data.batch_size 16 -> 8"), ("model.T=3", "model.T 2 -> 3"),
    ("train.seed=7", "train.seed 0 -> 7"), ("data.train_fraction=0.1", "data.train_fraction 0.05 -> 0.1"),
    ("data.shift=0", "data.shift 2 -> 0"), ("optim.name=sgd", "optim.name 'adamw' -> 'sgd'"),
])
def test_resuming_with_other_settings_exits_2_naming_the_difference(tmp_path, capsys, change, named):
    argv = finished_run(tmp_path)
    last = (tmp_path / "run" / "last.safetensors").read_bytes()
    capsys.readouterr()
    assert main([*argv, "--resume", "auto", change]) == 2
    err = capsys.readouterr().err
    assert f"cannot resume from {tmp_path / 'run' / 'last.safetensors'}: the run was started with other settings " \
           f"({named})" in err and "model.pretrained=" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "run" / "last.safetensors").read_bytes() == last


def test_safe_keys_may_change_on_resume_and_config_yaml_records_them(tmp_path, capsys):
    argv = finished_run(tmp_path)
    assert main([*argv, "--resume", "auto", "train.epochs=2", "train.log_interval=3", "data.num_workers=0",
                 "train.device=cpu"]) == 0
    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert recorded["train"]["epochs"] == 2 and recorded["train"]["log_interval"] == 3
    assert position(tmp_path / "run" / "last.safetensors")["epoch"] == 2


def test_a_second_run_into_a_folder_in_use_is_refused_naming_the_first_ones_pid(tmp_path, capsys):
    from spikformer.train.run_folder import RunFolderLock

    config_file = write_config(tmp_path / "tiny.yaml", tiny(tmp_path / "run", "train.epochs=1"))
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from spikformer.train.run_folder import RunFolderLock; "
        f"RunFolderLock({str(tmp_path / 'run')!r}).acquire(); print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")})
    try:
        assert holder.stdout.readline().strip() == "locked"
        for resume in ([], ["--resume", "auto"]):
            assert main(["train", "--config", str(config_file), *resume]) == 2
            err = capsys.readouterr().err
            assert f"is in use by another run (process {holder.pid} " in err
        assert not (tmp_path / "run" / "metrics.csv").exists()
    finally:
        holder.kill()
        holder.wait()
    # The holder was killed without releasing: the kernel dropped its lock, and the next run takes over.
    assert main(["train", "--config", str(config_file)]) == 0
    assert RunFolderLock(tmp_path / "run").acquire().release() is None
