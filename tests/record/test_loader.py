"""Bad input gets a clear SnapstoreError, and failures never lose committed rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import FailAt, Indexed
from torch.utils.data import DataLoader

import snapstore
from snapstore.core import layout


def test_mode_w_refuses_to_overwrite_a_snapshot(snap_path):
    with snapstore.record(DataLoader(Indexed(6), batch_size=3), snap_path) as s:
        list(s)
    with pytest.raises(snapstore.SnapshotExistsError, match="overwrite=True or mode='a'"):
        snapstore.Recorder(snap_path)
    assert snapstore.open(snap_path)["train"].epochs == [0]  # untouched
    with snapstore.Recorder(snap_path, overwrite=True) as rec:
        assert rec  # replaced
    assert snapstore.open(snap_path).streams == []


def test_other_data_is_never_overwritten(tmp_path):
    victim = tmp_path / "results"
    victim.mkdir()
    (victim / "model.pt").write_bytes(b"weights")
    with pytest.raises(snapstore.SnapshotExistsError, match="not a snapshot"):
        snapstore.Recorder(victim, overwrite=True)
    assert (victim / "model.pt").read_bytes() == b"weights"
    assert isinstance(snapstore.SnapshotExistsError("x"), FileExistsError)


def test_bad_arguments(snap_path):
    loader = DataLoader(Indexed(4), batch_size=2)
    with pytest.raises(snapstore.UsageError, match="mode='x'"):
        snapstore.Recorder(snap_path, mode="x")
    with pytest.raises(snapstore.UsageError, match="compressor"):
        snapstore.Recorder(snap_path, compressor="brotli")
    with snapstore.Recorder(snap_path) as rec:
        rec.wrap(loader, name="train")
        with pytest.raises(snapstore.UsageError, match="already recorded"):
            rec.wrap(loader, name="train")
        with pytest.raises(snapstore.UsageError, match="not usable"):
            rec.wrap(loader, name="a/b")
        with pytest.raises(snapstore.UsageError, match="DataLoader"):
            rec.wrap([1, 2], name="x")
        with pytest.raises(snapstore.UsageError, match="raw="):
            rec.wrap(loader, name="y", raw="everything")


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


def test_newer_format_version_is_refused(snap_path):
    with snapstore.Recorder(snap_path):
        pass
    meta = snap_path / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"][layout.SNAPSHOT_ATTR]["format_version"] = layout.FORMAT_VERSION + 1
    meta.write_text(json.dumps(doc))
    with pytest.raises(snapstore.FormatVersionError, match="pip install -U snapstore"):
        snapstore.open(snap_path)


def test_dataset_exception_propagates_unchanged_and_marks_epoch_incomplete(snap_path):
    loader = DataLoader(FailAt(bad=23), batch_size=4)
    with pytest.raises(KeyError, match="sample 23 is missing"):
        with snapstore.record(loader, snap_path) as stream:
            list(stream)  # complete epoch 0 ... no: index 23 fails in epoch 0
    ep = snapstore.open(snap_path)["train"].epoch(0)
    assert not ep.complete
    assert len(ep) == 20 and ep.order.tolist() == list(range(20))
    assert ep.batch(4)[1].tolist() == [16, 17, 18, 19]


def test_worker_exception_propagates(snap_path):
    loader = DataLoader(FailAt(bad=9), batch_size=4, num_workers=2)
    with snapstore.record(loader, snap_path) as stream:
        with pytest.raises(KeyError, match="sample 9 is missing"):
            for _ in stream:
                pass
    ep = snapstore.open(snap_path)["train"].epoch(0)
    assert not ep.complete and len(ep) in (4, 8)


def test_exception_in_the_training_loop_and_break(snap_path):
    with pytest.raises(ZeroDivisionError):
        with snapstore.Recorder(snap_path) as rec:
            s = rec.wrap(DataLoader(Indexed(20), batch_size=4), name="train")
            list(s)
            for j, _ in enumerate(s):
                if j == 2:
                    s.log(loss=torch.ones(4))
                    1 / 0
    stream = snapstore.open(snap_path)["train"]
    assert stream.epoch(0).complete and not stream.epoch(1).complete
    assert len(stream.epoch(1)) == 12
    np.testing.assert_array_equal(stream.epoch(1).outputs["loss"][8:12], 1)

    with snapstore.record(DataLoader(Indexed(20), batch_size=4), snap_path, overwrite=True) as s:
        for j, _ in enumerate(s):
            if j == 1:
                break
        list(s)
    stream = snapstore.open(snap_path)["train"]
    assert [stream.epoch(e).complete for e in stream.epochs] == [False, True]
    assert len(stream.epoch(0)) == 8


def rank_collate(items):
    x = torch.stack([x for x, _ in items]).reshape(len(items), -1)
    return (x if items[0][1] < 10 else x[..., None]), torch.tensor([i for _, i in items])


def test_rank_change_mid_epoch_names_field_and_keeps_committed_rows(snap_path):
    loader = DataLoader(Indexed(30), batch_size=5, collate_fn=rank_collate)
    with snapstore.record(loader, snap_path) as stream:
        with pytest.raises(snapstore.SchemaError) as err:
            list(stream)
    message = str(err.value)
    assert "epoch 0 batch 2" in message and "field '0'" in message
    assert "dtype float32 shape (48,)" in message and "dtype float32 shape (48, 1)" in message
    ep = snapstore.open(snap_path)["train"].epoch(0)
    assert not ep.complete and len(ep) == 10
    assert ep.batch(1)[1].tolist() == [5, 6, 7, 8, 9]


def test_dtype_change_is_refused(snap_path):
    def collate(items):
        idx = torch.tensor([i for _, i in items])
        return idx.double() if idx[0] >= 10 else idx

    with snapstore.record(DataLoader(Indexed(20), batch_size=5, collate_fn=collate), snap_path) as stream:
        with pytest.raises(snapstore.SchemaError, match="dtype int64 shape .* to dtype float64"):
            list(stream)
    assert len(snapstore.open(snap_path)["train"].epoch(0)) == 10


def test_log_errors(snap_path):
    with snapstore.Recorder(snap_path) as rec:
        s = rec.wrap(DataLoader(Indexed(8), batch_size=4), name="train")
        with pytest.raises(snapstore.UsageError, match="inside the loop"):
            s.log(loss=torch.ones(4))
        for _ in s:
            with pytest.raises(snapstore.SchemaError, match=r"shape \(3,\) but the batch holds 4"):
                s.log(loss=torch.ones(3))
            with pytest.raises(snapstore.SchemaError, match="tensor or array"):
                s.log(loss="high")
            s.log(loss=torch.ones(4))
            with pytest.raises(snapstore.SchemaError, match="earlier batches"):
                s.log(loss=torch.ones(4, 2))
        with pytest.raises(snapstore.UsageError, match="inside the loop"):
            s.log(loss=torch.ones(4))


def test_unsupported_leaf_type(snap_path):
    def collate(items):
        return {"x": torch.stack([x for x, _ in items]), "obj": object()}

    with snapstore.record(DataLoader(Indexed(8), batch_size=4, collate_fn=collate), snap_path) as s:
        with pytest.raises(snapstore.SchemaError, match="field 'obj' holds a builtins.object"):
            list(s)


def test_non_integer_indices_are_refused(snap_path):
    class Keyed(torch.utils.data.Dataset):
        def __getitem__(self, key):
            return torch.zeros(2)

        def __len__(self):
            return 2

    loader = DataLoader(Keyed(), batch_size=2, sampler=["a", "b"])
    with snapstore.record(loader, snap_path) as s:
        with pytest.raises(snapstore.SchemaError, match="integer dataset indices"):
            list(s)


def test_recorder_is_closed_after_exit(snap_path):
    with snapstore.Recorder(snap_path) as rec:
        s = rec.wrap(DataLoader(Indexed(4), batch_size=2), name="train")
    with pytest.raises(snapstore.UsageError, match="closed"):
        list(s)
    with pytest.raises(snapstore.UsageError, match="closed"):
        rec.wrap(DataLoader(Indexed(4)), name="more")


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


def test_append_with_a_different_dataset_is_refused(snap_path):
    with snapstore.record(DataLoader(Indexed(10), batch_size=3), snap_path) as s:
        list(s)
    with snapstore.Recorder(snap_path, mode="a") as rec:
        with pytest.raises(snapstore.UsageError, match="dataset of 10 samples; this loader's dataset has 6"):
            rec.wrap(DataLoader(Indexed(6), batch_size=3), name="train")
