"""``snapstore.core.merkle``: chunk and record hashes, and their parse, which refuses damage."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import snapstore
from snapstore.core.merkle import ABSENT, ChunkHashes, Coverage, chunk_hash, parse_chunks, parse_seals, record_hash

ARRAYS = hnp.arrays(st.sampled_from([np.int64, np.float32, np.uint8, np.bool_]),
                    hnp.array_shapes(min_dims=1, max_dims=3, max_side=5))


@given(ARRAYS)
def test_a_chunk_hash_is_the_hash_of_its_bytes_and_never_absent(rows):
    assert chunk_hash(rows) == chunk_hash(rows.copy()) != ABSENT
    assert chunk_hash(rows.astype(rows.dtype.newbyteorder(">"))) == chunk_hash(rows)  # always little endian


def test_chunks_with_other_rows_hash_differently():
    a = np.arange(12, dtype=np.int64).reshape(4, 3)
    assert chunk_hash(a) != chunk_hash(a[::-1]) and chunk_hash(a) != chunk_hash(a[:3])
    strings = np.array(["ab", "c"], dtype=np.dtypes.StringDType())
    assert chunk_hash(strings) != chunk_hash(np.array(["a", "bc"], dtype=np.dtypes.StringDType()))


def test_a_record_hash_does_not_depend_on_key_order():
    assert record_hash({"a": 1, "b": [1, None]}) == record_hash({"b": [1, None], "a": 1})
    assert record_hash({"a": 1}) != record_hash({"a": 2})


@given(st.integers(1, 9), st.integers(0, 40), st.data())
def test_chunk_hashes_round_trip(chunk, rows, data):
    n = -(-rows // chunk)
    hashes = np.array(data.draw(st.lists(st.integers(0, 2**64 - 1), min_size=n, max_size=n)), dtype=np.uint64)
    entry = ChunkHashes(chunk, rows, hashes)
    back = ChunkHashes.from_dict(entry.to_dict(), "a")
    assert (back.chunk, back.rows, back.hashes.tolist()) == (chunk, rows, hashes.tolist())
    assert [back.covered(c) for c in range(n)] == [min(chunk, rows - c * chunk) for c in range(n)]
    assert back.covered(n) == 0 and not back.named(n)


@pytest.mark.parametrize("entry", [None, [], {"chunk": 0, "rows": 1, "hashes": "0" * 16},
                                   {"chunk": 4, "rows": 5, "hashes": "0" * 16},  # 2 chunks, 1 hash
                                   {"chunk": 4, "rows": 4, "hashes": "xyz" * 5 + "0"},
                                   {"chunk": True, "rows": 4, "hashes": "0" * 16}])
def test_damaged_chunk_hashes_are_refused(entry):
    with pytest.raises(snapstore.CorruptionError, match="chunk hashes of its commit record are damaged"):
        parse_chunks({"chunks": {"order": entry}}, "epochs/0")


def test_a_record_without_chunk_hashes_binds_nothing():
    assert parse_chunks({"rows": 3}, "epochs/0") is None
    assert Coverage(None, "s/epochs/0", "epochs/0").of("s/epochs/0/order") is None


def test_coverage_requires_what_it_reads():
    coverage = Coverage({"order": ChunkHashes(4, 4, np.ones(1, np.uint64))}, "s/epochs/0", "epochs/0")
    assert coverage.of("s/epochs/0/order").rows == 4
    assert coverage.of("s/epochs/0/outputs/loss", required=False) is None
    with pytest.raises(snapstore.CorruptionError, match="names no chunks of array 'seen/x'"):
        coverage.of("s/epochs/0/seen/x")


@pytest.mark.parametrize("listed", [[], {"0": 3}, {"0": "0" * 15}, {"0": "G" * 16}])
def test_a_damaged_list_of_epochs_is_refused(listed):
    with pytest.raises(snapstore.CorruptionError, match="list of epochs"):
        parse_seals(listed, "train/epochs")


def test_a_list_of_epochs_names_sealed_and_open_pieces():
    assert parse_seals({"0": "00000000000000ff", "0/continued/1": None}, "w") == {"0": 255, "0/continued/1": None}
