"""Exports of epochs stored in several parts: a resumed epoch, and two ranks of a distributed run.

Each export is compared with the reader's own row-by-row view (``ep.batch(j)``,
``ep[k]``), which stitches the parts independently of the export code. Rows
of 3x32x32 float32 (128 per chunk) make every part span several chunks.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

import snapstore

SHAPE = (3, 32, 32)


class Images(Dataset):
    """``(image, index)`` with every value of image ``i`` derived from ``i``."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(i)
        return torch.randn(SHAPE, generator=g), i


class Resumable(Sampler[int]):
    """A seeded permutation that can start part-way, like a sampler restored from a checkpoint."""

    def __init__(self, n: int, seed: int, start: int = 0) -> None:
        self.n, self.seed, self.start = n, seed, start

    def __iter__(self):
        return iter(torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed)).tolist()[self.start :])

    def __len__(self) -> int:
        return self.n - self.start


def seen_rows(ep):
    """The epoch's batches as the reader stitches them, batch by batch (not through the exports)."""
    batches = [ep.batch(j) for j in range(len(ep.batch_sizes))]
    return torch.cat([b[0] for b in batches]).numpy(), torch.cat([b[1] for b in batches]).numpy(), batches


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    path = tmp_path_factory.mktemp("resume") / "run.snap"
    with snapstore.Recorder(path) as rec:
        s = rec.wrap(DataLoader(Images(400), batch_size=24, sampler=Resumable(400, 1), num_workers=2), name="train")
        for j, _ in enumerate(s):
            if j == 9:
                break  # the crash: 10 batches recorded
    with snapstore.Recorder(path, mode="a") as rec:
        loader = DataLoader(Images(400), batch_size=24, sampler=Resumable(400, 1, start=240), num_workers=2)
        list(rec.wrap(loader, name="train", resume_epoch=True))
    return snapstore.open(path)["train"].epoch(0)


def test_resumed_epoch_exports_both_parts_in_seen_order(resumed):
    ep = resumed
    assert len(ep.parts) == 2 and len(ep) == 400 and ep.complete
    x, y, batches = seen_rows(ep)
    out = ep.to_numpy()
    np.testing.assert_array_equal(out["0"], x)
    np.testing.assert_array_equal(out["1"], y)
    np.testing.assert_array_equal(out["index"], list(Resumable(400, 1)))
    np.testing.assert_array_equal(ep.stream.to_tensor_dataset(epoch=0).tensors[0].numpy(), x)
    replay = list(ep.replay_loader())
    assert len(replay) == len(batches)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(replay, batches))
    assert all(np.array_equal(ep[k][0].numpy(), x[k]) for k in (0, 239, 240, 399))
    pytest.importorskip("dask")
    d = ep.to_dask()
    np.testing.assert_array_equal(d["0"].compute(), x)
    np.testing.assert_array_equal(d["index"].compute(), out["index"])


def test_resumed_epoch_to_tf(resumed):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pytest.importorskip("tensorflow")
    x, y, _ = seen_rows(resumed)
    got = list(resumed.stream.to_tf_dataset(epoch=0, channels_last=True).batch(100).as_numpy_iterator())
    np.testing.assert_array_equal(np.concatenate([g[0] for g in got]), x.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(np.concatenate([g[1] for g in got]), y)


WORKER = textwrap.dedent('''
    import sys, torch, torch.distributed as dist
    from torch.utils.data import DataLoader, DistributedSampler
    import snapstore
    sys.path.insert(0, sys.argv[5])
    from test_export_parts import Images

    rank, world, path, init = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        data = Images(601)  # odd: DistributedSampler repeats one index on the other rank
        sampler = DistributedSampler(data, num_replicas=world, rank=rank, seed=5)
        with snapstore.Recorder(path) as rec:
            for batch in rec.wrap(DataLoader(data, batch_size=24, sampler=sampler), name="train"):
                pass
        dist.barrier()
    finally:
        dist.destroy_process_group()
''')


@pytest.fixture(scope="module")
def ranked(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ranks")
    path = tmp / "ddp.snap"
    here = os.path.dirname(os.path.abspath(__file__))
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(r), "2", str(path), f"file://{tmp / 'pg'}", here])
             for r in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    return snapstore.open(path)["train"]


def test_interleaved_ranks_export_in_merged_seen_order(ranked):
    ep = ranked.epoch(0)
    assert ranked.world_size == 2 and len(ep.parts) == 2 and len(ep) == 602
    x, y, batches = seen_rows(ep)
    out = ep.to_numpy()
    np.testing.assert_array_equal(out["0"], x)
    np.testing.assert_array_equal(out["index"], y)
    replay = list(ep.replay_loader())
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(replay, batches))
    for r in range(2):
        mine = ranked.rank(r).epoch(0).to_numpy()
        np.testing.assert_array_equal(mine["0"], x[ep.ranks == r])


def test_raw_samples_of_several_ranks_come_once_in_index_order(ranked):
    raw = ranked.raw.to_numpy()
    np.testing.assert_array_equal(raw["index"], np.arange(601))
    np.testing.assert_array_equal(raw["0"], np.stack([Images(601)[i][0].numpy() for i in range(601)]))
    assert len(ranked.to_tensor_dataset()) == 601


def test_interleaved_ranks_to_dask_is_per_rank(ranked):
    pytest.importorskip("dask")
    with pytest.raises(snapstore.UsageError, match="rank"):
        ranked.epoch(0).to_dask()
    mine = ranked.rank(1).epoch(0)
    np.testing.assert_array_equal(mine.to_dask()["0"].compute(), mine.to_numpy()["0"])
    d = ranked.raw.to_dask()  # stored order, rank by rank: the repeated index appears twice
    assert d["index"].shape[0] == 602 and sorted(set(d["index"].compute().tolist())) == list(range(601))


def test_rank_view_as_dataset_in_workers(ranked):
    mine = ranked.rank(1)
    want = mine.epoch(0).to_numpy()["0"]
    got = np.concatenate([b[0].numpy() for b in DataLoader(mine.as_dataset(epoch=0), batch_size=50, num_workers=2)])
    np.testing.assert_array_equal(got, want)


def test_interleaved_ranks_to_tf(ranked):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pytest.importorskip("tensorflow")
    x, y, _ = seen_rows(ranked.epoch(0))
    got = list(ranked.to_tf_dataset(epoch=0).batch(128).as_numpy_iterator())
    np.testing.assert_array_equal(np.concatenate([g[0] for g in got]), x)
    np.testing.assert_array_equal(np.concatenate([g[1] for g in got]), y)
