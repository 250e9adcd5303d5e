"""Data-parallel training: two processes on the CPU (gloo) behave as one process on the same global batch.

BatchNorm statistics are frozen (``train.freeze_bn``) for the comparison: with live statistics each rank
normalises its own half-batch, which by design differs from normalising the whole batch.
"""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from spikformer.checkpoint import read_checkpoint, unwrap_model
from spikformer.config import load_config
from spikformer.data import ResumableSampler
from spikformer.errors import ConfigError
from spikformer.ssl import build_masked_model
from spikformer.train import Trainer
from spikformer.train.distributed import gradient_accumulation_steps

# 20 digits (2 per class): 2 optimizer steps of 8 images per epoch, whatever the split into processes.
COMMON = [
    "model.embed_dim=16", "model.depth=1", "model.num_heads=2", "model.T=2", "model.img_size=16",
    "model.in_chans=1", "data.name=digits", "data.train_fraction=0.014", "data.shift=2", "data.eval_batch_size=90",
    "data.global_batch_size=8", "optim.name=sgd", "optim.lr=0.2", "optim.momentum=0.9", "optim.weight_decay=0.01",
    "optim.warmup_epochs=0", "train.epochs=2", "train.eval_every=2", "train.freeze_bn=true", "train.ema_decay=0.5",
    'train.amp="off"', "train.device=cpu", "train.threads=1", "train.progress=false", "train.tensorboard=false",
    "train.deterministic=true",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_rank(rank: int, world_size: int, port: int, out_dir: str, overrides: list[str]) -> None:
    """One process of the data-parallel run (what torchrun would start); saves its own final weights."""
    from spikformer.train.distributed import shutdown_distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size), OMP_NUM_THREADS="1")
    try:
        trainer = Trainer(load_config(None, overrides))
        trainer.fit()
        torch.save({"model": unwrap_model(trainer.model).state_dict(), "ema": trainer.ema.module.state_dict(),
                    "accum_steps": trainer.accum_steps},
                   Path(out_dir) / f"rank{rank}.pt")
    finally:
        shutdown_distributed()


