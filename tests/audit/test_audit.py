"""snapstore.audit and snapstore.compare on real DataLoaders and real snapshots, exact indices."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import zarr
from audit_support import (
    Digits,
    DivideBySum,
    DropsAndRepeats,
    FlakyLabel,
    Images,
    PositiveDigits,
    ShiftNoise,
    WithNaN,
    chunk_file,
    flip_byte,
    only,
    record,
    truncate,
)
from torch.utils.data import DataLoader, WeightedRandomSampler

import snapstore
from snapstore.audit import checks
from snapstore.audit.report import Finding


def test_clean_real_data_has_no_findings(tmp_path):
    ds = Digits(transform=ShiftNoise())
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
    ds = PositiveDigits(blank=(13, 77), transform=DivideBySum())
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
    assert [(f.check, f.epoch, f.indices) for f in report.findings] == [("stability", 1, (7,)), ("raw_vs_seen", 1, (7,))]


def test_nan_in_a_few_samples(tmp_path):
    loader = DataLoader(WithNaN(bad=(5, 50, 99)), batch_size=16, shuffle=True, num_workers=2)
    report = snapstore.audit(record(tmp_path / "s.snap", loader, epochs=2))
    assert [(f.check, f.epoch, f.field, f.indices) for f in report.findings] == [
        ("values", None, "0", (5, 50, 99)),
        ("values", 0, "0", (5, 50, 99)),
        ("values", 1, "0", (5, 50, 99)),
    ], str(report)
    assert "NaN" in report.findings[1].message
    assert report.stats["train"]["epochs"][0]["0"].nan == 3


def _images_snapshot(tmp_path, epochs=2):
    loader = DataLoader(Images(100), batch_size=10, shuffle=True, generator=torch.Generator().manual_seed(3))
    return record(tmp_path / "img.snap", loader, epochs=epochs)


def test_flipped_byte_in_a_seen_chunk(tmp_path):
    snap = _images_snapshot(tmp_path)
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
    snap = _images_snapshot(tmp_path)
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
    snap = _images_snapshot(tmp_path)
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
    loader = DataLoader(Digits(n=n), batch_size=16, sampler=sampler)
    snap = record(tmp_path / "s.snap", loader, epochs=2)
    counts = np.bincount(snap["train"].epoch(0).order, minlength=n)
    assert counts.max() > 1 and (counts == 0).any()  # repeats and gaps happened
    report = snapstore.audit(snap)
    assert report.findings == [], str(report)


def test_custom_sampler_that_drops_and_repeats(tmp_path):
    loader = DataLoader(Digits(n=100), batch_size=16, sampler=DropsAndRepeats(100, dropped=7, repeated=3))
    report = snapstore.audit(record(tmp_path / "s.snap", loader, epochs=2))
    got = [(f.check, f.epoch, f.indices) for f in report.findings]
    assert got == [("coverage", 0, (3,)), ("coverage", 0, (7,)), ("coverage", 1, (3,)), ("coverage", 1, (7,))], str(report)
    assert "more often" in report.findings[0].message and "never seen" in report.findings[1].message


def test_drop_last_tail_is_not_a_coverage_finding(tmp_path):
    loader = DataLoader(Digits(n=100), batch_size=16, shuffle=True, drop_last=True)
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


def test_sequential_and_threaded_scans_agree(tmp_path):
    dask = pytest.importorskip("dask")
    loader = DataLoader(PositiveDigits(blank=(13, 77), transform=DivideBySum()), batch_size=32, shuffle=True)
    snap = record(tmp_path / "s.snap", loader, epochs=2)
    threaded = snapstore.audit(snap).to_dict()
    with dask.config.set(scheduler="synchronous"):
        single = snapstore.audit(snap).to_dict()
    for d in (threaded, single):
        d.pop("scanned")
    assert threaded == single


def test_report_to_dict_and_str(tmp_path):
    loader = DataLoader(WithNaN(bad=(5,)), batch_size=16)
    report = snapstore.audit(record(tmp_path / "s.snap", loader, epochs=1))
    d = json.loads(json.dumps(report.to_dict()))
    assert d["ok"] is False
    assert d["findings"][0] == {"check": "values", "stream": "train", "epoch": None, "field": "0", "indices": [5],
                                "count": 1, "message": report.findings[0].message}
    assert d["stats"]["train"]["epochs"]["0"]["0"]["nan"] == 1
    text = str(report)
    assert "2 findings" in text and "[values] stream 'train' epoch 0 field '0'" in text and "indices: 5" in text


def test_finding_indices_are_capped_and_counted():
    f = Finding.make("coverage", "many", stream="s", epoch=0, indices=np.arange(1000)[::-1])
    assert f.count == 1000 and len(f.indices) == snapstore.config.MAX_FINDING_INDICES and f.indices[:3] == (0, 1, 2)
    assert "(+980 more)" in str(f) and len(f.to_dict()["indices"]) == 100


# -- the pure checks ---------------------------------------------------------------------


def test_outlier_rule_needs_orders_of_magnitude():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, 64)).astype(np.float32)
    x[:50, 0] = 40  # 1% of rows with a rare large value, as per-pixel standardisation makes: not a finding
    summary, _ = checks.summarise(x, "float32")
    assert not checks.outlier_rows(summary)[0].any()
    x[[10, 4000], 5] = 5e4
    summary, _ = checks.summarise(x, "float32")
    assert np.nonzero(checks.outlier_rows(summary)[0])[0].tolist() == [10, 4000]


def test_summarise_matches_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(100, 3, 4))
    x[3, 1, 1], x[7, 0, 0] = np.nan, -np.inf
    summary, m = checks.summarise(x, "float64")
    halves = [checks.summarise(x[:40], "float64")[1], checks.summarise(x[40:], "float64")[1]]
    merged = halves[0].merge(halves[1]).stats()
    finite = x[np.isfinite(x)]
    for s in (m.stats(), merged):
        assert s.count == finite.size and s.nan == 1 and s.inf == 1
        assert np.isclose(s.mean, finite.mean()) and np.isclose(s.std, finite.std())
        assert s.min == finite.min() and s.max == finite.max()
    assert np.nonzero(summary.nan)[0].tolist() == [3] and np.nonzero(summary.inf)[0].tolist() == [7]


@pytest.mark.parametrize(
    ("provenance", "n", "expected"),
    [
        ({"sampler": {"class": "torch.utils.data.sampler.SequentialSampler"}, "batch_sampler": None}, 10, (1, 1, 0)),
        ({"batch_sampler": {"class": "torch.utils.data.sampler.BatchSampler", "batch_size": 4, "drop_last": True,
                            "sampler": {"class": "torch.utils.data.sampler.RandomSampler", "replacement": False,
                                        "num_samples": 10}}}, 10, (1, 1, 2)),
        ({"batch_sampler": {"class": "torch.utils.data.sampler.BatchSampler", "batch_size": 4, "drop_last": False,
                            "sampler": {"class": "torch.utils.data.sampler.RandomSampler", "replacement": True,
                                        "num_samples": 10}}}, 10, (0, None, 0)),
        ({"batch_sampler": {"class": "torch.utils.data.sampler.BatchSampler", "batch_size": 4, "drop_last": False,
                            "sampler": {"class": "torch.utils.data.sampler.RandomSampler", "replacement": False,
                                        "num_samples": 25}}}, 10, (2, 3, 0)),
        ({"batch_sampler": {"class": "torch.utils.data.sampler.BatchSampler", "batch_size": 4,
                            "sampler": {"class": "torch.utils.data.distributed.DistributedSampler", "num_replicas": 2,
                                        "num_samples": 5, "drop_last": False}}}, 10, (0, 1, 0)),
        ({"sampler": {"class": "torch.utils.data.sampler.SequentialSampler"},
          "batch_sampler": {"class": "mylib.BucketBatchSampler"}}, 10, (1, 1, 0)),
    ],
)
def test_sampler_expectation(provenance, n, expected):
    e = checks.sampler_expectation(provenance, n)
    assert (e.min_count, e.max_count, e.missing_allowed) == expected


def test_stability_ignores_augmented_fields():
    order = np.arange(100)
    rng = np.random.default_rng(2)
    augmented = [(e, order, rng.integers(1, 2**63, 100, dtype=np.uint64)) for e in range(3)]
    assert checks.check_stability(augmented, stream="s", field="x", dataset_len=100) == []
    stable = rng.integers(1, 2**63, 100, dtype=np.uint64)
    epochs = [(e, rng.permutation(100), None) for e in range(3)]
    runs = []
    for e, o, _ in epochs:
        h = stable[o].copy()
        if e == 0:
            h[np.nonzero(o == 17)[0]] += np.uint64(1)  # epoch 0 is the odd one out for index 17
        runs.append((e, o, h))
    got = checks.check_stability(runs, stream="s", field="y", dataset_len=100)
    assert [(f.epoch, f.indices) for f in got] == [(0, (17,))]


# -- compare ----------------------------------------------------------------------------------


def test_compare_with_a_live_dataset_changed_at_two_indices(tmp_path):
    ds = Digits(n=150, transform=ShiftNoise())
    snap = record(tmp_path / "s.snap", DataLoader(ds, batch_size=16, shuffle=True, num_workers=2), epochs=1)
    live = Digits(n=150, transform=ShiftNoise())  # rebuilt today; transforms do not matter: raw samples are compared
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
    snap = record(tmp_path / "s.snap", DataLoader(Digits(n=60), batch_size=16), epochs=1)
    report = snapstore.compare(snap["train"], Digits(n=55), progress=False)
    assert [(f.check, f.indices) for f in report.findings] == [("drift", ()), ("drift", (55, 56, 57, 58, 59))]
    with pytest.raises(snapstore.UsageError):
        snapstore.compare(snap, Digits(n=60))


def test_compare_without_raw_samples(tmp_path):
    snap = record(tmp_path / "s.snap", DataLoader(Digits(n=20), batch_size=8), epochs=1, raw=None)
    with pytest.raises(snapstore.UsageError, match="no raw samples"):
        snapstore.compare(snap["train"], Digits(n=20))


def test_audit_of_a_copied_snapshot_is_the_same(tmp_path):
    snap = _images_snapshot(tmp_path, epochs=1)
    shutil.copytree(snap.path, tmp_path / "copy.snap")
    a, b = snapstore.audit(snap).to_dict(), snapstore.audit(tmp_path / "copy.snap").to_dict()
    assert a["findings"] == b["findings"] == [] and a["stats"] == b["stats"]


def test_damaged_array_metadata_is_a_finding_not_a_crash(tmp_path):
    snap = _images_snapshot(tmp_path)
    meta = tmp_path / "img.snap/train/epochs/1/seen/0/zarr.json"
    meta.write_text(meta.read_text()[:100])
    report = snapstore.audit(tmp_path / "img.snap")
    assert [(f.check, f.epoch, f.field) for f in report.findings] == [("integrity", 1, "0")], str(report)
    assert "metadata (zarr.json) of train/epochs/1/seen/0 cannot be read" in report.findings[0].message
    assert snap["train"].epochs == [0, 1]
    with pytest.raises(snapstore.CorruptionError, match="train/epochs/1/seen/0"):  # reading it: no JSONDecodeError
        snap["train"].epoch(1)


def test_progress_bars(tmp_path, capsys):
    snap = record(tmp_path / "s.snap", DataLoader(Digits(n=40), batch_size=8), epochs=1)
    assert snapstore.audit(snap, progress=True).ok
    assert snapstore.compare(snap["train"], Digits(n=40), progress=True).ok
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
