"""seen= modes end to end: what each stores, what reading rows does, the inverse index behind where()."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import zarr
from torch.utils.data import DataLoader, TensorDataset

import snapstore
from snapstore.errors import NotStoredError, UsageError

N = 120


def _dataset():
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.rand(N, 3, 4, generator=g), torch.arange(N))


def _record(path, seen, epochs=2, **loader):
    ds = _dataset()
    loader.setdefault("batch_size", 10)
    with snapstore.Recorder(path) as rec:
        s = rec.wrap(DataLoader(ds, shuffle=True, generator=torch.Generator().manual_seed(1), **loader),
                     name="train", seen=seen)
        batches = []
        for _ in range(epochs):
            batches.append([])
            for x, y in s:
                batches[-1].append((x.clone(), y.clone()))
                s.log(loss=x.sum((1, 2)))
    return snapstore.open(path)["train"], batches


def _disk_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def test_hash_mode_stores_no_row_bytes_and_refuses_rows_with_the_way_it_was_recorded(tmp_path):
    stream, batches = _record(tmp_path / "h.snap", "hash", epochs=1)
    full, _ = _record(tmp_path / "f.snap", "full", epochs=1)
    ep, ref = stream.epoch(0), full.epoch(0)
    assert stream.manifest.seen.mode == "hash" and ep.manifest.seen.mode == "hash"
    assert not os.path.exists(tmp_path / "h.snap" / "train" / "epochs" / "0" / "seen")
    assert not ep.full.any()
    # order, batch sizes, hashes and outputs work; they equal the full recording's (same seeds)
    np.testing.assert_array_equal(ep.order, ref.order)
    np.testing.assert_array_equal(ep.batch_sizes, ref.batch_sizes)
    for f in ("0", "1"):
        np.testing.assert_array_equal(ep.hashes(f), ref.hashes(f))
    assert len(ep.outputs["loss"]) == N
    for read in (lambda: ep[0], lambda: ep.batch(0), lambda: list(ep.batches()), lambda: ep.to_numpy(),
                 lambda: ep.sample(index=3), lambda: ep.gather("0", [1])):
        with pytest.raises(NotStoredError, match=r"recorded with seen='hash' .* stored as content hashes only"):
            read()
    assert isinstance(NotStoredError("x"), UsageError)
    assert snapstore.diff(stream, full).identical  # diff across modes goes through the hashes


def test_sampled_batches_store_every_tenth_batch_in_full_and_replay_those_bitwise(tmp_path):
    stream, batches = _record(tmp_path / "s.snap", {"batches": 0.1}, batch_size=4)  # 30 batches
    ep = stream.epoch(1)
    stored = [j for j in range(30) if ep.full[4 * j : 4 * j + 4].all()]
    assert stored == [9, 19, 29] and int(ep.full.sum()) == 12
    for j in stored:
        x, y = ep.batch(j)
        assert torch.equal(x, batches[1][j][0]) and torch.equal(y, batches[1][j][1])
    with pytest.raises(NotStoredError, match=r"seen=\{'batches': 0.1\}.*12 of 120 rows"):
        ep.batch(0)


def test_a_probe_set_is_stored_in_full_wherever_it_is_seen(tmp_path):
    stream, _ = _record(tmp_path / "p.snap", {"indices": [7, 50]})
    ds = _dataset()
    for e in stream.epochs:
        ep = stream.epoch(e)
        assert sorted(ep.order[ep.full].tolist()) == [7, 50]
        x, y = ep.sample(index=50)
        assert torch.equal(x, ds[50][0]) and int(y) == 50
        with pytest.raises(NotStoredError):
            ep.sample(index=8)


def test_every_nth_epoch_in_full(tmp_path):
    stream, batches = _record(tmp_path / "e.snap", {"every": 2}, epochs=3)
    assert [bool(stream.epoch(e).full.all()) for e in range(3)] == [True, False, True]
    assert [bool(stream.epoch(e).full.any()) for e in range(3)] == [True, False, True]
    replay = list(stream.epoch(2).batches())
    assert all(torch.equal(a[0], b[0]) for a, b in zip(replay, batches[2]))


def test_hash_mode_is_small(tmp_path):
    _record(tmp_path / "h.snap", "hash", epochs=3)
    _record(tmp_path / "f.snap", "full", epochs=3)
    assert _disk_bytes(tmp_path / "h.snap") < _disk_bytes(tmp_path / "f.snap")


def test_wrap_refuses_a_bad_policy(tmp_path):
    with snapstore.Recorder(tmp_path / "x.snap") as rec:
        with pytest.raises(UsageError, match="seen='full', seen='hash'"):
            rec.wrap(DataLoader(_dataset()), name="train", seen="hashes")


@pytest.mark.parametrize("seen", ["full", "hash"])
def test_the_inverse_index_finds_every_position(tmp_path, seen):
    ds = _dataset()
    sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=200,
                                             generator=torch.Generator().manual_seed(3))
    with snapstore.Recorder(tmp_path / "w.snap") as rec:
        s = rec.wrap(DataLoader(ds, batch_size=16, sampler=sampler), name="train", seen=seen)
        for _ in range(3):
            list(s)
    stream = snapstore.open(tmp_path / "w.snap")["train"]
    for e in stream.epochs:
        ep = stream.epoch(e)
        assert ep.manifest.where
        for i in range(-1, N + 2):
            np.testing.assert_array_equal(ep.positions(index=i), np.flatnonzero(ep.order == i))


def test_an_appending_run_with_another_policy_names_it_in_the_stream_manifest(tmp_path):
    path = tmp_path / "a.snap"
    stream, _ = _record(path, "hash", epochs=1)
    assert stream.manifest.seen.mode == "hash"
    with snapstore.Recorder(path, mode="a") as rec:
        list(rec.wrap(DataLoader(_dataset(), batch_size=10), name="train", seen={"every": 2}))
    stream = snapstore.open(path)["train"]
    assert stream.manifest.seen.describe() == "seen={'every': 2}"
    assert [stream.epoch(e).manifest.seen.mode for e in stream.epochs] == ["hash", "sampled"]


def test_a_short_epoch_is_not_padded_to_a_full_chunk(tmp_path):
    _record(tmp_path / "h.snap", "hash", epochs=1)
    ep = zarr.open_group(tmp_path / "h.snap", mode="r")["train/epochs/0"]
    for name in ("order", "worker", "batch_sizes", "hashes/seen/0"):
        assert ep[name].chunks == (1024,)  # the rows expected (120), rounded up to at least 1,024; not 65,536
