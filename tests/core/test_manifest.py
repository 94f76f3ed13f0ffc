"""``snapstore.core.manifest``: every manifest is validated where it is parsed; a newer format asks for an upgrade."""

from __future__ import annotations

import json

import pytest

import snapstore
from snapstore.core import layout
from tests.support.snapshots import edit_json, read_everything


def test_a_newer_format_version_asks_for_an_upgrade(snap_copy):
    newer = snapstore.FORMAT_VERSION + 1
    edit_json(snap_copy / "zarr.json", lambda d: d["attributes"]["snapstore"].update(format_version=newer))
    with pytest.raises(snapstore.FormatVersionError, match="pip install -U snapstore") as e:
        snapstore.open(snap_copy)
    assert str(snap_copy) in str(e.value)


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
    ("train/epochs/0/seen/image/zarr.json",
     lambda d: d["codecs"].insert(0, {"name": "transpose", "configuration": {"order": [0, 2, 1]}}), "codecs"),
    ("train/epochs/0/order/zarr.json", lambda d: d.update(shape=[2]), "fewer than"),
])
def test_well_formed_but_inconsistent_metadata_is_refused(snap_copy, meta, change, match):
    edit_json(snap_copy / meta, change)
    if meta.startswith("train/epochs/0/"):  # as if still being recorded: its record is checked, not sealed
        edit_json(snap_copy / "train/epochs/zarr.json", lambda d: d["attributes"]["epochs"].update({"0": None}))
    with pytest.raises(snapstore.CorruptionError, match=match):
        read_everything(snap_copy)


@pytest.mark.parametrize("change", [lambda e: e.update(rows=3), lambda e: e.update(complete=False),
                                    lambda e: e["provenance"].update(host="elsewhere"), lambda e: e.pop("ragged")])
def test_an_edited_finished_epoch_record_is_refused_by_its_seal(snap_copy, change):
    edit_json(snap_copy / "train/epochs/0/zarr.json", lambda d: change(d["attributes"]["epoch"]))
    with pytest.raises(snapstore.CorruptionError, match="not the one its stream's list of epochs names as final"):
        snapstore.open(snap_copy)["train"].epochs


def test_newer_format_version_is_refused(snap_path):
    with snapstore.Recorder(snap_path):
        pass
    meta = snap_path / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"][layout.SNAPSHOT_ATTR]["format_version"] = layout.FORMAT_VERSION + 1
    meta.write_text(json.dumps(doc))
    with pytest.raises(snapstore.FormatVersionError, match="pip install -U snapstore"):
        snapstore.open(snap_path)
