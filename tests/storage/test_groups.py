"""``snapstore.storage.groups``: damaged, missing or foreign metadata at every level of the tree is a
``CorruptionError`` naming the node and the fix (never a raw zarr/JSON/KeyError traceback); what is
not read is not judged."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest
import zarr

import snapstore
from snapstore import storage
from tests.support.recording import same
from tests.support.snapshots import edit_json, read_everything


@pytest.mark.parametrize("meta", ["zarr.json", "train/zarr.json", "train/epochs/1/zarr.json",
                                  "train/epochs/1/order/zarr.json", "train/epochs/0/seen/image/zarr.json",
                                  "train/raw/zarr.json", "train/epochs/0/outputs/score/zarr.json"])
@pytest.mark.parametrize("damage", ["truncated", "junk", "deleted"])
def test_damaged_metadata_is_a_corruption_error_naming_it(snap_copy, meta, damage):
    f = snap_copy / meta
    if damage == "truncated":
        f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    elif damage == "junk":
        f.write_bytes(b"\xff\x00 not json {{{")
    else:
        f.unlink()
    with pytest.raises(snapstore.SnapstoreError) as e:
        read_everything(snap_copy)
    if meta == "zarr.json":
        if damage == "deleted":  # nothing says this directory was a snapshot any more
            assert isinstance(e.value, snapstore.NotASnapshotError) and "root zarr.json is missing" in str(e.value)
        else:
            assert isinstance(e.value, snapstore.CorruptionError) and "root metadata" in str(e.value)
    else:
        assert isinstance(e.value, snapstore.CorruptionError)
        assert str(Path(meta).parent) in str(e.value) and "restore" in str(e.value)


@pytest.mark.parametrize("array", ["train/epochs/0/order", "train/epochs/1/batch_sizes",
                                   "train/epochs/0/seen/meta/path",
                                   "train/epochs/1/seen/label", "train/raw/index", "train/raw/fields/image"])
def test_a_deleted_array_is_a_corruption_error(snap_copy, array):
    shutil.rmtree(snap_copy / array)
    with pytest.raises(snapstore.CorruptionError, match=Path(array).name) as e:
        read_everything(snap_copy)
    assert "restore" in str(e.value)


def test_damage_outside_what_is_read_leaves_the_rest_readable(snap_copy, records_snapshot):
    edit_json(snap_copy / "train/epochs/0/seen/image/zarr.json", lambda d: d["attributes"].update(field="anything"))
    edit_json(snap_copy / "zarr.json", lambda d: d["attributes"]["snapstore"].update(created="not a time"))
    (snap_copy / "train" / ".DS_Store").write_bytes(b"\x00")
    (snap_copy / "train" / "epochs" / "0" / "zarr.a1b2c3.partial").write_bytes(b"{")  # an interrupted write
    got, want = read_everything(snap_copy), read_everything(records_snapshot)
    assert got["info"]["created"] == "not a time"
    for read in (got, want):  # where it is, when it says it was made, the bytes of the edited metadata
        for key in ("path", "created", "bytes_stored"):
            del read["info"][key]
    same(got, want)  # every stream, field, row, batch, output and provenance as recorded



class Unclosed:
    """Warns when freed, as an aiohttp session left open does."""

    def __del__(self) -> None:
        warnings.warn("unclosed session", ResourceWarning, stacklevel=1)


class FreeingStore(zarr.storage.LocalStore):
    """A local store that frees an ``Unclosed`` while it lists a folder: a finalizer that runs during a listing
    (in the writer process: store clients inherited through the fork, collected there)."""

    held: list[Unclosed] = []

    async def list_dir(self, prefix: str):
        self.held.clear()
        async for key in super().list_dir(prefix):
            yield key


@pytest.mark.filterwarnings("error::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_finalizer_warning_during_a_listing_does_not_fail_it(records_snapshot):
    # Under an "error" filter a warning from a finalizer is only reported (it cannot be raised there); the
    # listing must not raise it again.
    group = zarr.open_group(FreeingStore(records_snapshot, read_only=True), mode="r")
    FreeingStore.held.append(Unclosed())
    nodes = storage.members(group, "snapshot", recursive=True)
    assert not FreeingStore.held and "train" in nodes
