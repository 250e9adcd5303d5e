"""What a run prints and logs: plain lines when the output is a file (a cluster job, ``> log.txt 2>&1``) and a
progress bar only on a terminal, a short summary instead of the resolved config, a ``train.log`` in the run
folder that holds the same lines, each message once (also under DataLoader workers), epochs numbered from 1,
energy in mJ; and ``spikformer demo``, which writes its own folder and never replaces a run."""

from __future__ import annotations

import fcntl
import logging
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from spikformer.cli import main
from spikformer.console import routed_to

ROOT = Path(__file__).resolve().parents[1]
SRC = str(ROOT / "src")
# The demo's config shrunk to seconds: 30 training digits in batches of 8 (3 optimizer steps per epoch).
TINY = ["model.embed_dim=16", "model.num_heads=2", "model.depth=1", "model.T=2", "model.img_size=8",
        "model.patch_size=4", "data.train_fraction=0.02", "data.batch_size=8", "data.eval_batch_size=360",
        "train.tensorboard=false", "train.amp=off"]
STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")


def cli_env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join([SRC, env.get("PYTHONPATH", "")])
    return env


def spikformer(*args: str) -> list[str]:
    return [sys.executable, "-m", "spikformer", *args]


def log_lines(run: Path) -> list[str]:
    """train.log's lines without their time stamps (each line has one)."""
    lines = (run / "train.log").read_text().splitlines()
    assert all(STAMP.match(line) for line in lines), lines
    return [STAMP.sub("", line) for line in lines]


def test_redirected_output_is_plain_lines_a_summary_periodic_progress_and_each_message_once(tmp_path):
    run = tmp_path / "run"
    log_file = tmp_path / "log.txt"
    with log_file.open("w") as out:  # as `spikformer train ... > log.txt 2>&1`: not a terminal
        code = subprocess.run(spikformer("train", "--config", "digits", *TINY, "train.epochs=2",
                                         "train.log_interval=2", f"train.out_dir={run}"),
                              stdout=out, stderr=subprocess.STDOUT, env=cli_env(), timeout=300).returncode
    text = log_file.read_text()
    assert code == 0, text
    assert "\r" not in text and "\x1b" not in text  # no progress bar, no terminal codes
    lines = text.splitlines()
    # A short summary, not the resolved config (which config.yaml holds): no ssl section in a supervised run.
    assert lines[0] == (f"run folder {run} (full resolved config in {run / 'config.yaml'}, messages in "
                        f"{run / 'train.log'})")
    assert lines[1].startswith("model spikformer_cifar_4_256: ") and "T=2, input 1x8x8, 10 classes" in lines[1]
    assert lines[2].startswith("data digits: 30 training / 360 validation samples; global batch 8 ")
    assert lines[2].endswith("; 3 optimizer steps per epoch")
    assert lines[3].startswith("optim adamw lr 0.005, ") and "2 epochs on cpu" in lines[3]
    assert "mask_ratio" not in text and "ssl" not in text
    # Every train.log_interval (2) batches a plain progress line, then the epoch's summary; epochs from 1.
    assert re.fullmatch(r"epoch 1/2  batch 2/3  loss \d\.\d{3}  acc \d+\.\d  img/s \d+\.\d", lines[4])
    assert re.fullmatch(r"epoch 1/2  lr \S+  train loss .* \| val loss \d\.\d{4} top1 \d+\.\d\d% top5 \d+\.\d\d%",
                        lines[5])
    assert lines[6].startswith("epoch 2/2  batch 2/3  ") and lines[7].startswith("epoch 2/2  lr ")
    assert re.fullmatch(r"best val top-1 \d+\.\d\d% \(epoch [12]\); run folder " + re.escape(str(run)), lines[8])
    assert len(lines) == 9 and len(set(lines)) == len(lines)  # each message once
    # train.log: the same lines (all but the command's closing report, printed after the run), time-stamped.
    assert log_lines(run) == lines[:8]
    assert (run / "metrics.csv").read_text().splitlines()[1].startswith("1,")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a pseudo-terminal as Linux provides it")
def test_on_a_terminal_progress_is_a_bar_and_no_plain_progress_lines(tmp_path):
    run = tmp_path / "run"
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a window of 120 columns
    proc = subprocess.Popen(spikformer("train", "--config", "digits", *TINY, "train.epochs=1", "train.log_interval=1",
                                       f"train.out_dir={run}"),
                            stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env=cli_env())
    os.close(follower)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([leader], [], [], 300)
            if not ready:
                break
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed: the process is gone
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(leader)
        proc.wait(timeout=60)
    shown = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, shown
    assert re.search(r"\repoch 1/1: +\d+%", shown)  # tqdm's bar, redrawn in place
    assert "batch 1/3" not in shown  # the plain lines are for files and pipes only
    assert [line for line in log_lines(run) if "batch 1/3" in line] == []  # nor does train.log
    assert any(line.startswith("epoch 1/1  lr ") for line in log_lines(run))


