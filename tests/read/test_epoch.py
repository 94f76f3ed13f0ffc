"""Resumed epochs stitch to the rows recorded before a crash; ranks merge into one epoch view."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import Indexed
from ranks_worker import dataset
from torch.utils.data import DataLoader, DistributedSampler, Sampler

import snapstore


class Resumable(Sampler[int]):
    """A seeded permutation that can start part-way, like a sampler restored from a checkpoint."""

    def __init__(self, n: int, seed: int, start: int = 0) -> None:
        self.n, self.seed, self.start = n, seed, start

    def __iter__(self):
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed)).tolist()
        return iter(perm[self.start :])

    def __len__(self) -> int:
        return self.n - self.start


def crash_then_resume(path: Path, resume_from_batch: int) -> snapstore.Epoch:
    """Epoch 0 complete; epoch 1 cut after 5 batches; the job resumes epoch 1 from a checkpoint."""
    with snapstore.Recorder(path) as rec:
        s = rec.wrap(DataLoader(Indexed(40), batch_size=4, sampler=Resumable(40, seed=0)), name="train")
        list(s)
    with snapstore.Recorder(path, mode="a") as rec:
        s = rec.wrap(DataLoader(Indexed(40), batch_size=4, sampler=Resumable(40, seed=1)), name="train")
        for j, _ in enumerate(s):
            if j == 4:
                break  # the crash: 5 batches recorded
    with snapstore.Recorder(path, mode="a") as rec:
        loader = DataLoader(Indexed(40), batch_size=4, sampler=Resumable(40, seed=1, start=4 * resume_from_batch))
        s = rec.wrap(loader, name="train", resume_epoch=True)
        list(s)  # the rest of epoch 1
    return snapstore.open(path)["train"].epoch(1)


def coverage(ep: snapstore.Epoch, n: int) -> tuple[list[int], list[int]]:
    counts = np.bincount(ep.order, minlength=n)
    return np.nonzero(counts == 0)[0].tolist(), np.nonzero(counts > 1)[0].tolist()


def test_clean_resume_stitches_a_complete_epoch(snap_path):
    ep = crash_then_resume(snap_path, resume_from_batch=5)
    perm = list(Resumable(40, seed=1))
    assert ep.complete and len(ep) == 40 and ep.order.tolist() == perm
    assert [p.part for p in ep.parts] == [0, 1] and not ep.parts[0].complete
    assert ep.batch_sizes.tolist() == [4] * 10
    assert ep.batch(6)[1].tolist() == perm[24:28]
    assert ep[21][1].item() == perm[21]
    assert coverage(ep, 40) == ([], [])
    stream = snapstore.open(snap_path)["train"]
    assert stream.epochs == [0, 1]


def test_resume_from_an_older_checkpoint_shows_the_repeated_samples(snap_path):
    ep = crash_then_resume(snap_path, resume_from_batch=3)
    perm = list(Resumable(40, seed=1))
    assert len(ep) == 48
    assert coverage(ep, 40) == ([], sorted(perm[12:20]))


def test_resume_past_the_crash_point_shows_the_skipped_samples(snap_path):
    ep = crash_then_resume(snap_path, resume_from_batch=7)
    perm = list(Resumable(40, seed=1))
    assert coverage(ep, 40) == (sorted(perm[20:28]), [])


def test_resume_needs_an_incomplete_epoch(snap_path):
    with snapstore.record(DataLoader(Indexed(8), batch_size=4), snap_path) as s:
        list(s)
    with snapstore.Recorder(snap_path, mode="a") as rec:
        with pytest.raises(snapstore.UsageError, match="nothing to continue"):
            rec.wrap(DataLoader(Indexed(8), batch_size=4), name="train", resume_epoch=True)


@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_record_into_one_snapshot(tmp_path, world_size):
    path = tmp_path / "ddp.snap"
    init = f"file://{tmp_path / 'pg'}"
    script = Path(__file__).with_name("ranks_worker.py")
    procs = [subprocess.Popen([sys.executable, str(script), str(r), str(world_size), str(path), init]) for r in range(world_size)]
    assert [p.wait(timeout=300) for p in procs] == [0] * world_size
    stream = snapstore.open(path)["train"]
    assert stream.world_size == world_size and stream.epochs == [0, 1]
    for e in (0, 1):
        ep = stream.epoch(e)
        assert ep.complete
        per_rank = []
        for r in range(world_size):
            expected = DistributedSampler(dataset(), num_replicas=world_size, rank=r, seed=11)
            expected.set_epoch(e)
            mine = stream.rank(r).epoch(e)
            assert mine.order.tolist() == list(expected)
            assert mine.provenance["rank"] == r and mine.provenance["world_size"] == world_size
            per_rank.append(mine)
        # the merged view: step j holds batch j of every rank, in rank order
        merged = [(r, b) for j in range(len(per_rank[0].batch_sizes)) for r in range(world_size)
                  for b in [per_rank[r].batch(j)]]
        assert len(ep.batch_sizes) == len(merged)
        for (r, b), got in zip(merged, ep.batches()):
            assert torch.equal(b[1], got[1]) and torch.equal(b[0], got[0])
        np.testing.assert_array_equal(ep.outputs["rank"], ep.ranks)
        assert set(ep.order.tolist()) == set(range(30))
        np.testing.assert_array_equal(ep.to_numpy()["1"], ep.order)
    assert sorted(stream.raw.indices.tolist()) == list(range(30))
    assert torch.equal(stream.raw[17][0], torch.tensor([170.0]))
