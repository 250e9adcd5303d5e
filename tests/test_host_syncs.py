"""The training hot loop reads the device from the host only where it must: once per micro-batch.

On a GPU every read of a tensor's value from Python (``bool``, ``float``, ``int``, ``.item()``, ``.tolist()``)
waits for the queued kernels: a host synchronisation. On the CPU the same reads are counted here, by the
source line of the project that makes them, which is how a CUDA run would count them.
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import pytest
import torch

from spikformer.cli import main

ROOT = Path(__file__).resolve().parents[1]
SRC = str(ROOT / "src" / "spikformer")
READS = ("__bool__", "__float__", "__int__", "__index__", "item", "tolist")
TINY = [
    "model.embed_dim=16",
    "model.num_heads=2",
    "model.depth=1",
    "model.T=2",
    "model.img_size=8",
    "model.patch_size=4",
    "data.train_fraction=0.1",
    "data.batch_size=32",
    "train.epochs=1",
    "train.progress=false",
    "train.tensorboard=false",
]


class HostReads:
    """Counts reads of tensor values made by the project's code under ``folders`` (relative to the package)."""

    def __init__(self, monkeypatch, *folders: str) -> None:
        self.where: collections.Counter[str] = collections.Counter()
        self.active = False
        prefixes = tuple(str(Path(SRC, folder)) for folder in folders)
        for name in READS:
            original = getattr(torch.Tensor, name)

            def read(tensor, *args, _original=original, **kwargs):
                caller = sys._getframe(1)
                if self.active and caller.f_code.co_filename.startswith(prefixes):
                    self.where[f"{Path(caller.f_code.co_filename).name}:{caller.f_lineno}"] += 1
                return _original(tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, read)

    @property
    def total(self) -> int:
        return sum(self.where.values())


def test_gpu_spike_packing_reads_the_device_once_per_saved_tensor(monkeypatch):
    from spikformer.fast.memory import _pack_bits_torch

    # the packing path of devices without the C kernel (GPUs)
    reads = HostReads(monkeypatch, "fast/memory.py")
    reads.active = True
    assert _pack_bits_torch((torch.rand(8192) < 0.2).float()) is not None
    assert _pack_bits_torch(torch.randn(8192)) is None
    assert reads.total == 2, reads.where


def test_a_gpu_training_forward_packs_spikes_only_when_the_policy_pays_its_reads():
    import spikformer
    from spikformer.fast import FastPolicy, accelerate

    model = spikformer.create_model("spikformer_cifar_4_256", embed_dim=16, depth=1, num_heads=2, img_size=8,
                                    patch_size=4, T=1).train()
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 1)
    assert model.packs_saved_spikes(cpu) and not model.packs_saved_spikes(gpu)  # no read per tensor by default
    accelerate(model, policy=FastPolicy(pack_spikes_off_cpu=True))
    assert model.packs_saved_spikes(gpu)
    assert not model.eval().packs_saved_spikes(cpu)  # inference saves nothing for a backward pass


def test_training_step_reads_the_device_once_per_micro_batch(monkeypatch, tmp_path):
    from spikformer.train.loop import RunLoop

    reads = HostReads(monkeypatch, "train")
    micro_batches = []
    train_one_epoch, optimizer_step = RunLoop.train_one_epoch, RunLoop.optimizer_step

    def counted_epoch(self, epoch):
        reads.active = True
        try:
            return train_one_epoch(self, epoch)
        finally:
            reads.active = False

    def counted_step(self):  # one micro-batch per optimizer step (no accumulation)
        micro_batches.append(1)
        return optimizer_step(self)

    monkeypatch.setattr(RunLoop, "train_one_epoch", counted_epoch)
    monkeypatch.setattr(RunLoop, "optimizer_step", counted_step)
    config = str(ROOT / "configs" / "digits.yaml")
    assert main(["train", "--config", config, *TINY, f"train.out_dir={tmp_path / 'run'}"]) == 0
    # one read per micro-batch (the loss and the accuracy count together, which the non-finite policy needs
    # before the backward pass), and one when the epoch's checkpoint checks its weights are finite
    assert len(micro_batches) == 4
    assert reads.total == len(micro_batches) + 1, reads.where


@pytest.mark.parametrize("batches", [1, 3])
def test_evaluation_reads_the_device_once(monkeypatch, batches):
    import spikformer
    from spikformer.train.engine import evaluate

    model = spikformer.create_model(
        "spikformer_cifar_4_256", embed_dim=16, depth=1, num_heads=2, img_size=8, patch_size=4, T=1
    )
    loader = [(torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))) for _ in range(batches)]
    reads = HostReads(monkeypatch, "train")
    reads.active = True
    result = evaluate(model, loader, torch.device("cpu"))
    assert result["count"] == 4 * batches
    assert reads.total == 1, reads.where
