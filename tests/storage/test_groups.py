"""Bad input gets a specific SnapstoreError naming the path and the fix, never a raw
zarr/JSON/KeyError traceback: paths that are no snapshot, newer formats, deleted
arrays, missing chunks, truncated or garbled metadata at every level."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import Records
from torch.utils.data import DataLoader

import snapstore


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bad") / "run.snap"
    torch.manual_seed(0)
    with snapstore.Recorder(path) as rec:
        train = rec.wrap(DataLoader(Records(10), batch_size=4, shuffle=True), name="train")
        for _ in range(2):
            for batch in train:
                train.log(score=batch["image"].sum((1, 2)).double())
    return path


@pytest.fixture
def snap(recorded: Path, tmp_path: Path) -> Path:
    """A fresh copy of the recorded snapshot, to damage."""
    copy = tmp_path / "run.snap"
    shutil.copytree(recorded, copy)
    return copy


def read_everything(path: Path) -> None:
    s = snapstore.open(path)
    s.info()
    for name in s.streams:
        stream = s[name]
        stream.raw.to_numpy()
        for ep in stream:
            ep.to_numpy()
            list(ep.batches())
            dict(ep.outputs)


def edit(meta: Path, change: Any) -> None:
    doc = json.loads(meta.read_text())
    change(doc)
    meta.write_text(json.dumps(doc))


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


def test_a_newer_format_version_asks_for_an_upgrade(snap):
    edit(snap / "zarr.json", lambda d: d["attributes"]["snapstore"].update(format_version=snapstore.FORMAT_VERSION + 1))
    with pytest.raises(snapstore.FormatVersionError, match="pip install -U snapstore") as e:
        snapstore.open(snap)
    assert str(snap) in str(e.value)


@pytest.mark.parametrize("meta", ["zarr.json", "train/zarr.json", "train/epochs/1/zarr.json", "train/epochs/1/order/zarr.json",
                                  "train/epochs/0/seen/image/zarr.json", "train/raw/zarr.json", "train/epochs/0/outputs/score/zarr.json"])
@pytest.mark.parametrize("damage", ["truncated", "junk", "deleted"])
def test_damaged_metadata_is_a_corruption_error_naming_it(snap, meta, damage):
    f = snap / meta
    if damage == "truncated":
        f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    elif damage == "junk":
        f.write_bytes(b"\xff\x00 not json {{{")
    else:
        f.unlink()
    with pytest.raises(snapstore.SnapstoreError) as e:
        read_everything(snap)
    if meta == "zarr.json":
        if damage == "deleted":  # nothing says this directory was a snapshot any more
            assert isinstance(e.value, snapstore.NotASnapshotError) and "root zarr.json is missing" in str(e.value)
        else:
            assert isinstance(e.value, snapstore.CorruptionError) and "root metadata" in str(e.value)
    else:
        assert isinstance(e.value, snapstore.CorruptionError)
        assert str(Path(meta).parent) in str(e.value) and "restore" in str(e.value)


@pytest.mark.parametrize("array", ["train/epochs/0/order", "train/epochs/1/batch_sizes", "train/epochs/0/seen/meta/path",
                                   "train/epochs/1/seen/label", "train/raw/index", "train/raw/fields/image"])
def test_a_deleted_array_is_a_corruption_error(snap, array):
    shutil.rmtree(snap / array)
    with pytest.raises(snapstore.CorruptionError, match=Path(array).name) as e:
        read_everything(snap)
    assert "restore" in str(e.value)


@pytest.mark.parametrize("array", ["train/epochs/0/order", "train/epochs/1/seen/image", "train/epochs/0/seen/meta/path",
                                   "train/raw/fields/meta/flag"])
def test_a_missing_chunk_of_committed_rows_is_not_read_as_fill_values(snap, array):
    for chunk in (snap / array).glob("c.*"):
        chunk.unlink()
    with pytest.raises(snapstore.CorruptionError, match="missing from the store"):
        read_everything(snap)


def test_a_damaged_chunk_is_a_corruption_error(snap):
    chunk = snap / "train/epochs/1/seen/image/c.0.0.0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.raises(snapstore.CorruptionError, match="seen/image"):
        read_everything(snap)


@pytest.mark.parametrize(("meta", "change", "match"), [
    ("train/epochs/0/zarr.json", lambda d: d["attributes"]["epoch"].update(rows=10**9), "rows"),
    ("train/epochs/0/zarr.json", lambda d: d["attributes"]["epoch"].update(rows=3), "batch sizes add up"),
    ("train/epochs/0/zarr.json", lambda d: d["attributes"]["epoch"].update(number=7), "numbers it 7"),
    ("train/epochs/0/zarr.json", lambda d: d["attributes"]["epoch"].pop("rows"), "rows"),
    ("train/zarr.json", lambda d: d["attributes"]["stream"]["structure"]["keys"].__setitem__(0, "imagf"), "leaf"),
    ("train/zarr.json", lambda d: d["attributes"]["stream"]["fields"]["image"].update(dtype="object"), "dtype"),
    ("train/zarr.json", lambda d: d["attributes"]["stream"]["fields"]["image"].update(dtype="float64"), "dtype"),
    ("train/zarr.json", lambda d: d["attributes"]["stream"].update(dataset_len="ten"), "dataset_len"),
    ("train/zarr.json", lambda d: d["attributes"]["stream"].update(name="test"), "names stream"),
    ("train/raw/zarr.json", lambda d: d["attributes"]["raw"].update(rows=-1), "rows"),
    ("train/epochs/0/seen/image/zarr.json", lambda d: d.update(data_type="int32", fill_value=0), "dtype"),
    ("train/epochs/0/seen/image/zarr.json", lambda d: d.update(data_type="int32"), "seen/image/zarr.json"),
    ("train/epochs/0/seen/image/zarr.json", lambda d: d["codecs"].pop(), "codecs"),  # no checksum
    ("train/epochs/0/seen/image/zarr.json", lambda d: d["codecs"][0]["configuration"].update(endian="big"), "codecs"),
    ("train/epochs/0/seen/image/zarr.json", lambda d: d["codecs"].insert(0, {"name": "transpose", "configuration": {"order": [0, 2, 1]}}), "codecs"),
    ("train/epochs/0/order/zarr.json", lambda d: d.update(shape=[2]), "fewer than"),
])
def test_well_formed_but_inconsistent_metadata_is_refused(snap, meta, change, match):
    edit(snap / meta, change)
    with pytest.raises(snapstore.CorruptionError, match=match):
        read_everything(snap)


def test_damage_outside_what_is_read_leaves_the_rest_readable(snap):
    edit(snap / "train/epochs/0/seen/image/zarr.json", lambda d: d["attributes"].update(field="anything"))
    edit(snap / "zarr.json", lambda d: d["attributes"]["snapstore"].update(created="not a time"))
    (snap / "train" / ".DS_Store").write_bytes(b"\x00")
    (snap / "train" / "epochs" / "0" / "zarr.a1b2c3.partial").write_bytes(b"{")  # an interrupted write
    read_everything(snap)
