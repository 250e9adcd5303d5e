"""Kill-and-resume loops: a run SIGKILLed again and again at random moments, and restarted each time with
``train.resume=auto``, ends exactly where a run that was never interrupted ends.

Each test runs a tiny config in forked processes (``test_resume.start_cli``) and kills it ``KILLS`` times. The
kill moments come from a seeded RNG, so a failure is reproducible (its message shows the schedule); two
kinds alternate:

- a timer: the parent sends SIGKILL after a random delay. The first one falls within the start-up (before
  anything is saved); the others after the start-up, within what is left of the run, so they land anywhere in
  training: in a step, in validation, in a save, in a resume. Times are scaled by an uninterrupted run's,
  measured in the test, so they mean the same on a fast and a slow machine;
- inside a file write of the run folder: the child kills itself at an atomic rename into its folder, with
  the temporary file half written (what a kill inside ``write()`` leaves), complete but not yet renamed, or
  just renamed (before the folder's ``fsync``). Either the n-th rename of any file (``config.yaml``, a
  checkpoint, the best or encoder weights, a trimmed ``metrics.csv``), or the write of ``last.safetensors``
  that ends the current epoch: the moment after the epoch's metrics row was written and before its checkpoint.

After every kill: ``last.safetensors`` is loadable (checksum verified) and no older than after the kill
before (no saved progress is lost), or absent because the run never saved (and then the restart must be
accepted, not refused as a foreign run); at most the one interrupted write's temporary file is left; the
logged epochs are each there once. At the end: the weights, optimizer, EMA and RNG state equal an uninterrupted
run's bit for bit, and so does every ``metrics.csv`` column except the two timings.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_resume import assert_same_run, metrics_rows, pretrain_argv, run_cli, start_cli
from test_robustness_faults import tiny, write_config

from spikformer.checkpoint import read_checkpoint

KILLS = 8
STAGES = ("half written", "before rename", "after rename")
TIMINGS = ("epoch_seconds", "train_images_per_s")  # wall-clock figures: the only columns allowed to differ


def run_cli_killed_in_a_write(argv: list[str], out: Path, name: str | None, write_number: int, stage: str) -> None:
    """``run_cli(argv)``, SIGKILLed by itself at ``stage`` of its ``write_number``-th atomic rename into ``out``
    of a file called ``name`` (None: of any file). A run that ends first exits normally."""
    replace, renames = os.replace, 0

    def replace_or_die(source, target, *args, **kwargs):
        nonlocal renames
        target_path = Path(target)
        if target_path.parent == out and name in (None, target_path.name):
            renames += 1
            if renames == write_number:
                if stage == "half written":
                    os.truncate(source, os.path.getsize(source) // 2)
                if stage == "after rename":
                    replace(source, target, *args, **kwargs)
                os.kill(os.getpid(), signal.SIGKILL)
        return replace(source, target, *args, **kwargs)

    os.replace = replace_or_die  # this forked child's only
    run_cli(argv)


def timed_run(argv: list[str], out: Path) -> tuple[float, float]:
    """Run ``argv`` to its end in a forked child; return how long it took, in all and until it was ready to
    train (``config.yaml`` written)."""
    start = time.perf_counter()
    process, ready = start_cli(argv), None
    while process.is_alive() and ready is None:
        if (out / "config.yaml").exists():
            ready = time.perf_counter() - start
        time.sleep(0.005)
    process.join(timeout=120)
    assert process.exitcode == 0 and ready is not None, f"the uninterrupted run failed ({process.exitcode})"
    return time.perf_counter() - start, ready


def inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def temporaries(out: Path) -> list[str]:
    return sorted(path.name for path in out.glob(".*.tmp"))


def kill_and_resume_until_done(argv: list[str], out: Path, timing: tuple[float, float], epochs: int,
                               steps_per_epoch: int, seed: int) -> list[str]:
    """Start ``argv`` (which resumes with ``train.resume=auto``) and SIGKILL it ``KILLS`` times at moments
    drawn from ``random.Random(seed)``, checking the run folder after each kill; then let it finish. Return
    what each cycle did (the schedule, for failure messages). ``steps_per_epoch``: the run saves
    ``last.safetensors`` after every optimizer step, so the write that ends the epoch can be aimed at."""
    rng = random.Random(seed)
    duration, startup = timing
    schedule: list[str] = []
    saved_step = -1  # the optimizer step of the newest last.safetensors seen; -1: none saved yet
    for cycle in range(KILLS):
        stage = rng.choice(STAGES)
        if cycle % 4 == 1:
            write_number = rng.randint(1, 5)
            schedule.append(f"in write {write_number} ({stage})")
            process = start_cli(argv, run_cli_killed_in_a_write, out, None, write_number, stage)
        elif cycle % 4 == 3:
            to_the_end = steps_per_epoch - max(saved_step, 0) % steps_per_epoch
            schedule.append(f"in the epoch's last checkpoint ({stage})")
            process = start_cli(argv, run_cli_killed_in_a_write, out, "last.safetensors", to_the_end, stage)
        else:
            # The first within the start-up; the others once the run is ready to train (it has replaced
            # config.yaml), within what is left of it (a resumed run has less to do).
            left = 1.0 - max(saved_step, 0) / (steps_per_epoch * epochs)
            delay = rng.uniform(0.0, startup) if cycle == 0 else \
                rng.uniform(0.0, 0.8 * (duration - startup) * max(left, 0.25))
            schedule.append(f"after {delay:.2f} s" if cycle == 0 else f"{delay:.2f} s into training")
            before = inode(out / "config.yaml")
            process = start_cli(argv)
            while cycle and process.is_alive() and inode(out / "config.yaml") == before:
                time.sleep(0.002)
            process.join(timeout=delay)
            if process.is_alive():
                os.kill(process.pid, signal.SIGKILL)
        process.join(timeout=120)
        where = f"cycle {cycle + 1}, kills so far: {schedule}"
        if process.exitcode == 0:  # it finished before the kill came
            schedule[-1] += ": finished first"
            break
        # Any other exit (2: the restart was refused, 1: a failure) is a defect.
        assert process.exitcode == -signal.SIGKILL, f"exit {process.exitcode} at {where}"
        saved_step = check_after_a_kill(out, saved_step, where)
    else:
        process = start_cli(argv)
        process.join(timeout=120)
        assert process.exitcode == 0, f"the last restart failed ({process.exitcode}) after kills {schedule}"
    assert temporaries(out) == [], f"orphan temporary files after the run: {temporaries(out)}"
    landed = sum("finished first" not in what for what in schedule)
    assert landed >= KILLS - 2, f"only {landed} kills landed before the run ended: {schedule}"
    return schedule


def check_after_a_kill(out: Path, saved_step: int, where: str) -> int:
    """What a kill must leave; return the step of the checkpoint it left (-1: none)."""
    leftovers = temporaries(out)
    assert len(leftovers) <= 1, f"temporary files pile up at {where}: {leftovers}"
    last = out / "last.safetensors"
    if not last.exists():
        assert saved_step == -1, f"last.safetensors of step {saved_step} is gone at {where}"
        return -1
    position = read_checkpoint(last)[1]["position"]  # loadable: structure and tensor checksum verified
    assert position["step"] >= saved_step, f"saved progress lost at {where}: step {saved_step} -> {position}"
    if (out / "metrics.csv").exists():
        logged = [int(row["epoch"]) for row in metrics_rows(out / "metrics.csv")]
        # Every finished epoch once; the row of the epoch whose checkpoint the kill interrupted may be there too.
        assert logged in (list(range(1, position["epoch"] + 1)), list(range(1, position["epoch"] + 2))), \
            f"metrics rows {logged} at {where}, checkpoint at {position}"
    return position["step"]


def assert_same_as_uninterrupted(out: Path, reference: Path, epochs: int, schedule: list[str]) -> None:
    columns = [name for name in metrics_rows(reference / "metrics.csv")[0] if name not in TIMINGS]
    try:
        assert_same_run(out, reference, epochs, tuple(columns))
    except AssertionError as error:
        raise AssertionError(f"{error} (kills: {schedule})") from None


def assert_same_weights(path: Path, expected_path: Path) -> None:
    """The same tensors, bit for bit (the metadata holds the epoch's timings, which differ)."""
    tensors, expected = read_checkpoint(path)[0], read_checkpoint(expected_path)[0]
    assert sorted(tensors) == sorted(expected)
    assert all(torch.equal(tensors[key], expected[key]) for key in expected), path.name


def tiny_training_argv(tmp_path: Path, out: Path, *extra: str) -> list[str]:
    """``spikformer train --resume auto`` of the tiny digits run of test_robustness_faults (4 steps an epoch)."""
    config = write_config(tmp_path / f"{out.name}.yaml", tiny(out, "train.epochs=2", "train.threads=1", *extra))
    return ["train", "--config", str(config), "--resume", "auto"]


def test_training_killed_at_random_moments_and_resumed_each_time_equals_an_uninterrupted_run(tmp_path):
    # 3 epochs of 4 optimizer steps, a checkpoint after every step: 12 writes of last.safetensors, plus
    # best.safetensors whenever validation improves.
    def argv(out: Path) -> list[str]:
        return tiny_training_argv(tmp_path, out, "train.epochs=3", "train.save_every_steps=1")

    timing = timed_run(argv(tmp_path / "uninterrupted"), tmp_path / "uninterrupted")
    out = tmp_path / "killed"
    schedule = kill_and_resume_until_done(argv(out), out, timing, epochs=3, steps_per_epoch=4, seed=4)
    assert_same_as_uninterrupted(out, tmp_path / "uninterrupted", 3, schedule)
    assert_same_weights(out / "best.safetensors", tmp_path / "uninterrupted" / "best.safetensors")


def test_pretraining_killed_at_random_moments_and_resumed_each_time_equals_an_uninterrupted_run(tmp_path):
    # 3 epochs of 4 optimizer steps (8 micro-batches), a checkpoint after every step, encoder.safetensors after
    # every epoch; masks, random shifts and stochastic depth all have to come back exactly.
    def argv(out: Path) -> list[str]:
        return pretrain_argv(out, "train.resume=auto")

    timing = timed_run(argv(tmp_path / "uninterrupted"), tmp_path / "uninterrupted")
    out = tmp_path / "killed"
    schedule = kill_and_resume_until_done(argv(out), out, timing, epochs=3, steps_per_epoch=4, seed=3)
    assert_same_as_uninterrupted(out, tmp_path / "uninterrupted", 3, schedule)
    assert_same_weights(out / "encoder.safetensors", tmp_path / "uninterrupted" / "encoder.safetensors")


@pytest.mark.parametrize("task, output", [("train", "best.safetensors"), ("pretrain", "encoder.safetensors")])
def test_a_kill_after_the_first_epochs_outputs_before_any_checkpoint_leaves_a_run_the_restart_continues(
        tmp_path, task, output):
    # Without periodic saves (train.save_every_steps=0, the default) the first checkpoint is written at the end
    # of epoch 1, after the epoch's weights file and metrics row. A kill just after the weights file left a folder
    # with outputs but no last.safetensors, and every restart was refused ("already holds a run ... add
    # --overwrite"). Now the trained epoch is checkpointed before its outputs; the restart validates and logs it.
    def argv(out: Path) -> list[str]:
        if task == "train":
            return tiny_training_argv(tmp_path, out)
        return pretrain_argv(out, "train.epochs=2", "train.save_every_steps=0", "--resume", "auto")

    reference, out = tmp_path / "uninterrupted", tmp_path / "killed"
    timed_run(argv(reference), reference)
    process = start_cli(argv(out), run_cli_killed_in_a_write, out, output, 1, "after rename")
    process.join(timeout=120)
    assert process.exitcode == -signal.SIGKILL and (out / output).exists()
    assert read_checkpoint(out / "last.safetensors")[1]["position"]["epoch"] == 0  # the trained epoch
    process = start_cli(argv(out))
    process.join(timeout=120)
    assert process.exitcode == 0, f"the restart was refused or failed ({process.exitcode})"
    assert_same_as_uninterrupted(out, reference, 2, [f"after {output} of epoch 1"])
    assert_same_weights(out / output, reference / output)


def test_sigterm_to_the_process_group_with_loader_workers_saves_the_position_and_the_resume_equals_an_uninterrupted_run(
        tmp_path):
    # Slurm and ``kill -TERM -PGID`` signal every process of the job: the loader's worker processes too. The run
    # must finish its step, save its position and exit 143, whatever the workers were doing.
    def argv(out: Path) -> list[str]:
        return tiny_training_argv(tmp_path, out, "data.num_workers=2", "train.save_every_steps=1")

    reference, out = tmp_path / "uninterrupted", tmp_path / "stopped"
    timed_run(argv(reference), reference)
    source = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    # A session of its own: the child leads a process group, as a batch job does.
    job = subprocess.Popen([sys.executable, "-m", "spikformer", *argv(out)], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        seen = None
        while job.poll() is None and time.monotonic() < deadline:
            seen = read_position(out / "last.safetensors")
            if seen is not None and seen["step"] >= 1:  # mid-epoch 1: a step done, its workers loading the next
                break
            time.sleep(0.01)
        assert seen is not None and job.poll() is None, "the run ended or stalled before its first step was saved"
        os.killpg(job.pid, signal.SIGTERM)
        _, stderr = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    assert job.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "interrupted by SIGTERM; state saved to" in stderr and "Traceback" not in stderr, stderr[-3000:]
    saved = read_checkpoint(out / "last.safetensors")[1]["position"]
    assert saved["step"] >= seen["step"] and saved["epoch"] * 4 + saved["batch"] == saved["step"], saved
    process = start_cli(argv(out))
    process.join(timeout=120)
    assert process.exitcode == 0, f"the resumed run failed ({process.exitcode})"
    assert_same_as_uninterrupted(out, reference, 2, [f"SIGTERM to the process group after step {saved['step']}"])


def read_position(path: Path) -> dict | None:
    try:
        return read_checkpoint(path)[1]["position"]
    except Exception:  # noqa: BLE001 - not written yet
        return None
