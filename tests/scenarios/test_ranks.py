"""A ``torch.distributed`` job records into one snapshot: one real process per rank (gloo backend,
``DistributedSampler``); the ranks merge into one epoch view, export in merged seen order, audit clean
and name the rank of a damaged chunk.

Each rank runs ``tests/support/ranks_worker.py``.
"""

from __future__ import annotations

import os
import shutil
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

import snapstore
from snapstore.core.hashing import row_hashes
from tests.support.datasets import SeededImages
from tests.support.ranks_worker import dataset, start
from tests.support.recording import seen_rows
from tests.support.snapshots import chunk_file, flip_byte

# -- recording ----------------------------------------------------------------------------------


@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_record_into_one_snapshot(tmp_path, world_size):
    path = tmp_path / "ddp.snap"
    init = f"file://{tmp_path / 'pg'}"
    procs = start("indices", world_size, path, init)
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


# -- audit and diff -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ranks_snapshot(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ranks")
    path, world_size = tmp / "ddp.snap", 2
    procs = start("indices", world_size, path, f"file://{tmp / 'pg'}")
    assert [p.wait(timeout=300) for p in procs] == [0] * world_size
    return path


def test_ranks_audit_clean_and_diff_identical(ranks_snapshot, tmp_path):
    report = snapstore.audit(ranks_snapshot)
    assert report.ok, str(report)
    assert report.stats["train"]["epochs"].get(0, {}) == {}  # its seen rows are the raw rows, judged once in raw/
    stream = snapstore.open(ranks_snapshot)["train"]
    ep = stream.epoch(1)
    assert np.array_equal(ep.hashes("1"), row_hashes(ep.to_numpy()["1"]))
    assert snapstore.diff(ranks_snapshot, ranks_snapshot).identical


def test_ranks_flipped_byte_names_the_rank_and_its_indices(ranks_snapshot, tmp_path):
    path = tmp_path / "ddp.snap"
    shutil.copytree(ranks_snapshot, path)
    indices = snapstore.open(path)["train"].rank(1).raw.indices  # the seen rows are stored once, in raw/
    flip_byte(chunk_file(path, "train/rank1/raw/fields/0", 0))
    report = snapstore.audit(path)
    assert [(f.check, f.epoch, f.field, f.indices) for f in report.findings] == [
        ("integrity", None, "0", tuple(sorted(indices.tolist())))], str(report)
    assert "'train/rank1/raw/fields/0' chunk 0" in report.findings[0].message


# -- exports -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ranked(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ranks")
    path = tmp / "ddp.snap"
    procs = start("images", 2, path, f"file://{tmp / 'pg'}")
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
    np.testing.assert_array_equal(raw["0"], np.stack([SeededImages(601)[i][0].numpy() for i in range(601)]))
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


def scanned_where(stream, index):
    """Where ``index`` was seen, found by opening every epoch and scanning its order."""
    found = []
    for ep in stream:
        positions = np.flatnonzero(ep.order == index)
        batches = np.searchsorted(np.cumsum(ep.batch_sizes), positions, side="right")
        found += [(ep.number, int(r), int(b), int(p)) for r, b, p in zip(ep.ranks[positions], batches, positions)]
    return found


def test_where_counts_positions_and_batches_with_the_ranks_interleaved(ranked):
    indices = np.unique(ranked.epoch(0).order)
    for i in [*indices[:: max(1, len(indices) // 40)].tolist(), int(indices[-1]), int(indices[-1]) + 1000]:
        assert ranked.where(index=i) == scanned_where(ranked, i)
