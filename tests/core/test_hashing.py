"""``snapstore.core.hashing``: per-row content hashes (xxh3_64 of each row's bytes)."""

from __future__ import annotations

import numpy as np
import pytest
import xxhash

from snapstore.core.hashing import NO_HASH, hash_fields, row_hashes


def test_row_hashes_are_xxh3_of_each_row():
    a = np.arange(24, dtype=np.float32).reshape(4, 2, 3)
    assert row_hashes(a).tolist() == [xxhash.xxh3_64_intdigest(a[i].tobytes()) for i in range(4)]
    assert row_hashes(a).dtype == np.uint64
    b = a.copy()
    b[2, 1, 1] = -b[2, 1, 1]
    assert (row_hashes(a) != row_hashes(b)).tolist() == [False, False, True, False]
    assert np.array_equal(row_hashes(a.astype(">f4")), row_hashes(a))  # bytes as stored: little endian
    assert np.array_equal(row_hashes(np.asfortranarray(a)), row_hashes(a))
    assert row_hashes(np.zeros((0, 3))).shape == (0,)
    with pytest.raises(ValueError):
        row_hashes(np.float32(1))


def test_string_rows_hash_their_utf8_bytes():
    s = np.array(["été", "b", "été"], dtype=np.dtypes.StringDType())
    assert row_hashes(s).tolist() == [xxhash.xxh3_64_intdigest(v.encode()) for v in ["été", "b", "été"]]
    assert np.array_equal(row_hashes(s), row_hashes(np.array(["été", "b", "été"])))
    pairs = np.array([["ab", "c"], ["a", "bc"]])
    h = row_hashes(pairs)
    assert h[0] != h[1]  # lengths are part of a multi-string row's bytes


def test_zero_is_reserved():
    assert NO_HASH == 0
    assert (row_hashes(np.arange(10000, dtype=np.int64)[:, None]) != NO_HASH).all()


def test_hash_fields_keeps_keys():
    info, rows = hash_fields({"x": (None, np.ones((3, 2)))})["x"]
    assert info.dtype == "uint64" and info.shape == () and rows.shape == (3,)


def test_rows_of_different_shapes_hash_like_one_row_arrays():
    a = np.arange(6, dtype=np.int32).reshape(2, 3)
    assert np.array_equal(row_hashes([a[0], a[1]]), row_hashes(a))
    ragged = row_hashes([np.ones((2, 2), np.float32), np.ones(3, np.float32)])
    assert ragged.tolist() == [xxhash.xxh3_64_intdigest(np.ones(4, np.float32).tobytes()),
                               xxhash.xxh3_64_intdigest(np.ones(3, np.float32).tobytes())]


def test_hash_fields_skips_what_it_cannot_hash():
    out = hash_fields({"x": (None, np.ones((2, 2))), "odd": (None, object())})
    assert list(out) == ["x"]
