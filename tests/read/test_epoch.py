"""``snapstore.Epoch`` (``snapstore.read.epoch``): a resumed epoch stitches its parts to the rows recorded
before the crash; positions, samples and gathers by dataset index; ragged fields unpadded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, RandomSampler, WeightedRandomSampler

import snapstore
from tests.support.datasets import Indexed, Resumable, Sentences, digits, pad_with_lengths
from tests.support.recording import crash_then_resume, record, run, same


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


@pytest.mark.parametrize("num_workers", [0, 2])
def test_padded_sequences_round_trip_and_unpad(snap_path, num_workers):
    stream, seen = run(lambda: DataLoader(Sentences(), batch_size=8, shuffle=True, collate_fn=pad_with_lengths,
                                          num_workers=num_workers), snap_path)
    info = stream.fields["0"]
    assert info.ragged and info.shape == (None,) and info.kind == "tensor"
    assert not stream.fields["1"].ragged
    ep = stream.epoch(1)
    assert ep.manifest.ragged == ["0"]
    for k in (0, 13, 63):
        i = int(ep.order[k])
        same(ep.unpadded("0", lengths="1", position=k), Sentences()[i])
    rows = ep.unpadded("0", lengths="1")
    assert len(rows) == 64 and all(torch.equal(r, Sentences()[int(i)]) for r, i in zip(rows, ep.order))


def test_replacement_sampler_positions(snap_path):
    def make():
        sampler = RandomSampler(range(10), replacement=True, num_samples=30, generator=torch.Generator().manual_seed(0))
        return DataLoader(Indexed(10), batch_size=7, sampler=sampler)

    stream, seen = run(make, snap_path)
    ep = stream.epoch(0)
    assert len(ep) == 30
    counts = np.bincount(ep.order, minlength=10)
    i = int(np.argmax(counts))
    where = ep.positions(index=i)
    assert len(where) == counts[i] > 1 and (ep.order[where] == i).all()
    same(ep.sample(index=i), ep[int(where[0])])
    assert stream.raw._rows == len(np.unique(np.concatenate([stream.epoch(e).order for e in stream.epochs])))


def test_weighted_sampler_duplicates_stored_at_each_position(snap_path):
    sampler = WeightedRandomSampler([1.0, 50.0, 1.0, 1.0], num_samples=20, replacement=True)
    stream, seen = run(lambda: DataLoader(Indexed(4), batch_size=4, sampler=sampler), snap_path, epochs=1)
    ep = stream.epoch(0)
    for k in ep.positions(index=1):
        assert ep[int(k)][1].item() == 1


def test_gather_reads_chosen_rows(tmp_path):
    snap = record(tmp_path / "s.snap", DataLoader(digits(n=64), batch_size=16, shuffle=True), 1)
    ep = snap["train"].epoch(0)
    full = ep.to_numpy()["0"]
    assert np.array_equal(ep.gather("0", [5, 1, 5]), full[[5, 1, 5]])
    assert np.array_equal(snap["train"].raw.gather("1", [3, 0]), np.array([3, 0]) % 10)
    with pytest.raises(KeyError):
        ep.hashes("nope")
    with pytest.raises(IndexError):
        ep.gather("0", [64])
    assert torch.equal(torch.from_numpy(ep.gather("0", [0])[0]), ep[0][0])
