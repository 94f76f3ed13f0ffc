"""One process per rank of a ``torch.distributed`` job (gloo backend), for the multi-rank tests.

Run as ``python -m tests.support.ranks_worker JOB RANK WORLD_SIZE PATH INIT`` from the repository root
(``start`` does that). JOB is ``indices`` (``dataset()`` through a ``DistributedSampler``, two epochs,
each rank logging its rank) or ``images`` (601 ``SeededImages``, one epoch: an odd count, so the
sampler repeats one index on the other rank).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import snapstore

from .datasets import SeededImages

ROOT = Path(__file__).resolve().parents[2]


def dataset() -> TensorDataset:
    return TensorDataset(torch.arange(30.0).reshape(30, 1) * 10, torch.arange(30))


def record_indices(rank: int, world_size: int, path: str) -> None:
    sampler = DistributedSampler(dataset(), num_replicas=world_size, rank=rank, seed=11)
    loader = DataLoader(dataset(), batch_size=4, sampler=sampler)
    with snapstore.Recorder(path) as rec:
        stream = rec.wrap(loader, name="train")
        for epoch in range(2):
            stream.sampler.set_epoch(epoch)
            for x, i in stream:
                stream.log(rank=torch.full((len(i),), rank))


def record_images(rank: int, world_size: int, path: str) -> None:
    data = SeededImages(601)  # odd: DistributedSampler repeats one index on the other rank
    sampler = DistributedSampler(data, num_replicas=world_size, rank=rank, seed=5)
    with snapstore.Recorder(path) as rec:
        for batch in rec.wrap(DataLoader(data, batch_size=24, sampler=sampler), name="train"):
            pass


JOBS = {"indices": record_indices, "images": record_images}


def main(job: str, rank: int, world_size: int, path: str, init: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world_size)
    try:
        JOBS[job](rank, world_size, path)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def start(job: str, world_size: int, path: Path | str, init: str) -> list[subprocess.Popen]:
    """Start one process per rank; the caller waits for them."""
    return [subprocess.Popen([sys.executable, "-m", __name__, job, str(r), str(world_size), str(path), init], cwd=ROOT)
            for r in range(world_size)]


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
