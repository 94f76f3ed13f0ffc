"""Seen rows stored once: a seen row bitwise equal to its raw sample is read from raw/, not copied (issue 19)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset, default_collate

import snapstore
from snapstore.core import layout
from tests.support.recording import crash_then_resume, record, same


def _eval_data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(400, 3, 8, 8, generator=g), torch.randint(0, 10, (400,), generator=g))


def _bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _marked(snap: snapstore.Snapshot, epoch: int) -> np.ndarray:
    group = zarr.open_group(str(snap.path), mode="r")[f"train/epochs/{epoch}"]
    rows = group.attrs["epoch"]["rows"]
    return group[layout.SEEN_RAW][:rows].astype(bool)


def _flip_odd(items):
    """An 'augmentation' of the rows of odd dataset index: their seen rows differ from the raw samples."""
    x, y = default_collate(items)
    x[y % 2 == 1] *= -1
    return x, y


class _Numbered(Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int):
        return torch.full((4,), float(i)), i


def _flip_odd_index(items):
    x, i = default_collate(items)
    x[i % 2 == 1] += 0.5
    return x, i


def test_an_eval_stream_is_stored_once_and_replays_bitwise(tmp_path):
    def loader():
        return DataLoader(_eval_data(), batch_size=32, num_workers=2)

    once = record(tmp_path / "once.snap", loader(), epochs=3)
    copied = record(tmp_path / "copied.snap", loader(), epochs=3, raw=None)
    for e in range(3):
        assert _marked(once, e).all()
        assert not (Path(once.path) / f"train/epochs/{e}/{layout.SEEN_GROUP}").exists()
        epoch, full = once["train"].epoch(e), copied["train"].epoch(e)
        for a, b in zip(epoch.batches(), full.batches(), strict=True):
            same(a, b)
        mine, theirs = epoch.to_numpy(), full.to_numpy()
        for key in theirs:
            np.testing.assert_array_equal(mine[key], theirs[key])
        np.testing.assert_array_equal(epoch.hashes("0"), full.hashes("0"))
        same(epoch[17], full[17])
        same(epoch.batch(3), full.batch(3))
        np.testing.assert_array_equal(epoch.gather("0", [9, 3, 9]), full.gather("0", [9, 3, 9]))
        np.testing.assert_array_equal(epoch.to_dask()["0"].compute(), theirs["0"])
        # rows stored once: the epoch holds its order, hashes and markers, not 400 x 768 bytes
        assert _bytes(Path(once.path) / f"train/epochs/{e}") * 10 < _bytes(Path(copied.path) / f"train/epochs/{e}")
        assert snapstore.diff(epoch, full).identical  # the same rows, through the hashes
    assert snapstore.audit(once.path).ok


def test_augmented_rows_are_copied(tmp_path):
    loader = DataLoader(_eval_data(), batch_size=32, collate_fn=lambda items: [t * 2 for t in default_collate(items)])
    snap = record(tmp_path / "aug.snap", loader, epochs=2)
    for e in range(2):
        assert not _marked(snap, e).any()
        x = snap["train"].epoch(e).to_numpy()["0"]
        np.testing.assert_array_equal(x, _eval_data().tensors[0].numpy() * 2)
    assert snapstore.audit(snap.path).ok


def test_a_mixed_batch_references_the_equal_rows_only(tmp_path):
    loader = DataLoader(_Numbered(), batch_size=16, shuffle=True, collate_fn=_flip_odd_index,
                        generator=torch.Generator().manual_seed(1))
    snap = record(tmp_path / "mixed.snap", loader, epochs=2)
    for e in range(2):
        epoch = snap["train"].epoch(e)
        np.testing.assert_array_equal(_marked(snap, e), epoch.order % 2 == 0)
        expected = np.repeat(epoch.order[:, None].astype(np.float32), 4, axis=1) + 0.5 * (epoch.order[:, None] % 2)
        np.testing.assert_array_equal(epoch.to_numpy()["0"], expected)
        replayed = torch.cat([x for x, _ in epoch.batches()])
        np.testing.assert_array_equal(replayed.numpy(), expected)
        np.testing.assert_array_equal(epoch.to_dask()["0"].compute(), expected)
    assert snapstore.audit(snap.path).ok


class _Stream(IterableDataset):
    def __iter__(self):
        for i in range(40):
            yield torch.arange(6, dtype=torch.int32) + i  # a token sequence


def test_an_iterable_stream_is_stored_once(tmp_path):
    snap = record(tmp_path / "iter.snap", DataLoader(_Stream(), batch_size=8), epochs=2)
    for e in range(2):
        assert _marked(snap, e).all()
        rows = snap["train"].epoch(e).to_numpy()["value"]
        np.testing.assert_array_equal(rows, np.arange(6, dtype=np.int32) + np.arange(40)[:, None])
    assert snapstore.audit(snap.path).ok


def test_a_resumed_epoch_refers_to_the_raw_rows_of_the_earlier_runs(tmp_path):
    epoch = crash_then_resume(tmp_path / "r.snap", resume_from_batch=5)
    snap = snapstore.open(tmp_path / "r.snap")
    continued = zarr.open_group(str(snap.path), mode="r")["train/epochs/1/continued/1"]
    assert continued[layout.SEEN_RAW][: continued.attrs["epoch"]["rows"]].all()  # raw rows read back at resume
    raw = snap["train"].raw
    for b in epoch.batches():
        for i, x in zip(b[1].tolist(), b[0]):
            same(x, raw[i][0])
    assert snapstore.audit(snap.path).ok


def test_the_audit_refuses_a_reference_to_another_raw_row(tmp_path):
    snap = record(tmp_path / "s.snap", DataLoader(_Numbered(), batch_size=16), epochs=1)
    hashes = zarr.open_array(f"{snap.path}/train/epochs/0/hashes/seen/0", mode="r+")
    values = hashes[:]
    values[5] += 1  # the epoch claims another row 5 than the raw sample it refers to
    hashes[:] = values
    report = snapstore.audit(snap.path)
    integrity = [f for f in report.findings if f.check == "integrity"]
    assert [(f.epoch, f.indices) for f in integrity] == [(0, (5,))], str(report)
    assert "stored as their raw sample" in integrity[0].message


@settings(max_examples=15, deadline=None)
@given(flips=st.lists(st.booleans(), min_size=64, max_size=64), batch=st.integers(1, 20))
def test_any_mix_of_equal_and_changed_rows_reads_back_bitwise(tmp_path_factory, flips, batch):
    changed = np.array(flips)

    def collate(items):
        x, i = default_collate(items)
        x[torch.from_numpy(changed[i.numpy()])] *= -1
        return x, i

    path = tmp_path_factory.mktemp("mix") / "m.snap"
    snap = record(path, DataLoader(_Numbered(), batch_size=batch, collate_fn=collate), epochs=1)
    np.testing.assert_array_equal(_marked(snap, 0), ~changed)
    expected = np.repeat(np.arange(64, dtype=np.float32)[:, None], 4, axis=1) * np.where(changed, -1, 1)[:, None]
    np.testing.assert_array_equal(snap["train"].epoch(0).to_numpy()["0"], expected)


@pytest.mark.parametrize("seen", ["hash", {"batches": 0.5}])
def test_other_policies(tmp_path, seen):
    with snapstore.Recorder(tmp_path / "p.snap") as rec:
        s = rec.wrap(DataLoader(_Numbered(), batch_size=16), name="train", seen=seen)
        list(s)
    epoch = snapstore.open(tmp_path / "p.snap")["train"].epoch(0)
    if seen == "hash":
        assert layout.SEEN_RAW not in zarr.open_group(str(tmp_path / "p.snap"), mode="r")["train/epochs/0"]
    else:
        x = epoch.to_numpy if epoch.full.all() else (lambda: {"0": epoch.gather("0", np.flatnonzero(epoch.full))})
        np.testing.assert_array_equal(x()["0"][:, 0], np.flatnonzero(epoch.full).astype(np.float32))
