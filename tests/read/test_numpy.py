"""Exports equal what the loader yielded: NumPy, memmap, TensorDataset, replay, lazy Dataset, tf.data, Dask, CLI.

Every snapshot here is recorded for real, on disk, through a DataLoader with
two workers; the batches the loop saw are kept (a preallocated NumPy loop) and
every export is compared against them. Rows of 3x32x32 float32 are 12 KiB, so
a chunk holds 128 rows and an epoch of 1000 rows spans 8 chunks and 2 export
blocks; batches of 24 straddle chunk boundaries.
"""

from __future__ import annotations

import os
import pickle
import sys
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

import snapstore
from snapstore import config, export
from snapstore.cli import main as cli

N, BATCH, EPOCHS = 1000, 24, 2
CHUNK_ROWS = 128  # 2 MiB / 12 KiB rows, see _sinks.chunk_rows


def _importorskip_tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with warnings.catch_warnings():  # TensorFlow's own import-time deprecations are not ours to fail on
        warnings.simplefilter("ignore", DeprecationWarning)
        return pytest.importorskip("tensorflow")


def capture_order(raw):
    """Dataset index of each stored raw row, in the order the loader first fetched them."""
    return np.concatenate([part.index for part in raw.row_plan().segments])


class Seen:
    """What the training loop saw, per epoch: a preallocated NumPy copy and the batches themselves."""

    def __init__(self) -> None:
        self.x: dict[int, np.ndarray] = {}
        self.y: dict[int, np.ndarray] = {}
        self.batches: dict[int, list] = {}


@pytest.fixture(scope="module")
def tensors():
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, 3, 32, 32, generator=g), torch.randint(0, 10, (N,), generator=g)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, tensors):
    x, y = tensors
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True, num_workers=2,
                        generator=torch.Generator().manual_seed(1))
    path = tmp_path_factory.mktemp("export") / "run.snap"
    seen = Seen()
    with snapstore.Recorder(path) as rec:
        train = rec.wrap(loader, name="train")
        for e in range(EPOCHS):
            xs = np.empty((N, 3, 32, 32), dtype=np.float32)  # the preallocated NumPy loop
            ys = np.empty(N, dtype=np.int64)
            pos = 0
            seen.batches[e] = []
            for xb, yb in train:
                xs[pos : pos + len(xb)] = xb.numpy()
                ys[pos : pos + len(yb)] = yb.numpy()
                pos += len(xb)
                seen.batches[e].append([xb.clone(), yb.clone()])
            assert pos == N
            seen.x[e], seen.y[e] = xs, ys
    return path, seen


@pytest.fixture(scope="module")
def stream(recorded):
    return snapstore.open(recorded[0])["train"]


# -- NumPy -------------------------------------------------------------------------------------


@pytest.mark.parametrize("e", range(EPOCHS))
def test_to_numpy_equals_the_loop(recorded, stream, tensors, e):
    _, seen = recorded
    out = stream.epoch(e).to_numpy()
    assert list(out) == ["index", "0", "1"]
    assert out["0"].dtype == np.float32 and out["1"].dtype == np.int64 and out["index"].dtype == np.int64
    np.testing.assert_array_equal(out["0"], seen.x[e])
    np.testing.assert_array_equal(out["1"], seen.y[e])
    np.testing.assert_array_equal(out["index"], stream.epoch(e).order)
    x, y = tensors
    np.testing.assert_array_equal(x.numpy()[out["index"]], seen.x[e])
    np.testing.assert_array_equal(y.numpy()[out["index"]], seen.y[e])  # the index is each row's dataset index


def test_to_numpy_into_memmaps_equals_in_memory(stream, tmp_path):
    ep = stream.epoch(1)
    specs = export.out_specs(ep)
    out = {k: np.lib.format.open_memmap(tmp_path / f"{k}.npy", mode="w+", shape=s, dtype=d) for k, (s, d) in specs.items()}
    got = ep.to_numpy(out=out)
    assert all(got[k] is out[k] for k in out)
    expected = ep.to_numpy()
    del got, out
    for k, v in expected.items():
        np.testing.assert_array_equal(np.load(tmp_path / f"{k}.npy", mmap_mode="r"), v)


def test_to_numpy_partial_out_and_fields(stream, recorded):
    _, seen = recorded
    ep = stream.epoch(0)
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
def test_to_numpy_rejects_bad_out(stream, out, match):
    with pytest.raises(snapstore.UsageError, match=match):
        stream.epoch(0).to_numpy(out=out)


def test_to_numpy_rejects_read_only_out_and_unknown_fields(stream):
    ro = np.empty((N,), np.int64)
    ro.flags.writeable = False
    with pytest.raises(snapstore.UsageError, match="read-only"):
        stream.epoch(0).to_numpy(out={"index": ro})
    with pytest.raises(snapstore.FieldNotFoundError, match=r"no field 'nope'.*\['0', '1'\]"):
        stream.epoch(0).to_numpy(fields=["nope"])


