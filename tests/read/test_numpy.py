"""``to_numpy`` (``snapstore.read.numpy``): an epoch's seen rows and a stream's raw samples as NumPy arrays
equal what the loader yielded, in memory or into memmaps; ragged fields as lists of rows or zero-padded
with their lengths.

Every snapshot here is recorded for real, on disk, through a DataLoader with
two workers (fixtures in ``tests/conftest.py``); the batches the loop saw are
kept (a preallocated NumPy loop) and every export is compared against them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

import snapstore
from snapstore import export
from snapstore.cli import main as cli_main
from tests.support.datasets import SEQUENCES, Sequences, padded_per_batch
from tests.support.recording import BATCH, EPOCHS, N, capture_order, record_sequences


@pytest.mark.parametrize("e", range(EPOCHS))
def test_to_numpy_equals_the_loop(loop_recording, loop_stream, loop_tensors, e):
    _, seen = loop_recording
    out = loop_stream.epoch(e).to_numpy()
    assert list(out) == ["index", "0", "1"]
    assert out["0"].dtype == np.float32 and out["1"].dtype == np.int64 and out["index"].dtype == np.int64
    np.testing.assert_array_equal(out["0"], seen.x[e])
    np.testing.assert_array_equal(out["1"], seen.y[e])
    np.testing.assert_array_equal(out["index"], loop_stream.epoch(e).order)
    x, y = loop_tensors
    np.testing.assert_array_equal(x.numpy()[out["index"]], seen.x[e])
    np.testing.assert_array_equal(y.numpy()[out["index"]], seen.y[e])  # the index is each row's dataset index


def test_to_numpy_into_memmaps_equals_in_memory(loop_stream, tmp_path):
    ep = loop_stream.epoch(1)
    specs = export.out_specs(ep)
    out = {k: np.lib.format.open_memmap(tmp_path / f"{k}.npy", mode="w+", shape=s, dtype=d)
           for k, (s, d) in specs.items()}
    got = ep.to_numpy(out=out)
    assert all(got[k] is out[k] for k in out)
    expected = ep.to_numpy()
    del got, out
    for k, v in expected.items():
        np.testing.assert_array_equal(np.load(tmp_path / f"{k}.npy", mmap_mode="r"), v)


def test_to_numpy_partial_out_and_fields(loop_stream, loop_recording):
    _, seen = loop_recording
    ep = loop_stream.epoch(0)
    x = np.zeros((N, 3, 32, 32), dtype=np.float32)
    got = ep.to_numpy(fields=["0"], out={"0": x})
    assert list(got) == ["index", "0"] and got["0"] is x
    np.testing.assert_array_equal(x, seen.x[0])
    only_y = ep.to_numpy(fields=["1"])
    assert list(only_y) == ["index", "1"]
    np.testing.assert_array_equal(only_y["1"], seen.y[0])


@pytest.mark.parametrize(
    ("out", "match"),
    [
        ({"0": np.empty((N, 3, 32, 31), np.float32)}, "shape"),
        ({"0": np.empty((N, 3, 32, 32), np.float64)}, "dtype"),
        ({"1": np.empty(N - 1, np.int64)}, "shape"),
        ({"zz": np.empty(N)}, "does not write"),
        ({"0": [0.0] * N}, "numpy.ndarray"),
    ],
)
def test_to_numpy_rejects_bad_out(loop_stream, out, match):
    with pytest.raises(snapstore.UsageError, match=match):
        loop_stream.epoch(0).to_numpy(out=out)


def test_to_numpy_rejects_read_only_out_and_unknown_fields(loop_stream):
    ro = np.empty((N,), np.int64)
    ro.flags.writeable = False
    with pytest.raises(snapstore.UsageError, match="read-only"):
        loop_stream.epoch(0).to_numpy(out={"index": ro})
    with pytest.raises(snapstore.FieldNotFoundError, match=r"no field 'nope'.*\['0', '1'\]"):
        loop_stream.epoch(0).to_numpy(fields=["nope"])


def test_raw_to_numpy_is_index_order(loop_stream, loop_tensors, tmp_path):
    x, y = loop_tensors
    # captured in shuffled order: the export must reorder
    assert not np.all(np.diff(capture_order(loop_stream.raw)) > 0)
    raw = loop_stream.raw.to_numpy()
    np.testing.assert_array_equal(raw["index"], np.arange(N))
    np.testing.assert_array_equal(raw["0"], x.numpy())
    np.testing.assert_array_equal(raw["1"], y.numpy())
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", shape=(N, 3, 32, 32), dtype=np.float32)
    loop_stream.raw.to_numpy(fields=["0"], out={"0": mm})
    np.testing.assert_array_equal(mm, x.numpy())


def test_incomplete_epoch_exports_committed_rows_only(tmp_path, loop_tensors):
    x, y = loop_tensors
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, num_workers=2)
    with snapstore.Recorder(tmp_path / "cut.snap") as rec:
        train = rec.wrap(loader, name="train")
        for k, _ in enumerate(train):
            if k == 9:
                break
    ep = snapstore.open(tmp_path / "cut.snap")["train"].epoch(0)
    assert not ep.complete and len(ep) == 10 * BATCH
    out = ep.to_numpy()
    np.testing.assert_array_equal(out["0"], x.numpy()[: 10 * BATCH])
    pytest.importorskip("dask")
    d = ep.to_dask()
    assert d["0"].shape == (10 * BATCH, 3, 32, 32)
    np.testing.assert_array_equal(d["0"].compute(), out["0"])


def test_dict_batches_to_numpy_keeps_strings(dict_recording):
    stream, _, batches = dict_recording
    out = stream.epoch(0).to_numpy()
    assert list(out) == ["index", "image", "label", "meta/id", "meta/name"]
    assert out["meta/name"].tolist() == [n for b in batches for n in b["meta"]["name"]]
    np.testing.assert_array_equal(out["image"], torch.cat([b["image"] for b in batches]).numpy())
    with pytest.raises(snapstore.SchemaError, match="strings"):
        stream.to_tensor_dataset(epoch=0)


class Dwindling(IterableDataset):
    """Yields 30 one-element tensors the first time, nothing after: an epoch with no rows but a known schema."""

    def __init__(self) -> None:
        self.passes = 0

    def __iter__(self):
        self.passes += 1
        return iter([torch.tensor([float(i)]) for i in range(30)] if self.passes == 1 else [])


def test_an_epoch_without_rows_exports_empty_arrays(tmp_path):
    with snapstore.record(DataLoader(Dwindling(), batch_size=8), tmp_path / "d.snap") as train:
        for _ in range(2):
            for _ in train:
                pass
    stream = snapstore.open(tmp_path / "d.snap")["train"]
    assert [len(stream.epoch(e)) for e in stream.epochs] == [30, 0]
    empty = stream.epoch(1)
    out = empty.to_numpy()
    assert list(out) == ["index", "value"] and out["value"].shape == (0, 1) and out["value"].dtype == np.float32
    assert list(empty.replay_loader()) == []
    np.testing.assert_array_equal(stream.epoch(0).to_numpy()["value"].ravel(), np.arange(30, dtype=np.float32))
    pytest.importorskip("dask")
    assert empty.to_dask()["value"].shape == (0, 1)


# -- ragged fields --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def padded(tmp_path_factory):
    """``Sequences`` padded per batch: a field that turns ragged when the padded width changes between batches."""
    return record_sequences(tmp_path_factory.mktemp("ragged") / "padded.snap", padded_per_batch)


def test_ragged_list_export_is_the_rows_in_seen_order(ragged_lists):
    stream, batches = ragged_lists
    assert stream.fields["0"].ragged
    out = stream.epoch(0).to_numpy()
    rows = [x for b in batches for x in b[0]]
    assert isinstance(out["0"], list) and len(out["0"]) == SEQUENCES
    assert all(np.array_equal(a, r.numpy()) and a.dtype == np.float32 for a, r in zip(out["0"], rows))
    np.testing.assert_array_equal(out["1"], torch.cat([b[1] for b in batches]).numpy())


def test_ragged_pad_export_with_lengths_and_memmap(ragged_lists, tmp_path):
    stream, batches = ragged_lists
    ep = stream.epoch(0)
    rows = [x.numpy() for b in batches for x in b[0]]
    out = ep.to_numpy(ragged="pad")
    assert list(out) == ["index", "0", "0.lengths", "1"]
    assert out["0"].shape == (SEQUENCES, 23) and out["0.lengths"].shape == (SEQUENCES,)
    for k, r in enumerate(rows):
        assert out["0.lengths"][k] == len(r)
        np.testing.assert_array_equal(out["0"][k, : len(r)], r)
        assert not out["0"][k, len(r) :].any()
    specs = export.out_specs(ep, ["0"], ragged="pad", index=False)
    assert specs == {"0": ((SEQUENCES, 23), np.dtype(np.float32)), "0.lengths": ((SEQUENCES,), np.dtype(np.int64))}
    mm = {k: np.lib.format.open_memmap(tmp_path / f"{k}.npy", mode="w+", shape=s, dtype=d)
          for k, (s, d) in specs.items()}
    mm["0"][:] = 7  # stale values: the padding must be written, not assumed zero
    export.to_numpy(ep, fields=["0"], out=mm, ragged="pad", index=False)
    np.testing.assert_array_equal(mm["0"], out["0"])
    np.testing.assert_array_equal(mm["0.lengths"], out["0.lengths"])


def test_ragged_raw_samples_come_in_index_order(ragged_lists):
    stream, _ = ragged_lists
    assert not np.all(np.diff(capture_order(stream.raw)) > 0)
    raw = stream.raw.to_numpy()
    np.testing.assert_array_equal(raw["index"], np.arange(SEQUENCES))
    assert all(np.array_equal(a, Sequences()[i][0].numpy()) for i, a in enumerate(raw["0"]))
    pad = stream.raw.to_numpy(ragged="pad")
    np.testing.assert_array_equal(pad["0.lengths"], [len(Sequences()[i][0]) for i in range(SEQUENCES)])


def test_ragged_fields_are_refused_where_one_shape_is_needed(ragged_lists):
    stream, _ = ragged_lists
    with pytest.raises(snapstore.SchemaError, match="ragged"):
        stream.to_tensor_dataset(epoch=0)
    pytest.importorskip("dask")
    with pytest.raises(snapstore.SchemaError, match="ragged"):
        stream.epoch(0).to_dask()
    assert list(stream.epoch(0).to_dask(fields=["1"])) == ["index", "1"]
    with pytest.raises(snapstore.UsageError, match="ragged="):
        stream.epoch(0).to_numpy(ragged="flat")
    with pytest.raises(snapstore.UsageError, match="as lists"):
        stream.epoch(0).to_numpy(out={"0": np.empty(SEQUENCES)})


def test_field_that_turned_ragged_exports_each_row_as_its_batch_padded_it(padded, tmp_path):
    stream, batches = padded
    assert stream.fields["0"].ragged and stream.fields["0"].shape == (None,)
    ep = stream.epoch(0)
    rows = [r.numpy() for b in batches for r in b[0]]  # each row padded to its batch's longest
    out = ep.to_numpy()
    assert all(np.array_equal(a, r) for a, r in zip(out["0"], rows))
    pad = ep.to_numpy(ragged="pad")
    widths = [len(r) for r in rows]
    np.testing.assert_array_equal(pad["0.lengths"], widths)
    assert pad["0"].shape == (SEQUENCES, max(widths))
    for got, want in zip(ep.replay_loader(), batches):
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])

    target = tmp_path / "padded.npz"
    snapshot = stream.path.rsplit("/", 1)[0]
    assert cli_main(["export", snapshot, "--stream", "train", "--epoch", "0", "-o", str(target)]) == 0
    with np.load(target) as z:
        assert sorted(z.files) == ["0", "0.lengths", "1", "index"]
        np.testing.assert_array_equal(z["0"], pad["0"])
        np.testing.assert_array_equal(z["0.lengths"], widths)