def test_sigint_to_the_process_group_with_loader_workers_is_announced_once_and_logged(tmp_path):
    # Ctrl-C in a terminal (and Slurm's signals) reach every process of the group: the DataLoader workers
    # inherit the run's handler, and each of them used to print the announcement again.
    run = tmp_path / "run"
    log_file = tmp_path / "log.txt"
    with log_file.open("w") as out:
        proc = subprocess.Popen(spikformer("train", "--config", "digits", *TINY, "train.epochs=1000",
                                           "train.eval_every=1000", "train.log_interval=1", "data.num_workers=2",
                                           f"train.out_dir={run}"),
                                stdout=out, stderr=subprocess.STDOUT, env=cli_env(), start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while "epoch 2/1000  batch 1/3" not in log_file.read_text():  # workers of the second epoch running
                assert proc.poll() is None and time.monotonic() < deadline, log_file.read_text()
                time.sleep(0.05)
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    text = log_file.read_text()
    assert proc.returncode == 128 + signal.SIGINT, text
    assert text.count("SIGINT received: saving a checkpoint after this step ...") == 1, text
    assert text.count("training interrupted by SIGINT; state saved to") == 1, text
    logged = log_lines(run)
    assert logged.count("SIGINT received: saving a checkpoint after this step ...") == 1
    assert logged[-1].startswith("stopped: TrainingInterrupted: training interrupted by SIGINT; state saved to ")


def test_a_log_file_opens_info_without_changing_what_the_root_logger_shows(tmp_path):
    # A Python user who configured nothing (or only warnings) still sees warnings only, while train.log gets
    # every message.
    shown: list[str] = []

    class Remember(logging.Handler):
        def emit(self, record):
            shown.append(record.getMessage())

    root, remember = logging.getLogger(), Remember()
    root.addHandler(remember)
    saved_level = root.level
    root.setLevel(logging.WARNING)
    file_handler = logging.FileHandler(tmp_path / "x.log")
    try:
        with routed_to(file_handler):
            logging.getLogger("spikformer.train.loop").info("an epoch summary")
            logging.getLogger("spikformer.data").warning("a warning")
    finally:
        file_handler.close()
        root.removeHandler(remember)
        root.setLevel(saved_level)
    assert shown == ["a warning"]
    assert (tmp_path / "x.log").read_text().splitlines() == ["an epoch summary", "a warning"]
    assert logging.getLogger("spikformer").propagate and logging.getLogger("spikformer").level == logging.NOTSET


def test_demo_writes_its_own_folder_reports_mj_and_never_replaces_a_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    digits = tmp_path / "runs" / "digits"  # where `spikformer train --config digits` writes
    digits.mkdir(parents=True)
    (digits / "metrics.csv").write_text("epoch\n1\n")
    assert main(["demo", *TINY, "train.epochs=1", "train.progress=false"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"energy \S+ mJ .* as an ANN \S+ mJ", printed) and "uJ" not in printed
    demo = tmp_path / "runs" / "demo"
    assert {"last.safetensors", "best.safetensors", "train.log"} <= {p.name for p in demo.iterdir()}
    assert (digits / "metrics.csv").read_text() == "epoch\n1\n" and len(list(digits.iterdir())) == 1
    # A second demo runs in the next free folder and touches nothing of the first.
    before = {p.name: p.read_bytes() for p in demo.iterdir() if p.is_file()}
    assert main(["demo", *TINY, "train.epochs=1", "train.progress=false"]) == 0
    assert "last.safetensors" in {p.name for p in (tmp_path / "runs" / "demo-2").iterdir()}
    assert {p.name: p.read_bytes() for p in demo.iterdir() if p.is_file()} == before
    # train.out_dir naming a folder that holds a run is refused, as a second `train` into it is.
    assert main(["demo", *TINY, "train.epochs=1", "train.out_dir=runs/demo"]) == 2
    error = capsys.readouterr().err
    assert f"run folder {Path('runs/demo')} already holds a run" in error and "--overwrite" in error
    assert {p.name: p.read_bytes() for p in demo.iterdir() if p.is_file()} == before
    # train.out_dir on the command line chooses the folder, here the one `train` wrote: refused all the same.
    assert main(["demo", *TINY, "train.epochs=1", "train.out_dir=runs/digits"]) == 2
    assert (digits / "metrics.csv").read_text() == "epoch\n1\n"