def test_raw_to_numpy_is_index_order(stream, tensors, tmp_path):
    x, y = tensors
    assert not np.all(np.diff(capture_order(stream.raw)) > 0)  # captured in shuffled order: the export must reorder
    raw = stream.raw.to_numpy()
    np.testing.assert_array_equal(raw["index"], np.arange(N))
    np.testing.assert_array_equal(raw["0"], x.numpy())
    np.testing.assert_array_equal(raw["1"], y.numpy())
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", shape=(N, 3, 32, 32), dtype=np.float32)
    stream.raw.to_numpy(fields=["0"], out={"0": mm})
    np.testing.assert_array_equal(mm, x.numpy())


def test_incomplete_epoch_exports_committed_rows_only(tmp_path, tensors):
    x, y = tensors
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


# -- torch -------------------------------------------------------------------------------------


def test_raw_tensor_dataset_equals_the_original_tensors(stream, tensors):
    x, y = tensors
    ds = stream.to_tensor_dataset()
    assert len(ds.tensors) == 2
    assert torch.equal(ds.tensors[0], x) and torch.equal(ds.tensors[1], y)


def test_epoch_tensor_dataset_is_seen_rows(stream, recorded):
    _, seen = recorded
    ds = stream.to_tensor_dataset(epoch=1)
    assert torch.equal(ds.tensors[0], torch.from_numpy(seen.x[1]))
    assert torch.equal(ds.tensors[1], torch.from_numpy(seen.y[1]))


def test_replay_loader_yields_the_recorded_batches(stream, recorded):
    _, seen = recorded
    for e in range(EPOCHS):
        replay = stream.epoch(e).replay_loader()
        assert len(replay) == len(seen.batches[e])
        for _ in range(2):  # re-iterable
            got = list(replay)
            assert len(got) == len(seen.batches[e])
            for b, want in zip(got, seen.batches[e]):
                assert type(b) is list and len(b) == 2
                assert b[0].dtype == want[0].dtype and torch.equal(b[0], want[0])
                assert torch.equal(b[1], want[1])
        assert all(torch.equal(a[0], b[0]) for a, b in zip(stream.epoch(e).batches(), seen.batches[e]))


