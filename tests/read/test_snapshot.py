"""``snapstore.open`` (``snapstore.read.snapshot``): what is not a snapshot is named as such, and reading
never writes."""

from __future__ import annotations

import pytest
from torch.utils.data import DataLoader

import snapstore
from tests.support.datasets import Indexed


def test_a_directory_that_is_no_snapshot(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.png").write_bytes(b"\x89PNG")
    with pytest.raises(snapstore.NotASnapshotError, match="photos"):
        snapstore.open(tmp_path / "photos")
    with pytest.raises(snapstore.SnapshotNotFoundError, match="no snapshot at"):
        snapstore.open(tmp_path / "nothing-here")


def test_a_plain_zarr_group_or_array_is_no_snapshot(tmp_path):
    import zarr

    zarr.create_group(str(tmp_path / "group.zarr"))
    zarr.create_array(str(tmp_path / "array.zarr"), shape=(3,), dtype="int8")
    with pytest.raises(snapstore.NotASnapshotError, match="snapstore.Recorder"):
        snapstore.open(tmp_path / "group.zarr")
    with pytest.raises(snapstore.NotASnapshotError, match="array"):
        snapstore.open(tmp_path / "array.zarr")


def test_open_errors(tmp_path):
    with pytest.raises(snapstore.SnapshotNotFoundError, match="no snapshot at"):
        snapstore.open(tmp_path / "missing.snap")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    with pytest.raises(snapstore.NotASnapshotError):
        snapstore.open(junk)
    with pytest.raises(snapstore.SnapshotNotFoundError):
        snapstore.Recorder(tmp_path / "missing.snap", mode="a")


def test_reading_never_writes(snap_path):
    with snapstore.record(DataLoader(Indexed(10), batch_size=3, shuffle=True), snap_path) as s:
        list(s)
    before = {p: p.stat().st_mtime_ns for p in snap_path.rglob("*")}
    snap = snapstore.open(snap_path)
    snap.info()
    stream = snap["train"]
    list(stream.epoch(0).batches())
    stream.raw[3]
    stream.to_tensor_dataset()
    after = {p: p.stat().st_mtime_ns for p in snap_path.rglob("*")}
    assert before == after
