"""Loader workers are capped at the CPUs the process may use, and the training loader says so once."""

from __future__ import annotations

import logging

import torch
from torch.utils.data import TensorDataset

from spikformer.data.loader import build_loader, usable_cpus


def test_workers_beyond_the_machines_cpus_are_capped_with_one_line(caplog):
    data = TensorDataset(torch.zeros(8, 1), torch.zeros(8))
    asked = usable_cpus() + 6
    with caplog.at_level(logging.INFO, logger="spikformer.data.loader"):
        train = build_loader(data, 4, train=True, num_workers=asked)
        val = build_loader(data, 4, train=False, num_workers=asked)
    assert train.num_workers == val.num_workers == usable_cpus()
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 1 and f"data.num_workers={asked}" in lines[0] and f"{usable_cpus()} workers" in lines[0]


def test_workers_within_the_machines_cpus_are_kept_silently(caplog):
    data = TensorDataset(torch.zeros(8, 1), torch.zeros(8))
    with caplog.at_level(logging.INFO, logger="spikformer.data.loader"):
        assert build_loader(data, 4, train=True, num_workers=1).num_workers == 1
    assert caplog.records == []
