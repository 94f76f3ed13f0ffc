"""``snapstore.diff`` on pairs of real recordings: same seed, other seeds, one changed label, a cut epoch,
resumed epochs, ragged fields."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import snapstore
from tests.support.datasets import FlakyLabel, RandomShiftNoise, Sentences, digits, ragged_rows
from tests.support.recording import crash_then_resume, record
from tests.support.snapshots import chunk_file, flip_byte


def _augmented_run(path, *, sampler_seed, torch_seed, epochs=2, workers=2, **kw):
    torch.manual_seed(torch_seed)
    loader = DataLoader(digits(n=300, transform=RandomShiftNoise()), batch_size=32, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(sampler_seed))
    return record(path, loader, epochs, log=lambda b: {"loss": (b[0] ** 2).mean((1, 2, 3))}, **kw)


def test_two_runs_with_the_same_seed_are_identical(tmp_path):
    a = _augmented_run(tmp_path / "a.snap", sampler_seed=0, torch_seed=0)
    b = _augmented_run(tmp_path / "b.snap", sampler_seed=0, torch_seed=0)
    report = snapstore.diff(a, b)
    assert report.identical, str(report)
    assert report.findings == [] and report.first_divergence is None
    assert report.compared == {"epochs": 2, "rows": 600}
    assert str(report) == f"snapstore diff {a.path} {b.path}: identical (2 epochs, 600 rows compared)"
    assert snapstore.diff(a.path, b.path).identical  # paths work too


def test_different_seeds_diverge_at_batch_zero(tmp_path):
    a = _augmented_run(tmp_path / "a.snap", sampler_seed=0, torch_seed=0)
    b = _augmented_run(tmp_path / "b.snap", sampler_seed=1, torch_seed=1)
    report = snapstore.diff(a, b)
    assert not report.identical
    d = report.first_divergence
    assert (d.stream, d.epoch, d.batch, d.position, d.field, d.check) == ("train", 0, 0, 0, "index", "order")
    oa, ob = a["train"].epoch(0).order, b["train"].epoch(0).order
    assert d.message == f"dataset index {oa[0]} in a, {ob[0]} in b"
    order = [f for f in report.findings if f.check == "order"]
    assert [f.epoch for f in order] == [0, 1]
    moved = np.nonzero(oa != ob)[0]
    assert order[0].count == len(moved) and order[0].indices == tuple(oa[moved][:100].tolist())
    # Augmented images differ per index; labels and the loss of a deterministic function do not all differ.
    seen = {(f.epoch, f.field) for f in report.findings if f.check == "seen"}
    assert seen == {(0, "0"), (1, "0")}
    text = str(report)
    assert "first divergence: stream 'train' epoch 0 batch 0 position 0 field 'index'" in text


def test_same_order_different_augmentation(tmp_path):
    a = _augmented_run(tmp_path / "a.snap", sampler_seed=5, torch_seed=0, workers=0, epochs=1)
    b = _augmented_run(tmp_path / "b.snap", sampler_seed=5, torch_seed=1, workers=0, epochs=1)
    report = snapstore.diff(a["train"], b["train"])
    d = report.first_divergence
    assert (d.epoch, d.batch, d.position, d.field, d.check) == (0, 0, 0, "0", "seen")
    by = {(f.check, f.field): f for f in report.findings}
    assert set(by) == {("seen", "0"), ("outputs", "loss")}
    assert by[("seen", "0")].count == 300
    assert "max |a - b| = " in by[("seen", "0")].message


def test_one_label_changed_in_one_run(tmp_path):
    def run(path, bad_index):
        ds = FlakyLabel(index=bad_index, bad_epoch=0)
        loader = DataLoader(ds, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(2))
        return record(path, loader, 2, before_epoch=lambda e: setattr(ds, "epoch", e))

    a, b = run(tmp_path / "a.snap", bad_index=-1), run(tmp_path / "b.snap", bad_index=42)
    report = snapstore.diff(a, b)
    got = [(f.check, f.epoch, f.field, f.indices) for f in report.findings]
    assert got == [("raw", None, "1", (42,)), ("seen", 0, "1", (42,))], str(report)
    position = int(np.nonzero(a["train"].epoch(0).order == 42)[0][0])
    d = report.first_divergence
    assert (d.epoch, d.batch, d.position, d.field) == (0, position // 16, position, "1")
    assert "max |a - b| = 1" in report.findings[1].message


def test_an_epoch_cut_short(tmp_path):
    def run(path, stop):
        loader = DataLoader(digits(n=160), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(4))
        return record(path, loader, 2, stop_after=stop)

    a, b = run(tmp_path / "a.snap", None), run(tmp_path / "b.snap", {1: 3})
    report = snapstore.diff(a, b)
    assert [(f.check, f.epoch) for f in report.findings] == [("length", 1)]
    d = report.first_divergence
    assert (d.epoch, d.batch, d.position, d.field, d.check) == (1, 3, 48, "index", "length")
    assert report.findings[0].message == "epoch 1 holds 160 rows in a and 48 in b"


def test_diff_reads_hashes_not_data(tmp_path):
    a = _augmented_run(tmp_path / "a.snap", sampler_seed=0, torch_seed=0, epochs=1)
    b = _augmented_run(tmp_path / "b.snap", sampler_seed=0, torch_seed=0, epochs=1)
    flip_byte(chunk_file(b.path, "train/epochs/0/seen/0", 0))  # reading this chunk would raise CorruptionError
    assert snapstore.diff(a, b).identical
    with pytest.raises(snapstore.CorruptionError):
        b["train"].epoch(0).to_numpy()


def test_epochs_and_kinds(tmp_path):
    a = _augmented_run(tmp_path / "a.snap", sampler_seed=0, torch_seed=0)
    b = _augmented_run(tmp_path / "b.snap", sampler_seed=0, torch_seed=0)
    assert snapstore.diff(a["train"].epoch(1), b["train"].epoch(1)).identical
    report = snapstore.diff(a["train"].epoch(0), b["train"].epoch(1))
    assert report.first_divergence.check == "order" and report.first_divergence.position == 0
    with pytest.raises(snapstore.UsageError, match="one kind"):
        snapstore.diff(a, b["train"])
    with pytest.raises(snapstore.UsageError):
        snapstore.diff(a, 3)


def test_streams_and_epochs_only_on_one_side(tmp_path):
    a = record(tmp_path / "a.snap", DataLoader(digits(n=40), batch_size=8), 2)
    with snapstore.Recorder(tmp_path / "b.snap") as rec:
        train = rec.wrap(DataLoader(digits(n=40), batch_size=8), name="train")
        test = rec.wrap(DataLoader(digits(n=20), batch_size=8), name="test")
        for _ in train:
            pass
        for _ in test:
            pass
    report = snapstore.diff(a, tmp_path / "b.snap")
    assert [(f.check, f.stream, f.epoch) for f in report.findings] == [
        ("streams", "test", None),
        ("epochs", "train", 1),
    ]
    d = report.first_divergence
    assert (d.stream, d.epoch, d.check) == ("test", None, "streams")
    payload = json.loads(json.dumps(report.to_dict()))
    assert payload["identical"] is False and payload["first_divergence"]["check"] == "streams"


# -- epochs recorded in parts, ragged fields ------------------------------------------------------


def test_diff_of_resumed_epochs(tmp_path):
    a = crash_then_resume(tmp_path / "a.snap", resume_from_batch=5)
    b = crash_then_resume(tmp_path / "b.snap", resume_from_batch=3)
    assert snapstore.diff(tmp_path / "a.snap", tmp_path / "a.snap").identical
    report = snapstore.diff(a, b)
    d = report.first_divergence
    assert (d.epoch, d.position, d.batch, d.field) == (1, 20, 5, "index")  # b repeats batches 3-4 after its 5 first
    assert np.array_equal(a.hashes("0")[:20], b.hashes("0")[:20])


class _Longer(Sentences):
    """Index 9 one token longer, index 20 with other tokens."""

    def __getitem__(self, i):
        x = super().__getitem__(i)
        return torch.cat([x, x[:1]]) if i == 9 else x * 2 if i == 20 else x


def test_diff_locates_ragged_differences(tmp_path):
    def run(path, ds):
        with snapstore.record(DataLoader(ds, batch_size=8, collate_fn=ragged_rows), path) as s:
            list(s)
        return snapstore.open(path)

    report = snapstore.diff(run(tmp_path / "a.snap", Sentences()), run(tmp_path / "b.snap", _Longer()))
    seen = [f for f in report.findings if f.check == "seen"]
    assert [(f.field, f.indices) for f in seen] == [("0", (9, 20)), ("1", (9,))]
    assert "1 row(s) differ in shape" in seen[0].message and "max |a - b| = " in seen[0].message
    d = report.first_divergence
    assert (d.epoch, d.batch, d.position, d.field) == (0, 1, 9, "0")
