"""Entry point for the multi-rank tests: one process per rank, gloo backend, DistributedSampler."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import snapstore


def dataset() -> TensorDataset:
    return TensorDataset(torch.arange(30.0).reshape(30, 1) * 10, torch.arange(30))


def record(rank: int, world_size: int, path: str, init: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world_size)
    try:
        sampler = DistributedSampler(dataset(), num_replicas=world_size, rank=rank, seed=11)
        loader = DataLoader(dataset(), batch_size=4, sampler=sampler)
        with snapstore.Recorder(path) as rec:
            stream = rec.wrap(loader, name="train")
            for epoch in range(2):
                stream.sampler.set_epoch(epoch)
                for x, i in stream:
                    stream.log(rank=torch.full((len(i),), rank))
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    record(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
