"""Data loaders whose order is a function of (seed, epoch) alone, so a run can resume mid-epoch exactly.

``ResumableSampler`` shuffles with its own generator seeded by ``seed + epoch``, shards across ranks like
``DistributedSampler``, and can start part-way through an epoch (``set_epoch(epoch, start_batch)``).
Training shards are padded to equal length (every rank must take the same number of steps); evaluation
shards are not, so that every sample is counted exactly once when metrics are summed over ranks.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class ResumableSampler(Sampler[int]):
    """This rank's sample indices for one epoch: ``order[rank::world_size]`` of a permutation that depends on
    (seed, epoch) alone, from batch ``start_batch`` on. ``pad``: repeat samples so every rank gets
    ``ceil(N / world_size)`` (or, with ``drop_last``, ``N // world_size``)."""

    def __init__(self, dataset_size: int, batch_size: int, shuffle: bool, seed: int = 0, rank: int = 0,
                 world_size: int = 1, drop_last: bool = False, pad: bool = True) -> None:
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        self.start_batch = 0
        self.pad = pad
        if drop_last:
            self.per_rank = dataset_size // world_size
        elif pad:
            self.per_rank = math.ceil(dataset_size / world_size)
        else:
            self.per_rank = len(range(rank, dataset_size, world_size))

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def epoch_indices(self) -> list[int]:
        """This rank's indices for the whole current epoch."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.dataset_size, generator=generator).tolist()
        else:
            order = list(range(self.dataset_size))
        if not self.pad and not self.drop_last:
            return order[self.rank::self.world_size]
        total = self.per_rank * self.world_size
        if total > len(order):  # pad by repeating, as DistributedSampler does
            order += order[: total - len(order)]
        return order[:total][self.rank:total:self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices()[self.start_batch * self.batch_size:])

    def __len__(self) -> int:
        return max(0, self.per_rank - self.start_batch * self.batch_size)

    def batches_per_epoch(self) -> int:
        return self.per_rank // self.batch_size if self.drop_last else math.ceil(self.per_rank / self.batch_size)


def build_loader(dataset: Dataset, batch_size: int, train: bool, seed: int = 0, num_workers: int = 0,
                 rank: int = 0, world_size: int = 1, pin_memory: bool = False) -> DataLoader:
    """A loader over ``dataset``. Training loaders shuffle per epoch and drop the last partial batch when the
    dataset holds more than one batch (BatchNorm needs more than one sample)."""
    drop_last = train and len(dataset) // world_size > batch_size
    sampler = ResumableSampler(len(dataset), batch_size, shuffle=train, seed=seed, rank=rank,
                               world_size=world_size, drop_last=drop_last, pad=train)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=drop_last,
        pin_memory=pin_memory, persistent_workers=False, generator=generator,
        worker_init_fn=_seed_worker if num_workers else None,
    )


def _seed_worker(worker_id: int) -> None:
    # numpy and random in workers follow torch's per-worker seed, so augmentation is reproducible.
    import random

    import numpy as np

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
