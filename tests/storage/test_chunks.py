"""``snapstore.storage.chunks``: a committed chunk that is missing or damaged is a ``CorruptionError``,
never fill values or a codec's traceback."""

from __future__ import annotations

import pytest

import snapstore
from tests.support.snapshots import read_everything


@pytest.mark.parametrize("array", ["train/epochs/0/order", "train/epochs/1/seen/image", "train/epochs/0/seen/meta/path",
                                   "train/raw/fields/meta/flag"])
def test_a_missing_chunk_of_committed_rows_is_not_read_as_fill_values(snap_copy, array):
    for chunk in (snap_copy / array).glob("c.*"):
        chunk.unlink()
    with pytest.raises(snapstore.CorruptionError, match="missing from the store"):
        read_everything(snap_copy)


def test_a_damaged_chunk_is_a_corruption_error(snap_copy):
    chunk = snap_copy / "train/epochs/1/seen/image/c.0.0.0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.raises(snapstore.CorruptionError, match="seen/image"):
        read_everything(snap_copy)
