"""Data loaders whose order is a function of (seed, epoch) alone, so a run can resume mid-epoch exactly.

``ResumableSampler`` shuffles with its own generator seeded by ``seed + epoch``, shards across ranks like
``DistributedSampler``, and can start part-way through an epoch (``set_epoch(epoch, start_batch)``).
Training shards are padded to equal length (every rank must take the same number of steps); evaluation
shards are not, so that every sample is counted exactly once when metrics are summed over ranks.

Random augmentation: with ``num_workers=0`` it draws from the process's RNGs, which a checkpoint stores. Worker
processes have RNGs of their own that no checkpoint can see, so a training loader with workers seeds them
per sample from (seed, epoch, rank, position) instead (``SeededSamples``): a sample's augmentation is then
the same whatever the number of workers and wherever the epoch was resumed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import SpikformerError


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
        self.seeded = False  # yield (index, per-sample seed) pairs for ``SeededSamples``
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
            generator = torch.Generator().manual_seed((self.seed * 100_003 + self.epoch) % 2**63)
            order = torch.randperm(self.dataset_size, generator=generator).tolist()
        else:
            order = list(range(self.dataset_size))
        if not self.pad and not self.drop_last:
            return order[self.rank::self.world_size]
        total = self.per_rank * self.world_size
        if total > len(order):  # pad by repeating, as DistributedSampler does
            order += order[: total - len(order)]
        return order[:total][self.rank:total:self.world_size]

    def __iter__(self) -> Iterator[int] | Iterator[tuple[int, int]]:
        start = self.start_batch * self.batch_size
        indices = self.epoch_indices()[start:]
        if not self.seeded:
            return iter(indices)
        base = (self.seed * 1_000_003 + self.epoch) * 65_537 + self.rank
        return iter((index, (base * 2_147_483_647 + start + i) % 2**63) for i, index in enumerate(indices))

    def __len__(self) -> int:
        return max(0, self.per_rank - self.start_batch * self.batch_size)

    def batches_per_epoch(self) -> int:
        return self.per_rank // self.batch_size if self.drop_last else math.ceil(self.per_rank / self.batch_size)


class SeededSamples(Dataset):
    """``dataset`` indexed by ``(index, seed)``: the worker's RNGs (torch, NumPy, ``random``) are seeded with
    ``seed`` before the sample is loaded and augmented. Only for worker processes, whose RNGs serve nothing else."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        import random

        import numpy as np

        index, seed = key
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        return self.dataset[index]


def build_loader(dataset: Dataset, batch_size: int, train: bool, seed: int = 0, num_workers: int = 0,
                 rank: int = 0, world_size: int = 1, pin_memory: bool = False) -> DataLoader:
    """A loader over ``dataset``. Training loaders shuffle per epoch and drop the last partial batch when the
    dataset holds more than one batch (BatchNorm needs more than one sample)."""
    drop_last = train and len(dataset) // world_size > batch_size
    sampler = ResumableSampler(len(dataset), batch_size, shuffle=train, seed=seed, rank=rank,
                               world_size=world_size, drop_last=drop_last, pad=train)
    if train and num_workers > 0:
        sampler.seeded = True
        dataset = SeededSamples(dataset)
    generator = torch.Generator().manual_seed(seed)
    return OneLineErrorLoader(
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


def debug_enabled() -> bool:
    """``SPIKFORMER_DEBUG=1`` keeps full tracebacks (of loader workers too) instead of one-line errors."""
    return os.environ.get("SPIKFORMER_DEBUG", "") not in ("", "0")


class OneLineErrorLoader(DataLoader):
    """A ``DataLoader`` that re-raises a worker's ``DatasetError`` (any ``SpikformerError``) in the parent as the
    same one-line error the main process would raise; PyTorch would wrap it in the worker's traceback."""

    def __iter__(self):
        iterator = super().__iter__()
        if self.num_workers == 0 or debug_enabled():
            return iterator
        return _one_line_errors(iterator)


def _one_line_errors(iterator):
    try:
        yield from iterator
    except SpikformerError as error:
        raise type(error)(worker_error_message(error)) from None


def worker_error_message(error: BaseException) -> str:
    """The worker's own message inside PyTorch's "Caught X in DataLoader worker process N. Original Traceback
    ... module.X: message" text (the text itself when it is not such a wrapper)."""
    text = str(error)
    if "Original Traceback" not in text:
        return text
    cls = type(error)
    marker = f"{cls.__module__}.{cls.__qualname__}: "
    if marker in text:
        return text.rsplit(marker, 1)[1].strip()
    return text.strip().splitlines()[-1]
