"""Every private zarr API snapstore uses, in one place.

snapstore encodes, decodes, stores and lists chunks itself (``chunks.py``)
instead of going through ``Array.__getitem__``/``__setitem__``, whose
per-call machinery cost more than the codecs (PERF-NOTES.md). That needs a
few zarr internals, named here and nowhere else:
``tests/storage/test_zarr_private.py`` fails when a zarr release changes
one of them, so an upgrade breaks a test, not a recording.
"""

from __future__ import annotations

from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import zarr
from zarr.core.array import AsyncArray
from zarr.core.array_spec import ArrayConfig
from zarr.core.buffer import default_buffer_prototype
from zarr.core.metadata import ArrayV3Metadata
from zarr.core.metadata.io import save_metadata
from zarr.core.sync import sync
from zarr.storage._local import _put

__all__ = ["as_buffer", "chunk_codecs", "create_array", "decode", "encode", "list_dir", "list_prefix", "local_put",
           "run"]

T = TypeVar("T")

_CHUNK_CONFIG = ArrayConfig(order="C", write_empty_chunks=True)


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run one of zarr's coroutines (a store call) on zarr's own event loop and return its result."""
    return sync(coroutine)


def create_array(group: zarr.Group, name: str, **options: Any) -> zarr.Array:
    """``group.create_array(name, **options)`` where ``name``'s parent groups all exist: the same ``zarr.json``
    (zarr parses ``options`` into it, in memory), written with one store call. zarr's own
    ``create_array`` also checks and rewrites every parent's ``zarr.json`` up to the root, two store
    calls a level through its threads: 5.3 vs 1.1 ms an array five levels deep, and an epoch makes a
    dozen (issue 17)."""
    template = zarr.create_array(zarr.storage.MemoryStore(), **options)
    where = group.store_path / name
    sync(save_metadata(where, template.metadata))
    return zarr.Array(AsyncArray(metadata=template.metadata, store_path=where, config=template.async_array.config))


def chunk_codecs(array: zarr.Array, coords: tuple[int, ...]) -> list[tuple[Any, Any]]:
    """``(codec, spec of its input)`` for each of ``array``'s codecs on the chunk at grid ``coords``, in
    encoding order: what zarr's codec pipeline runs on a whole chunk."""
    metadata = cast(ArrayV3Metadata, array.metadata)  # snapstore writes and reads Zarr v3 only
    spec = metadata.get_chunk_spec(coords, _CHUNK_CONFIG, default_buffer_prototype())
    out = []
    for codec in metadata.codecs:
        out.append((codec, spec))
        spec = codec.resolve_metadata(spec)
    return out


def encode(codecs: list[tuple[Any, Any]], block: np.ndarray) -> Any:
    """The stored bytes (a zarr ``Buffer``) of one whole chunk ``block``, through ``codecs``."""
    data: Any = default_buffer_prototype().nd_buffer.from_numpy_array(block)
    for codec, spec in codecs:
        data = codec._encode_sync(data, spec)
    return data


def decode(codecs: list[tuple[Any, Any]], data: Any) -> np.ndarray:
    """One whole chunk decoded from its stored bytes through ``codecs`` (in reverse); checksums verified."""
    for codec, spec in reversed(codecs):
        data = codec._decode_sync(data, spec)
    return data.as_numpy_array()


def get(where: Any) -> Any:
    """The bytes of key ``where`` (a ``StorePath``) of any store, ``None`` if absent."""
    return sync(where.get(default_buffer_prototype()))


def as_buffer(data: bytes, prototype: Any = None) -> Any:
    """``data`` as the zarr ``Buffer`` a store's ``get`` returns (of ``prototype``, by default zarr's default)."""
    return (prototype or default_buffer_prototype()).buffer.from_bytes(data)


def local_put(path: Path, data: Any) -> None:
    """Write a local file the way ``LocalStore`` does: a temporary file, then an atomic rename."""
    _put(path, data)


async def _keys(listing: Any) -> list[str]:
    return [key async for key in listing]


def list_prefix(store: Any, prefix: str) -> list[str]:
    """Every key of ``store`` under ``prefix``."""
    return sync(_keys(store.list_prefix(prefix)))


def list_dir(store: Any, prefix: str) -> list[str]:
    """The names directly under ``prefix`` in ``store``."""
    return sync(_keys(store.list_dir(prefix)))