def read_metrics(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def single_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    trainer = Trainer(load_config(None, [*COMMON, "data.batch_size=8", f"train.out_dir={out}"]))
    trainer.fit()
    return out, unwrap_model(trainer.model).state_dict(), trainer.ema.module.state_dict()


def test_two_processes_match_one_process_on_the_same_global_batch(tmp_path, single_process_run):
    single_dir, single_model, single_ema = single_process_run
    out = tmp_path / "ddp"
    overrides = [*COMMON, "data.batch_size=2", f"train.out_dir={out}"]  # 2 ranks x 2 images x 2 accumulation steps
    # fork where the platform has it: the children inherit the imported modules instead of importing them again
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(run_rank, args=(2, free_port(), str(tmp_path), overrides), nprocs=2, join=True,
                       start_method=method)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert ranks[0]["accum_steps"] == 2

    for key, value in ranks[0]["model"].items():  # both ranks end with the same weights and the same EMA
        assert torch.equal(value, ranks[1]["model"][key]), key
    for key, value in ranks[0]["ema"].items():
        assert torch.equal(value, ranks[1]["ema"][key]), key
    for key, value in single_model.items():  # ... which are the single process's, to float tolerance
        torch.testing.assert_close(ranks[0]["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
        torch.testing.assert_close(ranks[0]["ema"][key], single_ema[key], rtol=1e-5, atol=1e-6, msg=key)

    # Only rank 0 wrote the run folder: one row per epoch, with losses and accuracies reduced over both ranks.
    ddp_rows, single_rows = read_metrics(out / "metrics.csv"), read_metrics(single_dir / "metrics.csv")
    assert [row["epoch"] for row in ddp_rows] == ["1", "2"]
    for ddp, single in zip(ddp_rows, single_rows):
        for column in ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5"):
            if single[column] or ddp[column]:  # validation runs after the last epoch only (train.eval_every=2)
                assert float(ddp[column]) == pytest.approx(float(single[column]), rel=1e-5, abs=1e-6), column
    assert ddp_rows[-1]["val_top1"]
    _, meta = read_checkpoint(out / "last.safetensors")
    assert meta["position"]["epoch"] == 2 and meta["position"]["step"] == 4
    assert set(meta["rng_ranks"]) == {"1"}  # rank 1's random state is kept for an exact resume


@pytest.mark.slow  # the spawned test above covers the same training; this proves the torchrun command line
def test_torchrun_launches_the_train_command(tmp_path, single_process_run):
    single_dir, single_model, _ = single_process_run
    out = tmp_path / "run"
    (tmp_path / "empty.yaml").write_text("{}\n")  # the overrides hold the whole run
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(free_port()),
               "-m", "spikformer", "train", "--config", str(tmp_path / "empty.yaml"), *COMMON, "data.batch_size=2",
               f"train.out_dir={out}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    tensors, _ = read_checkpoint(out / "last.safetensors")
    for key, value in single_model.items():
        torch.testing.assert_close(tensors[f"model.{key}"], value, rtol=1e-5, atol=1e-6, msg=key)
    assert result.stdout.count("global batch 8 = data.batch_size 2 x 2 processes x 2 accumulation steps") == 1
    assert result.stdout.count("best val top-1") == 1  # the command's report: rank 0's alone


def test_training_shards_are_disjoint_and_equally_long():
    shards = [ResumableSampler(10, 2, shuffle=True, seed=3, rank=r, world_size=3) for r in range(3)]
    indices = [s.epoch_indices() for s in shards]
    assert [len(i) for i in indices] == [4, 4, 4]  # padded to ceil(10 / 3): every rank takes the same steps
    flat = sum(indices, [])
    assert set(flat) == set(range(10)) and len(flat) == 12  # all samples, two of them twice


def test_evaluation_shards_count_every_sample_once():
    shards = [ResumableSampler(10, 4, shuffle=False, rank=r, world_size=3, pad=False) for r in range(3)]
    indices = [list(s) for s in shards]
    assert sorted(sum(indices, [])) == list(range(10))
    assert [len(s) for s in shards] == [4, 3, 3]


def test_a_resumed_sampler_continues_the_same_epoch_order():
    sampler = ResumableSampler(12, 3, shuffle=True, seed=1)
    sampler.set_epoch(4)
    full = list(sampler)
    sampler.set_epoch(4, start_batch=2)
    assert list(sampler) == full[6:]
    sampler.set_epoch(5)
    assert list(sampler) != full  # a new epoch, a new order


def test_global_batch_size_sets_the_accumulation_for_any_number_of_processes():
    assert gradient_accumulation_steps(24, 1, 1, 192) == 8  # the ImageNet recipe on one GPU
    assert gradient_accumulation_steps(24, 8, 1, 192) == 1  # ... and on the paper's eight
    assert gradient_accumulation_steps(48, 2, 1, 192) == 2
    assert gradient_accumulation_steps(24, 4, 3, None) == 3  # without a global batch, accum_steps is used
    with pytest.raises(ConfigError, match="data.batch_size=16"):
        gradient_accumulation_steps(24, 3, 1, 192)
    with pytest.raises(ConfigError, match="contradicts"):
        gradient_accumulation_steps(24, 1, 4, 192)


# --- masked pre-training and the run loop's agreements, on two processes ----------------------------------

# The shipped pre-training config, shrunk: 20 digits, 2 optimizer steps of 8 images per epoch. Random shifts are
# off (each process draws its own, by design); the masks are drawn per sample, the same on any process. SGD
# rather than AdamW: the key bias of the decoder's attention gets a gradient of rounding noise only (softmax
# ignores it), which Adam's normalisation turns into steps of the learning rate's size on one side or the other.
PRETRAIN = Path(__file__).resolve().parents[1] / "configs" / "digits_v2_pretrain.yaml"
PRETRAIN_COMMON = [
    "model.embed_dim=16", "model.num_heads=2", "model.depth=1", "model.img_size=16", "ssl.decoder_dim=16",
    "ssl.decoder_heads=2", "ssl.decoder_depth=1", "ssl.num_visualize=0", "data.train_fraction=0.014",
    "data.shift=0", "data.eval_batch_size=90", "data.global_batch_size=8", "optim.warmup_epochs=0",
    "optim.name=sgd", "optim.lr=0.1", "optim.momentum=0.9", "train.epochs=2", "train.freeze_bn=true",
    "train.device=cpu", "train.threads=1", "train.progress=false", "train.deterministic=true",
]
RUN_TIMEOUT = 120  # seconds a two-process run of this size may take on a loaded CI machine; past it, a hang


def pretrain_argv(out_dir: Path, *extra: str) -> list[str]:
    return ["pretrain", "--config", str(PRETRAIN), *PRETRAIN_COMMON, f"train.out_dir={out_dir}", *extra]


def nan_on_rank1_at_third_micro_batch(rank: int) -> None:
    from spikformer.ssl.pretrain import MaskedPretrainingTask

    step, calls = MaskedPretrainingTask.step, []

    def poisoned(self, loop, batch):
        loss, stats = step(self, loop, batch)
        calls.append(1)
        return (loss * float("nan"), stats) if rank == 1 and len(calls) == 3 else (loss, stats)

    MaskedPretrainingTask.step = poisoned


def sigterm_to_rank1_after_step_3(rank: int) -> None:
    """What a scheduler's preemption of one process looks like: rank 1 alone gets SIGTERM, mid-epoch 2."""
    from spikformer.train.loop import RunLoop

    step = RunLoop.optimizer_step

    def step_then_signal(self):
        step(self)
        if rank == 1 and self.position.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    RunLoop.optimizer_step = step_then_signal


def cli_rank(rank: int, world_size: int, port: int, argv: list[str] | list[list[str]], result_dir: str,
             fault: str | None) -> None:
    """One process of a ``torchrun ... -m spikformer <argv>`` run (``argv[rank]`` when given one per rank);
    writes its exit code and stderr."""
    import contextlib
    import io
    import json

    from spikformer.cli import main

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size), OMP_NUM_THREADS="1")
    if fault:
        globals()[fault](rank)
    if argv and isinstance(argv[0], list):  # each rank its own command line, as a multi-node launcher may start them
        argv = argv[rank]
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = main(argv)
    (Path(result_dir) / f"rank{rank}.json").write_text(json.dumps({"code": code, "stderr": stderr.getvalue()}))


def run_cli_ranks(argv: list[str], result_dir: Path, fault: str | None = None, world_size: int = 2) -> list[dict]:
    """``spikformer <argv>`` on ``world_size`` processes (gloo); fails the test if they have not all ended
    within ``RUN_TIMEOUT`` (a hang). Returns each rank's exit code and stderr."""
    import json
    import time

    result_dir.mkdir(parents=True, exist_ok=True)
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    context = mp.start_processes(cli_rank, args=(world_size, free_port(), argv, str(result_dir), fault),
                                 nprocs=world_size, join=False, start_method=method)
    deadline = time.monotonic() + RUN_TIMEOUT
    try:
        while not context.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                pytest.fail(f"the {world_size} processes did not end within {RUN_TIMEOUT} s: a hang")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    return [json.loads((result_dir / f"rank{r}.json").read_text()) for r in range(world_size)]


@pytest.fixture(scope="module")
def pretraining_on_two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain_ddp")
    try:
        results = run_cli_ranks(pretrain_argv(out / "run", "data.batch_size=2"), out / "ranks")
    finally:
        torch.use_deterministic_algorithms(False)  # train.deterministic sets a process-wide flag
    assert [r["code"] for r in results] == [0, 0], results
    return out / "run"


def test_pretraining_on_two_processes_matches_one_process_on_the_same_global_batch(tmp_path,
                                                                                   pretraining_on_two_processes):
    from spikformer.cli import main

    single = tmp_path / "single"
    try:
        assert main(pretrain_argv(single, "data.batch_size=8")) == 0
    finally:
        torch.use_deterministic_algorithms(False)
    ddp_state, ddp_meta = read_checkpoint(pretraining_on_two_processes / "last.safetensors")
    single_state, _ = read_checkpoint(single / "last.safetensors")
    weights = [k for k in single_state if k.startswith("model.")]
    assert any(k.startswith("model.decoder.") for k in weights) and any(k.startswith("model.encoder.") for k in weights)
    torch.manual_seed(0)  # train.seed: the initial weights, to show that the runs moved well past the tolerance
    initial = build_masked_model(load_config(PRETRAIN, PRETRAIN_COMMON)).state_dict()
    moved = max(float((single_state[f"model.{k}"] - v).abs().max()) for k, v in initial.items()
                if v.is_floating_point())
    assert moved > 1e-2
    for key in weights:  # encoder and decoder, to float tolerance
        torch.testing.assert_close(ddp_state[key], single_state[key], rtol=1e-5, atol=1e-6, msg=key)
    assert ddp_meta["position"]["step"] == 4 and set(ddp_meta["rng_ranks"]) == {"1"}
    ddp_rows = read_metrics(pretraining_on_two_processes / "metrics.csv")
    single_rows = read_metrics(single / "metrics.csv")
    assert [row["epoch"] for row in ddp_rows] == ["1", "2"]
    for ddp, one in zip(ddp_rows, single_rows):
        for column in ("train_loss", "val_loss"):
            assert float(ddp[column]) == pytest.approx(float(one[column]), rel=1e-5), column


def test_a_non_finite_loss_on_one_process_stops_every_process_with_exit_1(tmp_path):
    results = run_cli_ranks(pretrain_argv(tmp_path / "run", "data.batch_size=2"), tmp_path / "ranks",
                            fault="nan_on_rank1_at_third_micro_batch")
    assert [r["code"] for r in results] == [1, 1]
    # epoch 1, micro-batch 3 is the first of optimizer step 2; both processes stop before its backward pass
    assert "error: non-finite loss (nan) at epoch 1, batch 3 (optimizer step 2)" in results[1]["stderr"]
    assert "error: non-finite loss on another process (here " in results[0]["stderr"]
    assert "at epoch 1, batch 3 (optimizer step 2)" in results[0]["stderr"]
    assert all("Traceback" not in r["stderr"] for r in results)


def test_sigterm_to_one_process_saves_and_stops_every_process_and_the_resume_logs_an_uninterrupted_run(
        tmp_path, pretraining_on_two_processes):
    out = tmp_path / "run"
    argv = pretrain_argv(out, "data.batch_size=2")
    try:
        stopped = run_cli_ranks(argv, tmp_path / "stopped", fault="sigterm_to_rank1_after_step_3")
        saved = read_checkpoint(out / "last.safetensors")[1]["position"]
        resumed = run_cli_ranks([*argv, "--resume", "auto"], tmp_path / "resumed")
    finally:
        torch.use_deterministic_algorithms(False)
    assert [r["code"] for r in stopped] == [128 + signal.SIGTERM] * 2, stopped
    assert all("interrupted by SIGTERM; state saved to" in r["stderr"] for r in stopped)
    assert (saved["epoch"], saved["batch"], saved["step"]) == (1, 2, 3)  # mid-epoch 2, right after that step
    assert [r["code"] for r in resumed] == [0, 0], resumed

    final, _ = read_checkpoint(out / "last.safetensors")
    expected, _ = read_checkpoint(pretraining_on_two_processes / "last.safetensors")
    different = [key for key in expected if not torch.equal(final[key], expected[key])]
    assert sorted(final) == sorted(expected) and not different, different[:5]  # weights, optimizer, both RNGs
    # Each process got its own partial sums of the interrupted epoch back: the logged loss is the same.
    rows, expected_rows = read_metrics(out / "metrics.csv"), read_metrics(pretraining_on_two_processes / "metrics.csv")
    assert [(r["epoch"], r["train_loss"], r["val_loss"]) for r in rows] == \
        [(r["epoch"], r["train_loss"], r["val_loss"]) for r in expected_rows]


def torchrun(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(free_port()),
            "-m", "spikformer", *argv]


@pytest.mark.slow  # the spawned runs above cover the same pre-training; this proves the command line
def test_torchrun_launches_the_pretrain_command(tmp_path, pretraining_on_two_processes):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(torchrun(pretrain_argv(tmp_path / "run", "data.batch_size=2")), capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    tensors, _ = read_checkpoint(tmp_path / "run" / "last.safetensors")
    expected, _ = read_checkpoint(pretraining_on_two_processes / "last.safetensors")
    assert all(torch.equal(tensors[key], expected[key]) for key in expected if key.startswith("model."))
    assert result.stdout.count("encoder saved to") == 1  # the command's report: rank 0's alone


@pytest.mark.slow  # test_a_worker_gets_sigterm_when_its_launcher_is_killed_outright covers the mechanism
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_killing_torchrun_outright_leaves_no_worker_behind(tmp_path):
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    out = tmp_path / "run"
    launcher = subprocess.Popen(torchrun(pretrain_argv(out, "data.batch_size=2", "train.epochs=100000")),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    workers: list[int] = []
    try:
        for line in launcher.stdout:  # rank 0 prints a summary after each epoch
            if line.startswith("epoch 2/"):
                break
        workers = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and parent_of(p) == launcher.pid]
        assert len(workers) == 2
        launcher.kill()
        launcher.wait(timeout=30)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(worker_alive(w) for w in workers):
            time.sleep(0.1)
        assert not any(worker_alive(w) for w in workers), "workers outlived torchrun"
        rest = launcher.stdout.read()  # the workers shared torchrun's output
        assert rest.count("training interrupted by SIGTERM; state saved to") == 2, rest[-3000:]
    finally:
        launcher.kill()
        for worker in workers:
            if worker_alive(worker):
                os.kill(worker, signal.SIGKILL)


def parent_of(proc: Path) -> int | None:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_worker_gets_sigterm_when_its_launcher_is_killed_outright():
    import time

    from spikformer.train.distributed import stop_with_parent

    read_end, write_end = os.pipe()
    launcher = os.fork()
    if launcher == 0:  # the launcher starts its worker as torchrun does: in a session of its own
        try:
            if os.fork() == 0:
                os.setsid()
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.write(write_end, f"{os.getpid()} {stop_with_parent()}\n".encode())
            time.sleep(120)
        finally:
            os._exit(0)
    worker, supported = os.read(read_end, 100).decode().split()
    worker = int(worker)
    try:
        assert supported == "True"
        os.kill(launcher, signal.SIGKILL)  # the launcher cannot pass anything on
        os.waitpid(launcher, 0)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and worker_alive(worker):
            time.sleep(0.05)
        assert not worker_alive(worker), "the worker outlived its launcher"
    finally:
        os.close(read_end)
        os.close(write_end)
        if worker_alive(worker):
            os.kill(worker, signal.SIGKILL)


def worker_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie has ended; only its exit status waits to be collected


def test_partial_epoch_sums_resume_per_rank_or_all_on_rank_0_for_another_number_of_processes():
    from spikformer.train.loop import own_epoch_sums
    from spikformer.train.state import Position

    ranks = [{"loss": 1.0, "count": 4.0, "time": 2.0}, {"loss": 3.0, "count": 4.0, "time": 5.0}]
    saved = Position(1, 4, 6, epoch_sums=ranks[0], rank_epoch_sums=ranks)
    assert [own_epoch_sums(saved, rank, 2) for rank in (0, 1)] == saved.rank_epoch_sums  # each its own
    # Resumed on one process or on three: rank 0 carries the whole partial epoch (with its own time), the rest none.
    assert own_epoch_sums(saved, 0, 1) == {"loss": 4.0, "count": 8.0, "time": 2.0}
    assert [own_epoch_sums(saved, rank, 3) for rank in (1, 2)] == [{}, {}]
    single = Position(1, 4, 6, epoch_sums={"loss": 1.0, "count": 4.0})  # a one-process (or older) checkpoint
    assert own_epoch_sums(single, 0, 2) == {"loss": 1.0, "count": 4.0} and own_epoch_sums(single, 1, 2) == {}


# --- every rank runs the same config ----------------------------------------------------------------------------


@pytest.mark.parametrize("rank1, named", [
    (["optim.lr=0.2"], "optim.lr (rank 0: 0.1, rank 1: 0.2)"),
    (["data.batch_size=4", "train.eval_every=2"], "data.batch_size (rank 0: 2, rank 1: 4); train.eval_every "
                                                  "(rank 0: 1, rank 1: 2)"),
], ids=["lr", "batch and eval_every"])
def test_processes_started_with_different_configs_all_exit_2_naming_the_differing_keys(tmp_path, rank1, named):
    # Started by hand with different overrides, as multi-node launchers start each node's processes: unnoticed,
    # different batch counts hang a collective and different learning rates train different models.
    argv = pretrain_argv(tmp_path / "run", "data.batch_size=2", "data.global_batch_size=null")
    results = run_cli_ranks([argv, [*argv, *rank1]], tmp_path / "ranks")
    assert [r["code"] for r in results] == [2, 2], results
    for result in results:
        assert f"the processes were started with different configs: {named}; start every process" \
            in result["stderr"], result["stderr"]
        assert result["stderr"].count("\n") == 1 and "Traceback" not in result["stderr"]
    assert not (tmp_path / "run" / "last.safetensors").exists()


def test_config_differences_between_ranks_ignore_what_is_local_to_a_machine():
    from spikformer.config import Config, config_to_dict
    from spikformer.train.distributed import RANK_LOCAL_KEYS, config_differences

    base = config_to_dict(Config())
    other = config_to_dict(Config())
    for name in RANK_LOCAL_KEYS:
        section, key = name.split(".")
        other[section][key] = "elsewhere" if isinstance(base[section][key], str | None) else 3
    assert config_differences([base, other, base]) == []
    other["model"]["T"] = 8
    assert config_differences([base, base, other]) == [f"model.T (rank 0: {base['model']['T']}, rank 2: 8)"]
