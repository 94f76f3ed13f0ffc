"""docs/FORMAT.md: its plain-zarr example reads a real snapshot as snapstore does, and its facts hold."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from torch.utils.data import DataLoader, IterableDataset, TensorDataset, get_worker_info

import snapstore
from snapstore.core import layout

FORMAT_MD = (Path(__file__).resolve().parents[2] / "docs" / "FORMAT.md").read_text()
EXAMPLES = re.findall(r"^```python\n(.*?)^```", FORMAT_MD, flags=re.DOTALL | re.MULTILINE)
READING = next(e for e in EXAMPLES if "zarr.open_group" in e)
RAGGED = next(e for e in EXAMPLES if "def ragged_row" in e)
WHERE = next(e for e in EXAMPLES if "where/offsets" in e)
CHUNK_OK = next(e for e in EXAMPLES if "def chunk_ok" in e)


def _run(example: str) -> dict:
    ns: dict = {"__name__": "format_md_example"}
    exec(compile(example, "docs/FORMAT.md example", "exec"), ns)  # noqa: S102 - running the docs is the test
    return ns


@pytest.fixture
def run_snap(tmp_path, monkeypatch):
    """``run.snap`` in the working directory: a 'train' stream, two shuffled epochs, loss logged."""
    monkeypatch.chdir(tmp_path)
    data = TensorDataset(torch.randn(50, 3), torch.arange(50) % 4)
    loader = DataLoader(data, batch_size=8, shuffle=True, num_workers=2)
    with snapstore.record(loader, "run.snap") as stream:
        for _ in range(2):
            for x, y in stream:
                stream.log(loss=x.sum(1) * y)
    return snapstore.open("run.snap")["train"]


def test_format_doc_examples_use_plain_zarr_only():
    assert len(EXAMPLES) == 4
    for example in EXAMPLES:
        assert "snapstore" not in example.replace('attrs["snapstore"]', "")


def test_plain_zarr_example_reads_what_snapstore_reads(run_snap, capsys):
    ns = _run(READING)
    assert "epoch 1 (complete): 50 rows" in capsys.readouterr().out

    ep = run_snap.epoch(1)
    seen = ep.to_numpy()
    np.testing.assert_array_equal(ns["order"], ep.order)
    np.testing.assert_array_equal(ns["batch_sizes"], ep.batch_sizes)
    np.testing.assert_array_equal(ns["x"], seen["0"])
    np.testing.assert_array_equal(ns["y"], seen["1"])
    np.testing.assert_array_equal(ns["loss"], ep.outputs["loss"])
    first_x, first_y = ep.batch(0)
    np.testing.assert_array_equal(ns["x"][ns["first"]], first_x.numpy())
    np.testing.assert_array_equal(ns["y"][ns["first"]], first_y.numpy())
    np.testing.assert_array_equal(ns["raw_x"], run_snap.raw[ns["i"]][0].numpy())
    assert sorted(ns["row_of"]) == list(range(50))


def test_plain_zarr_inverse_index_example_finds_where_an_index_was_seen(run_snap):
    ns = _run(WHERE)
    ep = run_snap.epoch(1)
    np.testing.assert_array_equal(ns["seen_at"], np.flatnonzero(ep.order == 7))
    assert len(ns["seen_at"]) == 1


def test_plain_zarr_chunk_hash_example_verifies_every_chunk_and_refuses_a_moved_one(run_snap):
    chunk_ok = _run(CHUNK_OK)["chunk_ok"]
    root = zarr.open_group("run.snap", mode="r")
    for e in (0, 1):
        epoch = root[f"train/epochs/{e}"]
        entries = epoch.attrs["epoch"]["chunks"]
        numeric = [p for p in entries if epoch[p].dtype.kind in "biuf"]
        assert {"order", "seen_raw", "outputs/loss"} <= set(numeric)  # the seen rows are stored once, in raw/
        for path in numeric:
            for c in range(len(entries[path]["hashes"]) // 16):
                assert chunk_ok(epoch[path], c, entries[path]), (e, path, c)
    other = root["train/epochs/1"].attrs["epoch"]["chunks"]["order"]
    assert not chunk_ok(root["train/epochs/0/order"], 0, other)  # epoch 0's order is not epoch 1's
    listed = dict(root["train/epochs"].attrs[layout.PIECES_ATTR])
    assert listed.pop("raw") == root["train/raw"].attrs["raw"]["rows"] == 50
    assert set(listed) == {"0", "1"} and all(len(h) == 16 for h in listed.values())


def test_documented_names_and_version_match_layout():
    assert f"# The snapshot format, version {layout.FORMAT_VERSION}" in FORMAT_MD
    for name in (layout.SNAPSHOT_ATTR, layout.STREAM_ATTR, layout.EPOCH_ATTR, layout.RAW_ATTR):
        assert f'attrs["{name}"]' in FORMAT_MD
    nodes = (layout.RAW_INDEX, layout.RAW_FIELDS, layout.ORDER, layout.BATCH_SIZES)
    nodes += (layout.SEEN_GROUP, layout.OUTPUTS_GROUP)
    for name in nodes:
        assert f"{name}" in FORMAT_MD
    tree = FORMAT_MD[FORMAT_MD.index("## The tree"):FORMAT_MD.index("## Committed rows")]
    documented_tree = layout.__doc__.split("::")[1].strip().split("\n\n")[0]
    for line in documented_tree.splitlines():
        node = line.split()[0]
        assert node in tree, node


def test_documented_codecs_chunks_and_fill_values(run_snap, tmp_path):
    meta = json.loads((tmp_path / "run.snap/train/raw/fields/0/zarr.json").read_text())  # seen rows: stored once
    assert [c["name"] for c in meta["codecs"]] == ["bytes", "blosc", "crc32c"]
    assert meta["codecs"][1]["configuration"]["cname"] == "lz4"
    assert meta["codecs"][1]["configuration"]["clevel"] == 5
    assert meta["fill_value"] == "NaN"
    assert meta["dimension_names"] == ["row", "dim_1"]
    # 2 MiB / 12 bytes a row = 174,762 -> 131,072, clamped to 65,536; the epoch's expected rows (run_snap's
    # 50) rounded up to a power of two of at least 1,024 are fewer
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [1024, 3]
    order = json.loads((tmp_path / "run.snap/train/epochs/0/order/zarr.json").read_text())
    assert order["fill_value"] == 0 and order["codecs"][1]["configuration"]["shuffle"] == "shuffle"
    assert order["shape"] == [50]  # preallocated to the epoch's rows


def test_raw_rows_follow_first_fetch_not_index_order(run_snap, tmp_path):
    raw = zarr.open_group(str(tmp_path / "run.snap"), mode="r")["train/raw"]
    rows = raw.attrs["raw"]["rows"]
    assert rows == 50
    # every index was first fetched in epoch 0, so raw rows follow its shuffle order
    np.testing.assert_array_equal(raw["index"][:rows], run_snap.epoch(0).order)


class _Positions(IterableDataset):
    """Each worker yields its share of 0..11, tagged with the position FORMAT.md documents."""

    def __iter__(self):
        info = get_worker_info()
        w, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for p in range(12 // workers):
            yield (torch.tensor(p * workers + w),)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_iterable_order_is_p_times_workers_plus_w(tmp_path, num_workers):
    path = str(tmp_path / "iter.snap")
    loader = DataLoader(_Positions(), batch_size=3, num_workers=num_workers)
    with snapstore.record(loader, path, raw=None) as stream:  # seen rows in the epoch, not stored once in raw/
        for _ in stream:
            pass
    epoch = zarr.open_group(path, mode="r")["train/epochs/0"]
    rows = epoch.attrs["epoch"]["rows"]
    assert rows == 12
    np.testing.assert_array_equal(epoch["order"][:rows], epoch["seen/0"][:rows])
    assert sorted(epoch["order"][:rows]) == list(range(12))


def test_ragged_example_reads_what_snapstore_reads(tmp_path):
    def collate(items):  # pad to the longest sequence of each batch: the row shape varies by batch
        return torch.nn.utils.rnn.pad_sequence([x for (x,) in items], batch_first=True)

    lengths = [1 + i % 5 for i in range(20)]
    data = [(torch.arange(n, dtype=torch.float32),) for n in lengths]
    path = str(tmp_path / "ragged.snap")
    with snapstore.record(DataLoader(data, batch_size=3, shuffle=True, collate_fn=collate), path) as stream:
        for _ in stream:
            pass
    ep = snapstore.open(path)["train"].epoch(0)
    epoch = zarr.open_group(path, mode="r")["train/epochs/0"]
    assert epoch.attrs["epoch"]["ragged"] == ["value"]
    ragged_row = _run(RAGGED)["ragged_row"]
    for k in range(epoch.attrs["epoch"]["rows"]):
        np.testing.assert_array_equal(ragged_row(epoch["ragged/value"], k), ep[k].numpy())
    raw = zarr.open_group(path, mode="r")["train/raw"]
    assert raw.attrs["raw"]["ragged"] == ["0"]  # raw samples: one sequence each, of its own length
    r = int(np.nonzero(raw["index"][:20] == 7)[0][0])
    np.testing.assert_array_equal(ragged_row(raw["ragged/0"], r), np.arange(lengths[7], dtype=np.float32))


def test_worker_and_base_indices(tmp_path):
    inner = TensorDataset(torch.arange(10.0))
    data = torch.utils.data.ConcatDataset([torch.utils.data.Subset(inner, [9, 8, 7]), TensorDataset(torch.arange(5.0))])
    path = str(tmp_path / "concat.snap")
    with snapstore.record(DataLoader(data, batch_size=2, num_workers=2), path) as stream:
        for _ in stream:
            pass
    root = zarr.open_group(path, mode="r")
    epoch = root["train/epochs/0"]
    rows = epoch.attrs["epoch"]["rows"]
    assert root["train"].attrs["stream"]["base_datasets"] == ["torch.utils.data.dataset.TensorDataset"] * 2
    np.testing.assert_array_equal(epoch["order"][:rows], np.arange(8))
    np.testing.assert_array_equal(epoch["base_dataset"][:rows], [0, 0, 0, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(epoch["base_order"][:rows], [9, 8, 7, 0, 1, 2, 3, 4])
    np.testing.assert_array_equal(epoch["worker"][:rows], [0, 0, 1, 1, 0, 0, 1, 1])  # batches alternate workers


def test_resumed_epoch_is_its_parts_in_order(tmp_path):
    path = str(tmp_path / "resumed.snap")
    data = TensorDataset(torch.arange(10))
    with snapstore.Recorder(path) as rec:
        stream = rec.wrap(DataLoader(data, batch_size=3), name="train")
        for j, _ in enumerate(stream):
            if j == 1:
                break  # cut after 2 batches (6 rows)
    with snapstore.Recorder(path, mode="a") as rec:
        rest = DataLoader(data, batch_size=3, sampler=list(range(6, 10)))
        for _ in rec.wrap(rest, name="train", resume_epoch=True):
            pass
    epoch = zarr.open_group(path, mode="r")["train/epochs/0"]
    parts = [epoch, epoch["continued/1"]]
    manifests = [p.attrs["epoch"] for p in parts]
    assert [(m["part"], m["rows"], m["complete"]) for m in manifests] == [(0, 6, False), (1, 4, True)]
    order = np.concatenate([p["order"][: m["rows"]] for p, m in zip(parts, manifests)])
    np.testing.assert_array_equal(order, snapstore.open(path)["train"].epoch(0).order)
    np.testing.assert_array_equal(order, np.arange(10))
