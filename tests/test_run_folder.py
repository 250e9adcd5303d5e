"""Run folders: one run at a time, earlier output never reused for a fresh start, resume only with the same
settings (``spikformer.train.run_folder``; the trainer-level cases are in test_robustness_faults.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import yaml

from spikformer.config import Config, config_to_dict, load_config
from spikformer.errors import ConfigError
from spikformer.train.optim import build_optimizer, build_scheduler
from spikformer.train.run_folder import (
    LOCK_FILE,
    RUN_OUTPUTS,
    SAFE_ON_RESUME,
    RunFolderLock,
    lock_run_folder,
    prepare_run_folder,
    resume_differences,
)
from spikformer.train.state import Position, load_training_state, save_training_state


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_folder_in_use_is_refused_naming_the_holders_pid_and_free_again_after_release(tmp_path):
    first = RunFolderLock(tmp_path / "run").acquire()
    assert (tmp_path / "run" / LOCK_FILE).read_text().split()[0] == str(os.getpid())
    with pytest.raises(ConfigError, match=rf"run folder .*run is in use by another run \(process {os.getpid()} "):
        RunFolderLock(tmp_path / "run").acquire()
    first.release()
    assert not (tmp_path / "run" / LOCK_FILE).exists()
    with lock_run_folder(tmp_path / "run"):
        assert (tmp_path / "run" / LOCK_FILE).exists()
    with lock_run_folder(tmp_path / "run", enabled=False):  # ranks > 0 take no lock
        assert not (tmp_path / "run" / LOCK_FILE).exists()


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    (tmp_path / LOCK_FILE).write_text(f"{dead_pid()} somehost\n")
    lock = RunFolderLock(tmp_path).acquire()
    assert (tmp_path / LOCK_FILE).read_text().split()[0] == str(os.getpid())
    lock.release()


def test_temporary_files_of_an_interrupted_checkpoint_write_are_removed_when_a_run_takes_the_folder(tmp_path):
    orphans = [tmp_path / ".last.safetensors.k3j_x9.tmp", tmp_path / ".best.safetensors.a1.tmp",
               tmp_path / ".metrics.csv.q2.tmp", tmp_path / ".config.yaml.z7.tmp"]
    for orphan in orphans:
        orphan.write_bytes(b"half a checkpoint")
    (tmp_path / "notes.tmp").write_text("not ours")
    with lock_run_folder(tmp_path):
        assert not any(orphan.exists() for orphan in orphans)
    assert (tmp_path / "notes.tmp").exists()


@pytest.mark.parametrize("left", [["best.safetensors"], ["metrics.csv"], ["encoder.safetensors"], ["tensorboard"],
                                  ["config.yaml", "best.safetensors"]])
@pytest.mark.parametrize("resume", [None, "auto"])
def test_a_fresh_start_is_refused_whatever_earlier_output_is_left(tmp_path, left, resume):
    for name in left:
        (tmp_path / name).mkdir() if name == "tensorboard" else (tmp_path / name).write_text("earlier")
    with pytest.raises(ConfigError, match=rf"already holds a run \({', '.join(left)}\);.*--overwrite"):
        prepare_run_folder(tmp_path, resume, overwrite=False)
    assert prepare_run_folder(tmp_path, resume, overwrite=True) is None
    assert not any((tmp_path / name).exists() for name in RUN_OUTPUTS)


def test_a_run_killed_before_its_first_checkpoint_may_start_again(tmp_path):
    config = config_to_dict(Config())
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert prepare_run_folder(tmp_path, "auto", overwrite=False, config=config) is None
    (tmp_path / "tensorboard").mkdir()  # its first epoch's curves, written before the first checkpoint
    assert prepare_run_folder(tmp_path, "auto", overwrite=False, config=config) is None
    other = config_to_dict(load_config(None, ["optim.lr=1e-2"]))
    with pytest.raises(ConfigError, match=r"already holds a run \(config.yaml, tensorboard\)"):
        prepare_run_folder(tmp_path, "auto", overwrite=False, config=other)


def test_resume_auto_continues_last_and_an_explicit_checkpoint_must_exist(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.safetensors").write_bytes(b"x")
    (run / "best.safetensors").write_bytes(b"x")
    assert prepare_run_folder(run, "auto", overwrite=False) == run / "last.safetensors"
    assert prepare_run_folder(run, str(run / "last.safetensors"), overwrite=False) == run / "last.safetensors"
    with pytest.raises(ConfigError, match="no such checkpoint"):
        prepare_run_folder(run, str(run / "gone.safetensors"), overwrite=False)
    (tmp_path / "elsewhere.safetensors").write_bytes(b"x")
    with pytest.raises(ConfigError, match="continues another folder's run"):
        prepare_run_folder(run, str(tmp_path / "elsewhere.safetensors"), overwrite=False)


def test_every_key_outside_the_safe_list_must_match_on_resume():
    base = config_to_dict(Config())
    for section, values in base.items():
        for key, value in values.items():
            changed = {s: dict(v) for s, v in base.items()}
            changed[section][key] = "something else" if value != "something else" else "x"
            differences = resume_differences(base, changed)
            if f"{section}.{key}" in SAFE_ON_RESUME:
                assert differences == [], key
            else:
                assert len(differences) == 1 and differences[0].startswith(f"{section}.{key} "), key


def test_the_safe_list_names_only_real_keys():
    keys = {f"{s}.{k}" for s, values in config_to_dict(Config()).items() for k in values}
    assert set(SAFE_ON_RESUME) <= keys


def test_a_key_the_checkpoint_does_not_know_is_not_compared():
    saved = config_to_dict(Config())
    del saved["model"]["stem"]
    current = config_to_dict(load_config(None, ["model.stem=sps"]))
    assert resume_differences(saved, current) == []


def test_a_longer_run_on_resume_lays_its_schedule_over_the_new_length(tmp_path):
    model = torch.nn.Linear(2, 2)
    config = Config()
    optimizer = build_optimizer(model, config.optim)
    short = build_scheduler(optimizer, config.optim, epochs=2, steps_per_epoch=10)
    save_training_state(tmp_path / "last.safetensors", model=model, optimizer=optimizer, scheduler=short,
                        scaler=None, ema=None, position=Position(epoch=1, step=10), config=config_to_dict(config))
    optimizer = build_optimizer(model, config.optim)
    longer = build_scheduler(optimizer, config.optim, epochs=4, steps_per_epoch=10)
    load_training_state(tmp_path / "last.safetensors", model=model, optimizer=optimizer, scheduler=longer,
                        scaler=None, ema=None)
    assert longer.t_initial == 40
    fresh = build_scheduler(build_optimizer(model, config.optim), config.optim, epochs=4, steps_per_epoch=10)
    assert longer._get_lr(15) == fresh._get_lr(15)


# --- files rewritten in place: never left half written ----------------------------------------------------


def on_a_full_disk(limit: int, function, *args) -> str:
    """Call ``function(*args)`` in a forked child whose writes past ``limit`` bytes of a file the kernel refuses
    (EFBIG; no mocks: a full disk's ENOSPC, or a kill mid-write, leaves a file cut short the same way). Return
    how it ended: "returned", or the name of the exception it raised."""
    import resource
    import signal

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its own output goes nowhere (the limit would cut pytest's capture files too)
        outcome = "returned"
        try:
            os.close(read)
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            # A forked child must not enter OpenMP's thread pool that the parent started (training in the same
            # process before this test): it would wait forever on threads that were not copied by fork.
            torch.set_num_threads(1)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
            function(*args)
        except BaseException as error:  # noqa: BLE001 (reported to the parent, whatever it is)
            outcome = type(error).__name__
        finally:
            os.write(write, outcome.encode())
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        outcome = pipe.read()
    os.waitpid(pid, 0)
    return outcome


def temporaries(folder) -> list[str]:
    return sorted(path.name for path in folder.glob(".*.tmp"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE semantics are Linux's")
def test_a_resume_that_cannot_finish_rewriting_metrics_csv_keeps_every_row(tmp_path):
    # A resume drops the rows of the epochs it redoes by rewriting metrics.csv. Written in place, a kill or a
    # full disk half-way lost the rows of finished epochs for good; now the old file stays until the new one is
    # complete.
    from spikformer.train.loop import trim_metrics

    path = tmp_path / "metrics.csv"
    path.write_text("epoch,lr,train_loss\n" + "".join(f"{e},0.0012345678901234,1.234567890123456\n"
                                                      for e in range(1, 41)))
    before = path.read_text()
    assert on_a_full_disk(1024, trim_metrics, path, 30) == "OSError"  # the kept rows are larger than 1 KiB
    assert path.read_text() == before and temporaries(tmp_path) == []
    trim_metrics(path, 30)  # the next resume trims it
    assert path.read_text().splitlines() == before.splitlines()[:31]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE semantics are Linux's")
def test_a_restart_that_cannot_finish_rewriting_config_yaml_leaves_a_folder_the_next_restart_takes(tmp_path):
    # A run that saved nothing but its config.yaml may start again (see above). Its restart rewrites config.yaml;
    # written in place, a kill or a full disk half-way left a cut-short config.yaml, and every later start was
    # refused as "already holds a run" (only --overwrite helped).
    from test_robustness_faults import tiny

    from spikformer.train import Trainer

    def start() -> None:
        Trainer(load_config(None, tiny(tmp_path / "run", "train.epochs=1", "train.resume=auto"))).fit()

    # 16 KiB: config.yaml (about 2 KiB) is written, the first checkpoint (about 130 KiB) is not.
    assert on_a_full_disk(16 * 1024, start) == "OSError"
    # (and the TensorBoard folder where tensorboard is installed: the same run's curves, not an earlier run's)
    # train.log holds the failed start's messages; the restart appends to it.
    left = sorted(p.name for p in (tmp_path / "run").iterdir() if p.name not in (LOCK_FILE, "tensorboard"))
    assert left == ["config.yaml", "train.log"]
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert on_a_full_disk(1024, start) == "OSError"  # config.yaml itself does not fit
    assert (tmp_path / "run" / "config.yaml").read_text() == saved and temporaries(tmp_path / "run") == []
    start()
    assert (tmp_path / "run" / "last.safetensors").exists()


# --- the lock file is ours, and bound to the folder it was taken in -----------------------------------------


def test_a_lock_file_that_is_a_symbolic_link_is_refused_and_its_target_is_untouched(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / LOCK_FILE).symlink_to(target)
    with pytest.raises(ConfigError, match=r"\.spikformer\.lock is a symbolic link.*remove it"):
        RunFolderLock(tmp_path / "run").acquire()
    assert target.read_text() == "keep me\n"


def test_a_lock_file_with_other_hard_links_is_refused_and_left_untouched(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    (tmp_path / "run").mkdir()
    os.link(target, tmp_path / "run" / LOCK_FILE)
    with pytest.raises(ConfigError, match=r"\.spikformer\.lock has other names .*remove it"):
        RunFolderLock(tmp_path / "run").acquire()
    assert target.read_text() == "keep me\n"


def test_a_locked_folder_that_is_renamed_is_detected_naming_where_it_went_and_stays_locked(tmp_path):
    lock = RunFolderLock(tmp_path / "run").acquire()
    lock.check_in_place()  # where it was taken: nothing to say
    (tmp_path / "run").rename(tmp_path / "moved")
    with pytest.raises(ConfigError, match=r"run folder .*run was moved or removed while this run wrote it "
                                          r"\(it is now .*moved\).*train.out_dir="):
        lock.check_in_place()
    with pytest.raises(ConfigError, match="is in use by another run"):  # the lock went with the folder
        RunFolderLock(tmp_path / "moved").acquire()
    (tmp_path / "run").mkdir()  # another folder under the old name is another folder
    with pytest.raises(ConfigError, match="was moved or removed"):
        lock.check_in_place()
    lock.release()
    assert not (tmp_path / "moved" / LOCK_FILE).exists()


def test_a_run_whose_folder_is_renamed_mid_run_stops_with_exit_2_and_never_recreates_the_old_path(
        tmp_path, monkeypatch, capsys):
    from test_robustness_faults import tiny

    from spikformer.cli import main
    from spikformer.train.loop import RunLoop

    step = RunLoop.optimizer_step

    def step_then_rename(self):
        step(self)
        if self.position.step == 2:
            (tmp_path / "run").rename(tmp_path / "moved")

    monkeypatch.setattr(RunLoop, "optimizer_step", step_then_rename)
    config = tmp_path / "empty.yaml"
    config.write_text("{}\n")
    code = main(["train", "--config", str(config), *tiny(tmp_path / "run", "train.save_every_steps=1",
                                                           "train.threads=1")])
    assert code == 2
    assert "was moved or removed while this run wrote it" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert (tmp_path / "moved" / "last.safetensors").exists()  # the state up to step 1, where it went