def test_replay_batches_own_their_memory(stream):
    clean = [b[0].clone() for b in stream.epoch(0).replay_loader()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when a tensor wraps read-only memory
        for b, want in zip(stream.epoch(0).replay_loader(), clean):  # batches after a zeroed one share its chunk
            assert torch.equal(b[0], want)
            b[0].zero_()
            b[1].zero_()
    assert all(torch.equal(b[0], want) for b, want in zip(stream.epoch(0).replay_loader(), clean))
    x = stream.epoch(0)[3][0]
    x.zero_()
    assert torch.equal(stream.epoch(0)[3][0], clean[0][3]) and not torch.equal(x, clean[0][3])


def test_as_dataset_in_a_dataloader_with_workers(stream, recorded, tensors):
    _, seen = recorded
    ds = stream.as_dataset(epoch=1)
    assert len(ds) == N
    xs, ys = [], []
    for xb, yb in DataLoader(ds, batch_size=64, num_workers=2):
        xs.append(xb.numpy())
        ys.append(yb.numpy())
    np.testing.assert_array_equal(np.concatenate(xs), seen.x[1])
    np.testing.assert_array_equal(np.concatenate(ys), seen.y[1])
    x, y = tensors
    raw = stream.as_dataset()
    order = torch.randperm(N, generator=torch.Generator().manual_seed(0))
    got = list(DataLoader(raw, batch_size=100, num_workers=2, sampler=order.tolist()))
    assert torch.equal(torch.cat([b[0] for b in got]), x[order])
    assert torch.equal(torch.cat([b[1] for b in got]), y[order])


def test_as_dataset_pickles_without_an_open_store(stream, recorded):
    _, seen = recorded
    ds = stream.as_dataset(epoch=0)
    ds[3]  # opens the snapshot in this process
    state = pickle.dumps(ds)
    assert len(state) < 2000  # path, names and numbers only
    again = pickle.loads(state)
    np.testing.assert_array_equal(again[3][0].numpy(), seen.x[0][3])


def test_as_dataset_with_spawned_workers(stream, recorded):
    _, seen = recorded
    loader = DataLoader(stream.as_dataset(epoch=0), batch_size=250, num_workers=2, multiprocessing_context="spawn")
    np.testing.assert_array_equal(np.concatenate([b[0].numpy() for b in loader]), seen.x[0])


# -- tf.data -----------------------------------------------------------------------------------


def test_tf_dataset_channels_last_element_by_element(stream, recorded):
    tf = _importorskip_tf()
    _, seen = recorded
    ds = stream.to_tf_dataset(epoch=1, channels_last=True)
    assert ds.element_spec == (tf.TensorSpec((32, 32, 3), tf.float32), tf.TensorSpec((), tf.int64))
    n = 0
    for k, (img, label) in enumerate(ds):
        np.testing.assert_array_equal(img.numpy(), seen.x[1][k].transpose(1, 2, 0))
        assert label.numpy() == seen.y[1][k]
        n += 1
    assert n == N


def test_tf_dataset_raw_is_index_order(stream, tensors, monkeypatch):
    tf = _importorskip_tf()
    x, y = tensors
    monkeypatch.setattr(config, "DEFAULT_GATHER_BYTES", 100 * 12 * 1024)  # ~100-row windows: many gathers
    ds = stream.to_tf_dataset()
    assert ds.element_spec == (tf.TensorSpec((3, 32, 32), tf.float32), tf.TensorSpec((), tf.int64))
    got = list(ds.batch(256).as_numpy_iterator())
    np.testing.assert_array_equal(np.concatenate([g[0] for g in got]), x.numpy())
    np.testing.assert_array_equal(np.concatenate([g[1] for g in got]), y.numpy())


def test_tf_dataset_fields_keep_their_place(stream, recorded):
    tf = _importorskip_tf()
    _, seen = recorded
    ds = stream.to_tf_dataset(epoch=0, fields=["1"])
    assert ds.element_spec == (tf.TensorSpec((), tf.int64),)
    np.testing.assert_array_equal(np.array([e[0] for e in ds.as_numpy_iterator()]), seen.y[0])


def test_tf_missing_gives_the_install_hint(stream, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # what an environment without TensorFlow looks like
    with pytest.raises(snapstore.SnapstoreError, match=r"pip install 'snapstore\[tf\]'"):
        stream.to_tf_dataset(epoch=0)


class DictItems(Dataset):
    """Items as dicts with a nested dict and a string: default collate keeps the structure."""

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(2)
        self.images = torch.randint(0, 255, (n, 3, 16, 16), dtype=torch.uint8, generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return {"image": self.images[i], "label": i % 7, "meta": {"id": i, "name": f"item-{i}"}}


@pytest.fixture(scope="module")
def dict_recorded(tmp_path_factory):
    ds = DictItems(300)
    loader = DataLoader(ds, batch_size=32, shuffle=True, num_workers=2, generator=torch.Generator().manual_seed(3))
    path = tmp_path_factory.mktemp("dict") / "run.snap"
    with snapstore.record(loader, path) as train:
        batches = list(train)
    return snapstore.open(path)["train"], ds, batches


def test_dict_batches_become_dict_elements(dict_recorded):
    tf = _importorskip_tf()
    stream, ds, batches = dict_recorded
    tds = stream.to_tf_dataset(epoch=0, channels_last=True)
    assert tds.element_spec == {
        "image": tf.TensorSpec((16, 16, 3), tf.uint8),
        "label": tf.TensorSpec((), tf.int64),
        "meta": {"id": tf.TensorSpec((), tf.int64), "name": tf.TensorSpec((), tf.string)},
    }
    rows = [(img, int(lab), int(i), name) for b in batches
            for img, lab, i, name in zip(b["image"], b["label"], b["meta"]["id"], b["meta"]["name"])]
    k = 0
    for element, (img, lab, i, name) in zip(tds.as_numpy_iterator(), rows):
        np.testing.assert_array_equal(element["image"], img.permute(1, 2, 0).numpy())
        assert (element["label"], element["meta"]["id"], element["meta"]["name"]) == (lab, i, name.encode())
        k += 1
    assert k == len(ds)
    raw = stream.to_tf_dataset(fields=["meta/name"])
    assert raw.element_spec == {"meta": {"name": tf.TensorSpec((), tf.string)}}
    assert [e["meta"]["name"].decode() for e in raw.as_numpy_iterator()] == [f"item-{i}" for i in range(len(ds))]


def test_dict_batches_to_numpy_keeps_strings(dict_recorded):
    stream, _, batches = dict_recorded
    out = stream.epoch(0).to_numpy()
    assert list(out) == ["index", "image", "label", "meta/id", "meta/name"]
    assert out["meta/name"].tolist() == [n for b in batches for n in b["meta"]["name"]]
    np.testing.assert_array_equal(out["image"], torch.cat([b["image"] for b in batches]).numpy())
    with pytest.raises(snapstore.SchemaError, match="strings"):
        stream.to_tensor_dataset(epoch=0)


# -- Dask --------------------------------------------------------------------------------------


def test_to_dask_equals_to_numpy_and_is_chunk_aligned(stream):
    pytest.importorskip("dask")
    ep = stream.epoch(0)
    d = ep.to_dask()
    expected = ep.to_numpy()
    assert list(d) == list(expected)
    assert set(d["0"].chunks[0][:-1]) == {CHUNK_ROWS} and sum(d["0"].chunks[0]) == N
    for k, v in expected.items():
        assert d[k].dtype == v.dtype and d[k].shape == v.shape
        np.testing.assert_array_equal(d[k].compute(), v)
    assert float(d["0"].sum().compute()) == pytest.approx(float(expected["0"].sum(dtype=np.float64)), rel=1e-4)
    assert list(ep.to_dask(fields=["1"])) == ["index", "1"]


def test_raw_to_dask_is_capture_order_with_index(stream, tensors):
    pytest.importorskip("dask")
    x, _ = tensors
    d = stream.raw.to_dask()
    index = d["index"].compute()
    np.testing.assert_array_equal(index, capture_order(stream.raw))
    np.testing.assert_array_equal(d["0"].compute(), x.numpy()[index])
    np.testing.assert_array_equal(d["0"].compute()[np.argsort(index)], stream.raw.to_numpy()["0"])


def test_dask_missing_gives_the_install_hint(stream, monkeypatch):
    monkeypatch.setitem(sys.modules, "dask.array", None)
    with pytest.raises(snapstore.SnapstoreError, match=r"pip install 'snapstore\[dask\]'"):
        stream.epoch(0).to_dask()


# -- CLI ---------------------------------------------------------------------------------------


def test_cli_export_npz_round_trip(recorded, stream, tmp_path):
    path, seen = recorded
    out = tmp_path / "epoch1.npz"
    assert cli(["export", str(path), "--stream", "train", "--epoch", "1", "-o", str(out)]) == 0
    with np.load(out) as z:
        assert sorted(z.files) == ["0", "1", "index"]
        np.testing.assert_array_equal(z["0"], seen.x[1])
        np.testing.assert_array_equal(z["1"], seen.y[1])
        np.testing.assert_array_equal(z["index"], stream.epoch(1).order)
    assert [p.name for p in tmp_path.iterdir()] == ["epoch1.npz"]  # no temporary left behind


def test_cli_export_npy_round_trip(recorded, tensors, tmp_path):
    path, _ = recorded
    x, _ = tensors
    out = tmp_path / "raw"
    assert cli(["export", str(path), "--stream", "train", "--raw", "--format", "npy", "--fields", "0", "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["0.npy", "index.npy"]
    np.testing.assert_array_equal(np.load(out / "0.npy"), x.numpy())
    np.testing.assert_array_equal(np.load(out / "index.npy"), np.arange(N))


def test_cli_export_strings_and_nested_fields(dict_recorded, tmp_path):
    stream, _, batches = dict_recorded
    path = stream.path.rsplit("/", 1)[0]
    out = tmp_path / "d"
    assert cli(["export", path, "--stream", "train", "--epoch", "0", "--format", "npy", "-o", str(out)]) == 0
    assert np.load(out / "meta" / "name.npy").tolist() == [n for b in batches for n in b["meta"]["name"]]
    assert cli(["export", path, "--stream", "train", "--epoch", "0", "-o", str(tmp_path / "d.npz")]) == 0
    with np.load(tmp_path / "d.npz") as z:
        assert sorted(z.files) == ["image", "index", "label", "meta/id", "meta/name"]
        np.testing.assert_array_equal(z["meta/id"], torch.cat([b["meta"]["id"] for b in batches]).numpy())


def test_cli_export_errors(recorded, tmp_path, capsys):
    path, _ = recorded
    base = ["export", str(path), "-o", str(tmp_path / "o.npz")]
    assert cli([*base, "--stream", "train", "--raw", "--epoch", "0"]) == 2
    assert cli([*base, "--stream", "train"]) == 2
    capsys.readouterr()
    assert cli([*base, "--stream", "nope", "--raw"]) == 1
    assert "no stream 'nope'" in capsys.readouterr().err
    assert cli([*base, "--stream", "train", "--epoch", "9"]) == 1
    assert "no epoch 9" in capsys.readouterr().err
    assert cli([*base, "--stream", "train", "--raw", "--fields", "zz"]) == 1
    err = capsys.readouterr().err
    assert "no field 'zz'" in err and "Traceback" not in err
    assert cli(["export", str(tmp_path / "missing.snap"), "--stream", "train", "--raw", "-o", str(tmp_path / "o.npz")]) == 1
    (tmp_path / "o.npz").write_bytes(b"keep me")
    assert cli([*base, "--stream", "train", "--raw"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "o.npz").read_bytes() == b"keep me"
    assert cli([*base, "--stream", "train", "--raw", "--overwrite"]) == 0


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
