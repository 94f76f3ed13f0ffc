"""``snapstore.compare``: a live dataset against the raw samples recorded from it."""

from __future__ import annotations

import json

import pytest
from torch.utils.data import DataLoader

import snapstore
from tests.support.datasets import RandomShiftNoise, Sentences, digits, ragged_rows
from tests.support.recording import record


def test_compare_with_a_live_dataset_changed_at_two_indices(tmp_path):
    ds = digits(n=150, transform=RandomShiftNoise())
    snap = record(tmp_path / "s.snap", DataLoader(ds, batch_size=16, shuffle=True, num_workers=2), epochs=1)
    # rebuilt today; transforms do not matter: raw samples are compared
    live = digits(n=150, transform=RandomShiftNoise())
    assert snapstore.compare(snap["train"], live, progress=False).ok
    live.images[[21, 108]] += 0.5  # two files changed on disk
    report = snapstore.compare(snap["train"], live, progress=False)
    assert not report.ok and report.compared == 150
    assert [(f.check, f.field, f.indices) for f in report.findings] == [("drift", "0", (21, 108))]
    assert report.indices == (21, 108)
    assert "largest absolute difference 0.5" in report.findings[0].message
    json.dumps(report.to_dict())
    assert "2 of 150 raw samples differ" in str(report)


def test_compare_with_a_shrunk_dataset(tmp_path):
    snap = record(tmp_path / "s.snap", DataLoader(digits(n=60), batch_size=16), epochs=1)
    report = snapstore.compare(snap["train"], digits(n=55), progress=False)
    assert [(f.check, f.indices) for f in report.findings] == [("drift", ()), ("drift", (55, 56, 57, 58, 59))]
    with pytest.raises(snapstore.UsageError):
        snapstore.compare(snap, digits(n=60))


def test_compare_without_raw_samples(tmp_path):
    snap = record(tmp_path / "s.snap", DataLoader(digits(n=20), batch_size=8), epochs=1, raw=None)
    with pytest.raises(snapstore.UsageError, match="no raw samples"):
        snapstore.compare(snap["train"], digits(n=20))


def test_compare_and_diff_with_a_ragged_raw_field(tmp_path):
    loader = DataLoader(Sentences(), batch_size=8, collate_fn=ragged_rows)
    with snapstore.record(loader, tmp_path / "s.snap") as s:
        list(s)
    stream = snapstore.open(tmp_path / "s.snap")["train"]
    assert stream.manifest.raw_fields["value"].ragged
    assert snapstore.compare(stream, Sentences(), progress=False).ok

    class Edited(Sentences):
        def __getitem__(self, i):
            x = super().__getitem__(i)
            return x + 1 if i in (5, 40) else x

    report = snapstore.compare(stream, Edited(), progress=False)
    assert [(f.check, f.field, f.indices) for f in report.findings] == [("drift", "value", (5, 40))]
    assert "largest absolute difference 1" in report.findings[0].message
