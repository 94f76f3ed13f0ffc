"""Exports of ragged fields: lists of row arrays, zero-padded rows with lengths, tf.data None dims.

Two real recordings through two-worker DataLoaders: a collate_fn that returns
a list of variable-length tensors (a field stored ragged from the start), and
one that pads each batch to its own longest row (a field that turns ragged
when the padded width changes between batches).
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset

import snapstore
from snapstore import export
from snapstore.cli import main as cli_main

N = 150


def capture_order(raw):
    """Dataset index of each stored raw row, in the order the loader first fetched them."""
    return np.concatenate([part.index for part in raw.row_plan().segments])


class Sequences(Dataset):
    """Float sequences of length 1..23 (longer than a chunk of a few rows would need), and a label."""

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(i)
        return torch.randn(1 + (i * 7) % 23, generator=g), i % 5


def as_row_list(items):
    return [x for x, _ in items], torch.tensor([y for _, y in items])


def padded_per_batch(items):
    xs = [x for x, _ in items]
    return pad_sequence(xs, batch_first=True), torch.tensor([len(x) for x in xs])


def record(path, collate):
    loader = DataLoader(Sequences(), batch_size=16, shuffle=True, num_workers=2, collate_fn=collate,
                        generator=torch.Generator().manual_seed(0))
    with snapstore.record(loader, path) as train:
        batches = list(train)
    return snapstore.open(path)["train"], batches


@pytest.fixture(scope="module")
def row_lists(tmp_path_factory):
    return record(tmp_path_factory.mktemp("ragged") / "lists.snap", as_row_list)


@pytest.fixture(scope="module")
def padded(tmp_path_factory):
    return record(tmp_path_factory.mktemp("ragged") / "padded.snap", padded_per_batch)


def test_ragged_list_export_is_the_rows_in_seen_order(row_lists):
    stream, batches = row_lists
    assert stream.fields["0"].ragged
    out = stream.epoch(0).to_numpy()
    rows = [x for b in batches for x in b[0]]
    assert isinstance(out["0"], list) and len(out["0"]) == N
    assert all(np.array_equal(a, r.numpy()) and a.dtype == np.float32 for a, r in zip(out["0"], rows))
    np.testing.assert_array_equal(out["1"], torch.cat([b[1] for b in batches]).numpy())


def test_ragged_pad_export_with_lengths_and_memmap(row_lists, tmp_path):
    stream, batches = row_lists
    ep = stream.epoch(0)
    rows = [x.numpy() for b in batches for x in b[0]]
    out = ep.to_numpy(ragged="pad")
    assert list(out) == ["index", "0", "0.lengths", "1"]
    assert out["0"].shape == (N, 23) and out["0.lengths"].shape == (N,)
    for k, r in enumerate(rows):
        assert out["0.lengths"][k] == len(r)
        np.testing.assert_array_equal(out["0"][k, : len(r)], r)
        assert not out["0"][k, len(r) :].any()
    specs = export.out_specs(ep, ["0"], ragged="pad", index=False)
    assert specs == {"0": ((N, 23), np.dtype(np.float32)), "0.lengths": ((N,), np.dtype(np.int64))}
    mm = {k: np.lib.format.open_memmap(tmp_path / f"{k}.npy", mode="w+", shape=s, dtype=d) for k, (s, d) in specs.items()}
    mm["0"][:] = 7  # stale values: the padding must be written, not assumed zero
    export.to_numpy(ep, fields=["0"], out=mm, ragged="pad", index=False)
    np.testing.assert_array_equal(mm["0"], out["0"])
    np.testing.assert_array_equal(mm["0.lengths"], out["0.lengths"])


def test_ragged_raw_samples_come_in_index_order(row_lists):
    stream, _ = row_lists
    assert not np.all(np.diff(capture_order(stream.raw)) > 0)
    raw = stream.raw.to_numpy()
    np.testing.assert_array_equal(raw["index"], np.arange(N))
    assert all(np.array_equal(a, Sequences()[i][0].numpy()) for i, a in enumerate(raw["0"]))
    pad = stream.raw.to_numpy(ragged="pad")
    np.testing.assert_array_equal(pad["0.lengths"], [len(Sequences()[i][0]) for i in range(N)])


def test_ragged_fields_are_refused_where_one_shape_is_needed(row_lists):
    stream, _ = row_lists
    with pytest.raises(snapstore.SchemaError, match="ragged"):
        stream.to_tensor_dataset(epoch=0)
    pytest.importorskip("dask")
    with pytest.raises(snapstore.SchemaError, match="ragged"):
        stream.epoch(0).to_dask()
    assert list(stream.epoch(0).to_dask(fields=["1"])) == ["index", "1"]
    with pytest.raises(snapstore.UsageError, match="ragged="):
        stream.epoch(0).to_numpy(ragged="flat")
    with pytest.raises(snapstore.UsageError, match="as lists"):
        stream.epoch(0).to_numpy(out={"0": np.empty(N)})


def test_ragged_replay_and_tf(row_lists):
    stream, batches = row_lists
    for got, want in zip(stream.epoch(0).replay_loader(), batches):
        assert len(got[0]) == len(want[0]) and all(torch.equal(a, b) for a, b in zip(got[0], want[0]))
        assert torch.equal(got[1], want[1])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        tf = pytest.importorskip("tensorflow")
    ds = stream.to_tf_dataset(epoch=0)
    assert ds.element_spec == (tf.TensorSpec((None,), tf.float32), tf.TensorSpec((), tf.int64))
    rows = [(x.numpy(), int(y)) for b in batches for x, y in zip(b[0], b[1])]
    got = list(ds.as_numpy_iterator())
    assert len(got) == N
    assert all(np.array_equal(a, x) and b == y for (a, b), (x, y) in zip(got, rows))
    raw = list(stream.to_tf_dataset().as_numpy_iterator())
    assert all(np.array_equal(a, Sequences()[i][0].numpy()) for i, (a, _) in enumerate(raw))


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
    assert pad["0"].shape == (N, max(widths))
    for got, want in zip(ep.replay_loader(), batches):
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])

    target = tmp_path / "padded.npz"
    assert cli_main(["export", stream.path.rsplit("/", 1)[0], "--stream", "train", "--epoch", "0", "-o", str(target)]) == 0
    with np.load(target) as z:
        assert sorted(z.files) == ["0", "0.lengths", "1", "index"]
        np.testing.assert_array_equal(z["0"], pad["0"])
        np.testing.assert_array_equal(z["0.lengths"], widths)
