"""``snapstore.audit`` on real DataLoaders and real snapshots, exact indices: values, labels, samplers,
damaged chunks and metadata, incomplete, resumed and ragged epochs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import zarr
from torch.utils.data import DataLoader, WeightedRandomSampler

import snapstore
from snapstore.core.hashing import row_hashes
from tests.support.datasets import (
    DivideBySum,
    DropsAndRepeats,
    FlakyLabel,
    Images,
    RandomShiftNoise,
    Resumable,
    Sentences,
    digits,
    digits_with_nan,
    positive_digits,
    ragged_rows,
)
from tests.support.recording import crash_then_resume, record
from tests.support.snapshots import chunk_file, flip_byte, truncate


def only(findings: list, **where) -> list:
    """Findings whose attributes equal ``where``."""
    return [f for f in findings if all(getattr(f, k) == v for k, v in where.items())]


def test_clean_real_data_has_no_findings(tmp_path):
    ds = digits(transform=RandomShiftNoise())
    loader = DataLoader(ds, batch_size=64, shuffle=True, num_workers=2, generator=torch.Generator().manual_seed(0))
    snap = record(tmp_path / "digits.snap", loader, epochs=2, log=lambda b: {"loss": (b[0] ** 2).mean((1, 2, 3))})
    report = snapstore.audit(snap)
    assert report.ok, str(report)
    assert report.findings == []
    st = report.stats["train"]
    assert set(st["epochs"]) == {0, 1} and set(st["raw"]) == {"0", "1"}
    s = st["epochs"][0]["0"]
    assert s.rows == 1797 and s.count == 1797 * 64 and s.nan == 0
    assert abs(st["raw"]["0"].mean) < 1e-3 and abs(st["raw"]["0"].std - 1) < 1e-3  # normalised raw images
    assert st["epochs"][1]["1"].min == 0 and st["epochs"][1]["1"].max == 9
    assert report.scanned["chunks"] > 0 and report.scanned["bytes_stored"] > 0
    json.dumps(report.to_dict())
    assert "no findings" in str(report)


def test_division_by_near_zero_pixel_sum(tmp_path):
    ds = positive_digits(blank=(13, 77), transform=DivideBySum())
    loader = DataLoader(ds, batch_size=32, shuffle=True, num_workers=2)
    report = snapstore.audit(record(tmp_path / "s.snap", loader, epochs=2))
    assert [(f.check, f.epoch, f.field, f.indices) for f in report.findings] == [
        ("values", 0, "0", (13, 77)),
        ("values", 1, "0", (13, 77)),
    ], str(report)
    assert "orders of magnitude outside" in report.findings[0].message


def test_wrong_label_in_one_epoch_for_one_index(tmp_path):
    ds = FlakyLabel(index=42, bad_epoch=1)
    loader = DataLoader(ds, batch_size=16, shuffle=True)
    snap = record(tmp_path / "s.snap", loader, epochs=3, before_epoch=lambda e: setattr(ds, "epoch", e))
    report = snapstore.audit(snap)
    assert [(f.check, f.epoch, f.field, f.indices) for f in report.findings] == [
        ("stability", 1, "1", (42,)),
        ("raw_vs_seen", 1, "1", (42,)),
    ], str(report)


def test_wrong_label_with_two_epochs_is_reported_in_the_later_one(tmp_path):
    ds = FlakyLabel(index=7, bad_epoch=1)
    loader = DataLoader(ds, batch_size=16, shuffle=True)
    report = snapstore.audit(record(tmp_path / "s.snap", loader, 2, before_epoch=lambda e: setattr(ds, "epoch", e)))
    assert [(f.check, f.epoch, f.indices) for f in report.findings] == [
        ("stability", 1, (7,)),
        ("raw_vs_seen", 1, (7,)),
    ]


def test_nan_in_a_few_samples(tmp_path):
    loader = DataLoader(digits_with_nan(bad=(5, 50, 99)), batch_size=16, shuffle=True, num_workers=2)
    report = snapstore.audit(record(tmp_path / "s.snap", loader, epochs=2))
    # no augmentation: each epoch's seen rows are the raw rows, stored and judged once, in raw/
    assert [(f.check, f.epoch, f.field, f.indices) for f in report.findings] == [
        ("values", None, "0", (5, 50, 99)),
    ], str(report)
    assert "NaN" in report.findings[0].message
    assert report.stats["train"]["raw"]["0"].nan == 3
    copied = snapstore.audit(record(tmp_path / "copied.snap", loader, epochs=2, raw=None))
    assert [(f.check, f.epoch, f.field, f.indices) for f in copied.findings] == [
        ("values", 0, "0", (5, 50, 99)),
        ("values", 1, "0", (5, 50, 99)),
    ], str(copied)
    assert copied.stats["train"]["epochs"][0]["0"].nan == 3


def _images_snapshot(tmp_path, epochs=2, raw="auto"):
    """``raw=None`` stores the seen rows in their epoch (with raw samples they are stored once, in raw/)."""
    loader = DataLoader(Images(100), batch_size=10, shuffle=True, generator=torch.Generator().manual_seed(3))
    return record(tmp_path / "img.snap", loader, epochs=epochs, raw=raw)


def test_flipped_byte_in_a_seen_chunk(tmp_path):
    snap = _images_snapshot(tmp_path, raw=None)
    order = snap["train"].epoch(1).order
    flip_byte(chunk_file(snap.path, "train/epochs/1/seen/0", 2))
    report = snapstore.audit(snap.path)  # a path works too
    integrity = only(report.findings, check="integrity")
    assert [(f.epoch, f.field) for f in integrity] == [(1, "0")], str(report)
    f = integrity[0]
    assert f.indices == tuple(sorted(order[64:96].tolist()))
    assert "'train/epochs/1/seen/0' chunk 2 (rows 64-95)" in f.message and "checksum" in f.message
    assert only(report.findings, check="values") == []  # the unreadable rows are not judged
    with pytest.raises(snapstore.CorruptionError, match="chunk 2"):
        list(snap["train"].epoch(1).batches())


def test_truncated_raw_chunk(tmp_path):
    snap = _images_snapshot(tmp_path)
    raw_index = zarr.open_array(f"{snap.path}/train/raw/index", mode="r")[:100]  # raw rows in order of capture
    truncate(chunk_file(snap.path, "train/raw/fields/0", 1))
    report = snapstore.audit(snap.path)
    assert [(f.check, f.epoch, f.field, f.indices) for f in report.findings] == [
        ("integrity", None, "0", tuple(sorted(raw_index[32:64].tolist()))),
    ], str(report)
    assert "'train/raw/fields/0' chunk 1" in report.findings[0].message


def test_missing_chunk_file(tmp_path):
    snap = _images_snapshot(tmp_path, raw=None)
    order = snap["train"].epoch(0).order
    chunk_file(snap.path, "train/epochs/0/seen/0", 3).unlink()
    report = snapstore.audit(snap.path)
    assert [(f.check, f.epoch, f.indices) for f in report.findings] == [
        ("integrity", 0, tuple(sorted(order[96:100].tolist())))
    ], str(report)
    assert "missing" in report.findings[0].message


def test_flipped_byte_in_order_and_hashes(tmp_path):
    snap = _images_snapshot(tmp_path)
    flip_byte(chunk_file(snap.path, "train/epochs/0/order", 0))
    flip_byte(chunk_file(snap.path, "train/epochs/1/hashes/seen/1", 0))
    report = snapstore.audit(snap.path)
    assert [(f.check, f.epoch, f.field) for f in report.findings] == [
        ("integrity", 0, None),
        ("integrity", 1, "1"),
    ], str(report)
    assert "'train/epochs/0/order' chunk 0" in report.findings[0].message
    assert report.findings[0].indices == ()  # the order itself is unreadable


def test_rewritten_chunk_fails_its_content_hash(tmp_path):
    snap = _images_snapshot(tmp_path, raw=None)
    order = snap["train"].epoch(1).order
    array = zarr.open_array(f"{snap.path}/train/epochs/1/seen/1", mode="r+")
    values = array[:]
    values[[4, 9]] += 1  # valid chunk, valid checksum, wrong content
    array[:] = values
    report = snapstore.audit(snap.path)
    integrity = only(report.findings, check="integrity")
    assert [(f.epoch, f.field, f.indices) for f in integrity] == [(1, "1", tuple(sorted(order[[4, 9]].tolist())))]
    assert "content hash" in integrity[0].message


def test_incomplete_epoch(tmp_path):
    loader = DataLoader(Images(100), batch_size=10, shuffle=True)
    snap = record(tmp_path / "s.snap", loader, epochs=2, stop_after={1: 3})
    assert not snap["train"].epoch(1).complete
    report = snapstore.audit(snap)
    assert [(f.check, f.epoch) for f in report.findings] == [("completeness", 1)], str(report)
    assert "holds 30 rows in 3 batches" in report.findings[0].message
    assert "100" in report.findings[0].message


def test_weighted_sampler_with_replacement_explains_repeats(tmp_path):
    n = 120
    sampler = WeightedRandomSampler(torch.ones(n), num_samples=n, replacement=True,
                                    generator=torch.Generator().manual_seed(1))
    loader = DataLoader(digits(n=n), batch_size=16, sampler=sampler)
    snap = record(tmp_path / "s.snap", loader, epochs=2)
    counts = np.bincount(snap["train"].epoch(0).order, minlength=n)
    assert counts.max() > 1 and (counts == 0).any()  # repeats and gaps happened
    report = snapstore.audit(snap)
    assert report.findings == [], str(report)


def test_custom_sampler_that_drops_and_repeats(tmp_path):
    loader = DataLoader(digits(n=100), batch_size=16, sampler=DropsAndRepeats(100, dropped=7, repeated=3))
    report = snapstore.audit(record(tmp_path / "s.snap", loader, epochs=2))
    got = [(f.check, f.epoch, f.indices) for f in report.findings]
    assert got == [
        ("coverage", 0, (3,)), ("coverage", 0, (7,)), ("coverage", 1, (3,)), ("coverage", 1, (7,))
    ], str(report)
    assert "more often" in report.findings[0].message and "never seen" in report.findings[1].message


def test_drop_last_tail_is_not_a_coverage_finding(tmp_path):
    loader = DataLoader(digits(n=100), batch_size=16, shuffle=True, drop_last=True)
    report = snapstore.audit(record(tmp_path / "s.snap", loader, epochs=1))
    assert report.ok, str(report)


def test_choosing_streams_and_epochs(tmp_path):
    ds = FlakyLabel(index=42, bad_epoch=1)
    snap = record(tmp_path / "s.snap", DataLoader(ds, batch_size=16), 3, before_epoch=lambda e: setattr(ds, "epoch", e))
    assert snapstore.audit(snap, epochs=[0, 2]).ok
    assert snapstore.audit(snap, streams=["train"], epochs=[1, 2]).findings[0].indices == (42,)
    with pytest.raises(snapstore.StreamNotFoundError, match="no stream"):
        snapstore.audit(snap, streams=["test"])
    with pytest.raises(snapstore.UsageError, match="epoch"):
        snapstore.audit(snap, epochs=[9])


def test_audit_of_a_copied_snapshot_is_the_same(tmp_path):
    snap = _images_snapshot(tmp_path, epochs=1)
    shutil.copytree(snap.path, tmp_path / "copy.snap")
    a, b = snapstore.audit(snap).to_dict(), snapstore.audit(tmp_path / "copy.snap").to_dict()
    assert a["findings"] == b["findings"] == [] and a["stats"] == b["stats"]


def test_damaged_array_metadata_is_a_finding_not_a_crash(tmp_path):
    snap = _images_snapshot(tmp_path, raw=None)
    meta = tmp_path / "img.snap/train/epochs/1/seen/0/zarr.json"
    meta.write_text(meta.read_text()[:100])
    report = snapstore.audit(tmp_path / "img.snap")
    assert [(f.check, f.epoch, f.field) for f in report.findings] == [("integrity", 1, "0")], str(report)
    assert "metadata (zarr.json) of train/epochs/1/seen/0 cannot be read" in report.findings[0].message
    assert snap["train"].epochs == [0, 1]
    with pytest.raises(snapstore.CorruptionError, match="train/epochs/1/seen/0"):  # reading it: no JSONDecodeError
        snap["train"].epoch(1)


def test_progress_bars(tmp_path, capsys):
    snap = record(tmp_path / "s.snap", DataLoader(digits(n=40), batch_size=8), epochs=1)
    assert snapstore.audit(snap, progress=True).ok
    assert snapstore.compare(snap["train"], digits(n=40), progress=True).ok
    err = capsys.readouterr().err
    assert "audit" in err and "compare train" in err


def test_damaged_epoch_metadata(tmp_path):
    snap = _images_snapshot(tmp_path)
    meta = tmp_path / "img.snap/train/epochs/1/zarr.json"
    meta.write_text(meta.read_text()[:200])
    report = snapstore.audit(tmp_path / "img.snap", epochs=[1])
    assert [(f.check, f.epoch, f.field) for f in report.findings] == [("integrity", 1, None)], str(report)
    with pytest.raises(snapstore.CorruptionError, match="train/epochs/1"):
        _ = snapstore.open(snap.path)["train"].epochs


# -- epochs recorded in parts, ragged fields ------------------------------------------------------


def test_clean_resume_audits_clean(snap_path):
    crash_then_resume(snap_path, resume_from_batch=5)
    report = snapstore.audit(snap_path)
    assert report.ok, str(report)
    assert snapstore.open(snap_path)["train"].epoch(1).hashes("1").size == 40  # both parts of epoch 1
    assert report.stats["train"]["epochs"].get(1, {}) == {}  # its rows are the raw rows, stored (and judged) once


def test_resume_from_an_older_checkpoint_repeats_samples(snap_path):
    crash_then_resume(snap_path, resume_from_batch=3)
    perm = list(Resumable(40, seed=1))
    report = snapstore.audit(snap_path)
    assert [(f.check, f.epoch, f.indices) for f in report.findings] == [("coverage", 1, tuple(sorted(perm[12:20])))]


def test_resume_past_the_crash_point_skips_samples(snap_path):
    crash_then_resume(snap_path, resume_from_batch=7)
    perm = list(Resumable(40, seed=1))
    report = snapstore.audit(snap_path)
    assert [(f.check, f.epoch, f.indices) for f in report.findings] == [("coverage", 1, tuple(sorted(perm[20:28])))]


def test_ragged_fields(tmp_path):
    def run(path):
        loader = DataLoader(Sentences(), batch_size=8, shuffle=True, collate_fn=ragged_rows,
                            generator=torch.Generator().manual_seed(0))
        with snapstore.record(loader, path) as s:
            for _ in range(2):
                list(s)
        return snapstore.open(path)

    a, b = run(tmp_path / "a.snap"), run(tmp_path / "b.snap")
    ep = a["train"].epoch(0)
    assert a["train"].fields["0"].ragged
    assert np.array_equal(ep.hashes("0"), row_hashes(ep.to_numpy()["0"]))  # a list of arrays
    assert np.array_equal(a["train"].raw.hashes("value"), row_hashes(a["train"].raw.to_numpy()["value"]))
    assert snapstore.audit(a).ok
    assert snapstore.diff(a, b).identical
    flip_byte(chunk_file(b.path, "train/epochs/1/ragged/0/values", 0))
    report = snapstore.audit(b.path)
    assert [(f.check, f.epoch, f.field) for f in report.findings] == [("integrity", 1, "0")], str(report)
    assert "'train/epochs/1/ragged/0/values' chunk 0" in report.findings[0].message


def test_missing_ragged_offsets_chunk(tmp_path):
    with snapstore.record(DataLoader(Sentences(), batch_size=8, collate_fn=ragged_rows), tmp_path / "s.snap") as s:
        list(s)
    order = snapstore.open(tmp_path / "s.snap")["train"].epoch(0).order
    chunk_file(tmp_path / "s.snap", "train/epochs/0/ragged/0/offsets", 0).unlink()
    report = snapstore.audit(tmp_path / "s.snap")
    assert [(f.check, f.epoch, f.field, f.indices) for f in report.findings] == [
        ("integrity", 0, "0", tuple(sorted(order.tolist())))], str(report)
    assert "missing" in report.findings[0].message
