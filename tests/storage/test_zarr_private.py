"""The zarr internals ``snapstore.storage._zarr`` relies on are still there, with the signatures it calls.

A zarr release that renames or re-signs one of them fails here, by name,
instead of failing a recording or a read.
"""

from __future__ import annotations

import inspect

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from snapstore.storage import _zarr


def _parameters(fn: object) -> list[str]:
    return list(inspect.signature(fn).parameters)  # type: ignore[arg-type]


def test_the_private_apis_exist_with_the_signatures_used():
    from zarr.core.array import AsyncArray
    from zarr.core.array_spec import ArrayConfig
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.metadata import ArrayV3Metadata
    from zarr.core.metadata.io import save_metadata
    from zarr.core.sync import sync
    from zarr.storage._local import _put

    assert _parameters(ArrayConfig)[:2] == ["order", "write_empty_chunks"]
    assert callable(default_buffer_prototype) and callable(sync)
    assert _parameters(_put)[:2] == ["path", "value"]
    assert _parameters(save_metadata) == ["store_path", "metadata", "ensure_parents"]
    assert _parameters(AsyncArray)[:3] == ["metadata", "store_path", "config"]
    assert _parameters(ArrayV3Metadata.get_chunk_spec)[1:4] == ["_chunk_coords", "array_config", "prototype"]
    codecs = (BloscCodec(cname="lz4"), Crc32cCodec(), zarr.codecs.BytesCodec(), zarr.codecs.VLenUTF8Codec())
    for codec in codecs:  # called positionally: (data, spec of the data)
        assert len(_parameters(codec._encode_sync)) == 2 and _parameters(codec._encode_sync)[1] == "chunk_spec"
        assert len(_parameters(codec._decode_sync)) == 2 and _parameters(codec._decode_sync)[1] == "chunk_spec"
        assert _parameters(codec.resolve_metadata) == ["chunk_spec"]


def test_a_chunk_encoded_and_stored_through_them_reads_back_with_plain_zarr(tmp_path):
    array = zarr.create_array(tmp_path / "a.zarr", shape=(8, 3), chunks=(4, 3), dtype="float32",
                              compressors=[BloscCodec(cname="lz4"), Crc32cCodec()])
    block = np.arange(12, dtype=np.float32).reshape(4, 3)
    codecs = _zarr.chunk_codecs(array, (1, 0))
    where = array.store_path / array.metadata.encode_chunk_key((1, 0))
    _zarr.run(where.set(_zarr.encode(codecs, block)))
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "a.zarr")[4:8], block)  # zarr itself agrees
    np.testing.assert_array_equal(_zarr.decode(codecs, _zarr.get(where)), block)
    assert sorted(_zarr.list_prefix(array.store_path.store, "")) == ["c/1/0", "zarr.json"]
    assert _zarr.list_dir(array.store_path.store, "c") == ["1"]


def test_an_array_made_without_zarrs_parent_checks_is_the_array_zarr_makes(tmp_path):
    root = zarr.open_group(tmp_path / "s.zarr", mode="w", zarr_format=3)
    deep = root.require_group("train/epochs/1/hashes")
    options = dict(shape=(10, 3), dtype="float32", chunks=(4, 3), fill_value=np.nan, dimension_names=("row", "dim_1"),
                   chunk_key_encoding={"name": "default", "separator": "."}, attributes={"field": {"kind": "ndarray"}},
                   compressors=[BloscCodec(cname="lz4", shuffle="noshuffle"), Crc32cCodec()],
                   config={"write_empty_chunks": True})
    ours = _zarr.create_array(deep, "ours", **options)
    theirs = deep.create_array("theirs", **options)
    folder = tmp_path / "s.zarr/train/epochs/1/hashes"
    assert (folder / "ours/zarr.json").read_bytes() == (folder / "theirs/zarr.json").read_bytes()
    assert ours.path == "train/epochs/1/hashes/ours" and ours.async_array.config == theirs.async_array.config
    ours[4:8] = np.ones((4, 3), dtype=np.float32)
    reopened = zarr.open_group(tmp_path / "s.zarr", mode="r")["train/epochs/1/hashes/ours"]
    np.testing.assert_array_equal(reopened[4:8], 1)
    assert np.isnan(reopened[:4]).all()
