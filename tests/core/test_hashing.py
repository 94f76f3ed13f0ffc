"""Per-row content hashes: the function, and the hashes the recorder stores for seen, raw and output rows."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import xxhash
from audit_support import Digits, Scalars, ShiftNoise, record
from torch.utils.data import DataLoader

import snapstore
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


def test_recorded_hashes_match_the_data(tmp_path):
    loader = DataLoader(Digits(n=200, transform=ShiftNoise()), batch_size=32, shuffle=True, num_workers=2)
    snap = record(tmp_path / "s.snap", loader, 2, log=lambda b: {"loss": b[0].mean((1, 2, 3)), "pred": b[1] % 3})
    stream = snap["train"]
    for ep in stream:
        data = ep.to_numpy()
        for f in ("0", "1"):
            assert np.array_equal(ep.hashes(f), row_hashes(data[f]))
        for name in ("loss", "pred"):
            assert np.array_equal(ep.output_hashes(name), row_hashes(ep.outputs[name]))
    raw = stream.raw.to_numpy()
    for f in ("0", "1"):
        assert np.array_equal(stream.raw.hashes(f), row_hashes(raw[f]))
    # the arrays are on disk, next to the data
    assert (tmp_path / "s.snap/train/epochs/1/hashes/seen/0/zarr.json").exists()
    assert (tmp_path / "s.snap/train/epochs/1/hashes/outputs/loss/zarr.json").exists()
    assert (tmp_path / "s.snap/train/raw/hashes/1/zarr.json").exists()


def test_strings_are_hashed_in_the_writer(tmp_path):
    snap = record(tmp_path / "s.snap", DataLoader(Scalars(30), batch_size=8), 1)
    ep = snap["train"].epoch(0)
    assert ep.hashes("name").tolist() == [xxhash.xxh3_64_intdigest(f"item-{i:03d}".encode()) for i in ep.order]


def test_snapshots_without_stored_hashes_are_hashed_on_read(tmp_path):
    loader = DataLoader(Digits(n=64), batch_size=16, shuffle=True)
    snap = record(tmp_path / "s.snap", loader, 1)
    shutil.copytree(tmp_path / "s.snap", tmp_path / "old.snap")
    shutil.rmtree(tmp_path / "old.snap/train/epochs/0/hashes")
    shutil.rmtree(tmp_path / "old.snap/train/raw/hashes")
    old = snapstore.open(tmp_path / "old.snap")
    for f in ("0", "1"):
        assert np.array_equal(old["train"].epoch(0).hashes(f), snap["train"].epoch(0).hashes(f))
        assert np.array_equal(old["train"].raw.hashes(f), snap["train"].raw.hashes(f))
    assert snapstore.audit(old).ok
    assert snapstore.diff(old, snap).identical


def test_gather_reads_chosen_rows(tmp_path):
    snap = record(tmp_path / "s.snap", DataLoader(Digits(n=64), batch_size=16, shuffle=True), 1)
    ep = snap["train"].epoch(0)
    full = ep.to_numpy()["0"]
    assert np.array_equal(ep.gather("0", [5, 1, 5]), full[[5, 1, 5]])
    assert np.array_equal(snap["train"].raw.gather("1", [3, 0]), np.array([3, 0]) % 10)
    with pytest.raises(KeyError):
        ep.hashes("nope")
    with pytest.raises(IndexError):
        ep.gather("0", [64])
    assert torch.equal(torch.from_numpy(ep.gather("0", [0])[0]), ep[0][0])


def test_rows_of_different_shapes_hash_like_one_row_arrays():
    a = np.arange(6, dtype=np.int32).reshape(2, 3)
    assert np.array_equal(row_hashes([a[0], a[1]]), row_hashes(a))
    ragged = row_hashes([np.ones((2, 2), np.float32), np.ones(3, np.float32)])
    assert ragged.tolist() == [xxhash.xxh3_64_intdigest(np.ones(4, np.float32).tobytes()),
                               xxhash.xxh3_64_intdigest(np.ones(3, np.float32).tobytes())]


def test_hash_fields_skips_what_it_cannot_hash():
    out = hash_fields({"x": (None, np.ones((2, 2))), "odd": (None, object())})
    assert list(out) == ["x"]
