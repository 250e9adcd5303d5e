"""Data-parallel training: two processes on the CPU (gloo) behave as one process on the same global batch.

BatchNorm statistics are frozen (``train.freeze_bn``) for the comparison: with live statistics each rank
normalises its own half-batch, which by design differs from normalising the whole batch.
"""

from __future__ import annotations

import csv
import os
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
    assert [row["epoch"] for row in ddp_rows] == ["0", "1"]
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
