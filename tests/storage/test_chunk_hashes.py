"""Chunk hashes in commit records (format version 2): written by the chunk writer, verified by ``read_chunk``."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

import snapstore
from snapstore import storage
from snapstore.core import layout
from snapstore.core.manifest import FieldInfo
from snapstore.core.merkle import ABSENT, parse_chunks
from snapstore.storage.chunks import chunk_path, create_rows_array

INT64 = FieldInfo("ndarray", "int64", ())


@pytest.fixture
def writer():
    w = storage.ChunkWriter("lz4")
    yield w
    w.close()


def commit(group, writer, rows):
    writer.wait()
    record = storage.write_record(group, layout.RAW_ATTR, {"rows": rows}, writer)
    return parse_chunks(record, "test")


def reader(group, entries, rows):
    array = group["index"]
    return storage.ChunkReader(array, "test", rows=rows, expect=entries["index"])


def test_a_chunk_rewritten_with_more_rows_after_its_record_still_verifies(tmp_path, writer):
    """A live reader, or a writer killed between a chunk and its record, finds a newer version of the last
    chunk: the rows the record commits are the same in it."""
    group = zarr.open_group(tmp_path / "s", mode="w").create_group("raw")
    sink = storage.RowSink(create_rows_array(group, "index", INT64, 16, "lz4", chunk=8), writer)
    sink.put(0, np.arange(3))
    sink.flush()
    entries = commit(group, writer, 3)
    assert entries["index"].rows == 3 and len(entries["index"].hashes) == 1
    sink.put(3, np.arange(3, 6))
    sink.flush()
    writer.wait()  # chunk 0 now holds 6 rows; the record still covers 3
    assert reader(group, entries, 3).read(0, 3).tolist() == [0, 1, 2]


def test_a_chunk_from_another_place_is_refused(tmp_path, writer):
    group = zarr.open_group(tmp_path / "s", mode="w").create_group("raw")
    array = create_rows_array(group, "index", INT64, 16, "lz4", chunk=4)
    sink = storage.RowSink(array, writer)
    sink.put(0, np.arange(8))
    sink.flush()
    entries = commit(group, writer, 8)
    first, second = (storage.chunks.local_file(chunk_path(array, c)) for c in (0, 1))
    first_bytes = first.read_bytes()
    first.write_bytes(second.read_bytes())  # chunk 1 duplicated over chunk 0: its CRC32C holds
    with pytest.raises(snapstore.CorruptionError, match=r"chunk 0 .*'raw/index' is not the chunk its commit record"):
        reader(group, entries, 8).read(0, 8)
    first.write_bytes(first_bytes)
    assert reader(group, entries, 8).read(0, 8).tolist() == list(range(8))
    second.unlink()
    with pytest.raises(snapstore.CorruptionError, match="missing"):
        reader(group, entries, 8).read(0, 8)


def test_rows_skipped_leave_chunks_named_absent(tmp_path, writer):
    """An array whose rows skip whole chunks (outputs never logged, rows kept as hashes only): the record names
    those chunks absent, they read as the fill value, and a chunk planted there is refused."""
    group = zarr.open_group(tmp_path / "s", mode="w").create_group("raw")
    array = create_rows_array(group, "index", INT64, 16, "lz4", chunk=4)
    sink = storage.RowSink(array, writer)
    sink.put(0, np.arange(2))
    sink.flush()  # chunk 0 stored with 2 rows; leaving it below rewrites it whole
    sink.put(9, np.array([9]))
    sink.flush()
    entries = commit(group, writer, 10)
    assert entries["index"].hashes[1] == ABSENT and entries["index"].rows == 10
    assert reader(group, entries, 10).read(0, 10).tolist() == [0, 1] + [0] * 7 + [9]
    storage.chunks.local_file(chunk_path(array, 1)).write_bytes(
        storage.chunks.local_file(chunk_path(array, 0)).read_bytes())
    with pytest.raises(snapstore.CorruptionError, match="chunk 1 of array 'raw/index' is stored, but"):
        reader(group, entries, 10).read(0, 10)
