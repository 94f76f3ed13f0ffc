"""A Stream opened while a recording runs reads epochs committed after it was opened, schema included; a
reader that reads between two of the recorder's steps sees a snapshot being written, never damage."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
import torch
import zarr
from torch.utils.data import DataLoader, TensorDataset

import snapstore
from snapstore.core import layout
from snapstore.core.merkle import RAW_ROWS
from snapstore.storage import tree
from snapstore.storage.groups import SnapshotStore
from tests.support.recording import record
from tests.support.snapshots import edit_json


def test_stream_opened_before_the_first_batch_reads_later_epochs(snap_path):
    loader = DataLoader(TensorDataset(torch.arange(40.0).reshape(40, 1), torch.arange(40)), batch_size=8)
    with snapstore.Recorder(snap_path) as rec:
        train = rec.wrap(loader, name="train")
        deadline = time.monotonic() + 30
        while "train" not in snapstore.open(snap_path) and time.monotonic() < deadline:
            time.sleep(0.05)
        stream = snapstore.open(snap_path)["train"]  # no batch yet: the stream has no schema
        assert stream.manifest.structure is None
        for _ in train:
            pass
    ep = stream.epoch(0)
    assert len(ep) == 40 and list(stream.fields) == ["0", "1"]
    first = ep.batch(0)
    assert torch.equal(first[1], torch.arange(8))
    np.testing.assert_array_equal(ep.to_numpy()["1"], np.arange(40))


def test_a_stream_lists_epochs_appended_after_it_was_opened(snap_path):
    loader = DataLoader(TensorDataset(torch.arange(16.0).reshape(16, 1), torch.arange(16)), batch_size=8)
    for mode in ("w", "a"):
        with snapstore.Recorder(snap_path, mode=mode) as rec:
            for _ in rec.wrap(loader, name="train"):
                pass
        if mode == "w":
            stream = snapstore.open(snap_path)["train"]
            assert stream.epochs == [0]
    assert stream.epochs == [0, 1]  # listed again, not kept from the first access
    assert len(stream.epoch(1)) == 16 and len(stream.epoch(-1)) == 16


# -- a reader racing the recorder: each step below is one the recorder takes between two of the reader's reads


def write_after_read(monkeypatch, key, write):
    """Run ``write`` (the recorder's next step, on disk) right after the reader's next read of store key
    ``key``: the reader goes on with what ``key`` held before, and finds the rest as ``write`` left it."""
    real = SnapshotStore.get
    armed = [True]

    async def get(self, k, prototype=None, byte_range=None):
        data = await real(self, k, prototype, byte_range)
        if armed[0] and k == key:
            armed[0] = False
            write()
        return data

    monkeypatch.setattr(SnapshotStore, "get", get)


def sixteen(sampler=range(16)):
    return DataLoader(TensorDataset(torch.arange(16.0).reshape(16, 1)), batch_size=4, sampler=list(sampler))


def test_a_snapshot_whose_root_is_written_as_it_is_opened_opens(snap_path, tmp_path, monkeypatch):
    record(tmp_path / "done.snap", sixteen(), epochs=1)
    snap_path.mkdir()  # the folder a recorder makes and locks before zarr writes the root's zarr.json
    (snap_path / "zarr.0123.partial").write_bytes(b"{")  # zarr's temporary file: no data yet
    with pytest.raises(snapstore.SnapshotNotFoundError, match="no snapshot at"):
        snapstore.open(snap_path)
    write_after_read(monkeypatch, "zarr.json",
                     lambda: shutil.copytree(tmp_path / "done.snap", snap_path, dirs_exist_ok=True))
    assert snapstore.open(snap_path)["train"].epochs == [0]  # looked for before it was written, found after


def test_a_list_of_epochs_read_before_the_first_epoch_was_named_is_read_again(snap_path, monkeypatch):
    """A reader reads a stream's list of epochs before the epochs' records; one read before the recorder
    named the first epoch names none (seen in CI: the crash test's concurrent reader raised)."""
    record(snap_path, sixteen(), epochs=1)
    listed = snap_path / "train/epochs/zarr.json"
    written = listed.read_bytes()
    edit_json(listed, lambda d: d["attributes"].pop(layout.PIECES_ATTR))  # as the stream's group was made
    stream = snapstore.open(snap_path)["train"]
    write_after_read(monkeypatch, "train/epochs/zarr.json", lambda: listed.write_bytes(written))
    assert stream.epochs == [0] and len(stream.epoch(0)) == 16

    edit_json(listed, lambda d: d["attributes"].pop(layout.PIECES_ATTR))  # never written: damage
    with pytest.raises(snapstore.CorruptionError, match=r"list of epochs .* is missing"):
        stream.epochs
    edit_json(listed, lambda d: d["attributes"].update({layout.PIECES_ATTR: {}}))  # written without epoch 0
    with pytest.raises(snapstore.CorruptionError, match="an epoch its stream's list of epochs does not name"):
        stream.epochs


def test_an_epoch_read_before_its_record_with_its_data_read_after_is_read_again(snap_path, tmp_path, monkeypatch):
    record(snap_path, sixteen(), epochs=1)
    epoch = snap_path / "train/epochs/0"
    shutil.copytree(epoch, tmp_path / "recorded")
    # as the recorder made its group, before its record and data
    edit_json(epoch / "zarr.json", lambda d: d["attributes"].clear())
    created = (epoch / "zarr.json").read_bytes()
    stream = snapstore.open(snap_path)["train"]

    def recorded():
        shutil.rmtree(epoch)
        shutil.copytree(tmp_path / "recorded", epoch)

    write_after_read(monkeypatch, "train/epochs/0/zarr.json", recorded)
    assert stream.epochs == [0] and len(stream.epoch(0)) == 16

    (epoch / "zarr.json").write_bytes(created)  # its data without its record: damage
    with pytest.raises(snapstore.CorruptionError, match="holds data but its 'epoch' manifest attribute is missing"):
        stream.epochs


def test_a_raw_record_read_before_a_later_epoch_committed_more_is_read_again(snap_path):
    """A reader reads the raw samples' commit record (``before``), then the list of epochs: an epoch that
    finished in between seals more raw rows than that record commits."""
    record(snap_path, sixteen(range(8)), epochs=1)
    before = zarr.open_group(snap_path, path="train/raw", mode="r")
    with snapstore.Recorder(snap_path, mode="a") as rec:  # fetches samples 8-15 for the first time
        for _ in rec.wrap(sixteen(), name="train"):
            pass
    stream = zarr.open_group(snap_path, path="train", mode="r")
    assert before.attrs[layout.RAW_ATTR]["rows"] == 8 < stream["epochs"].attrs[layout.PIECES_ATTR][RAW_ROWS] == 16
    where = f"{snap_path}/train/raw"
    tree.raw_coverage(stream, before, where)  # the record read again commits 16

    older = {layout.RAW_ATTR: before.attrs[layout.RAW_ATTR]}
    edit_json(snap_path / "train/raw/zarr.json", lambda d: d["attributes"].update(older))
    with pytest.raises(snapstore.CorruptionError, match="commits 8 raw rows, fewer than the 16"):
        tree.raw_coverage(stream, before, where)  # replaced by the older record: damage


def test_a_chunk_being_written_is_no_stored_key(snap_path):
    """zarr writes a chunk to ``c.<uuid>.partial`` and renames it: a reader sizing the keys it listed found
    the temporary file gone (a bare ``FileNotFoundError`` from ``snapstore.audit`` in a stress run)."""
    record(snap_path, sixteen(), epochs=1)
    stored = snapstore.open(snap_path).info()["bytes_stored"]
    (snap_path / "train/epochs/0/order/c.1.0123.partial").write_bytes(bytes(4096))  # the next chunk, half written
    assert snapstore.open(snap_path).info()["bytes_stored"] == stored
    report = snapstore.audit(snap_path)
    assert report.ok and report.to_dict()["scanned"]["bytes_stored"] == stored
