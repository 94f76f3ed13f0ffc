"""One chunk at a time: the codec chain, creating row arrays, encoding, storing and decoding a chunk.

Every array snapstore writes is chunked along rows only, and every chunk is
compressed (optional) and CRC32C-checksummed. ``read_chunk`` is the one
place committed rows are decoded; ``store_chunk`` the one place a chunk is
written.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal, cast

import numcodecs
import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from .. import config
from ..core.manifest import FieldInfo, numpy_dtype
from ..core.merkle import ChunkHashes, chunk_hash
from ..errors import CorruptionError, SnapstoreError
from . import _zarr, files
from .groups import Array, Group, require_group

Compressor = Literal["lz4", "zstd", "none"]
"""The codec applied to every chunk before its CRC32C: Blosc-LZ4, Blosc-Zstd (level 1), or none."""

COMPRESSORS: tuple[Compressor, ...] = ("lz4", "zstd", "none")


def chunk_rows(info: FieldInfo) -> int:
    """Rows per chunk: the power of two nearest below ``DEFAULT_CHUNK_BYTES / row bytes``,
    between 1 and ``MAX_CHUNK_ROWS`` (strings count 16 bytes a row)."""
    itemsize = 16 if info.dtype == "str" else numpy_dtype(info.dtype).itemsize
    rows = config.DEFAULT_CHUNK_BYTES // max(1, math.prod(_fixed(info)) * itemsize)
    return min(config.MAX_CHUNK_ROWS, 1 << max(0, int(rows).bit_length() - 1))


#: Fewest rows per chunk ``_covering`` gives: an epoch longer than expected still grows in chunks this size.
_MIN_CHUNK_ROWS = 1024


def _covering(capacity: int) -> int:
    """Rows per chunk enough for ``capacity`` rows in one chunk: the power of two at or above it, at least
    ``_MIN_CHUNK_ROWS``. An epoch shorter than a chunk would otherwise store the rest of its one
    chunk as padding (about 2 KB compressed an array, most of what a small hash-only epoch stores)."""
    return max(_MIN_CHUNK_ROWS, 1 << max(0, capacity - 1).bit_length())


def _fixed(info: FieldInfo) -> tuple[int, ...]:
    """The row shape of a field written with one row shape (a ragged field's arrays are 1-D)."""
    return cast(tuple[int, ...], info.shape)


#: Blosc's byte shuffles a new array's compressor is tried with (zarr's name: numcodecs' code), by whether
#: its items are one byte, the first winning a tie: one-byte items (uint8 pixels, masks) often compress
#: better bit-shuffled (photo crops: 1.47x vs 1.13x with Blosc-LZ4); wider ones byte-shuffled (integers,
#: model outputs) or as they are (floats made from uint8 pixels: 2.0x vs 1.5x).
_SHUFFLES: dict[bool, dict[Literal["noshuffle", "shuffle", "bitshuffle"], int]] = {
    True: {"noshuffle": numcodecs.Blosc.NOSHUFFLE, "bitshuffle": numcodecs.Blosc.BITSHUFFLE},
    False: {"shuffle": numcodecs.Blosc.SHUFFLE, "noshuffle": numcodecs.Blosc.NOSHUFFLE}}

#: Fewest bytes of first rows a compressor is tried on: Blosc leaves tiny buffers uncompressed (a batch's
#: labels, a batch size), which says nothing of the whole chunks an array will hold.
_LEAST_SAMPLE_BYTES = 4096


def _codecs(dtype: np.dtype, compressor: str, sample: np.ndarray | None) -> list[Any]:
    """The codec chain of a new array: Blosc with ``compressor`` (LZ4 level 5 or Zstd level 1) and the byte
    shuffle of ``_SHUFFLES`` that stores ``sample`` (its first rows, if known) in the fewest bytes, then
    CRC32C; CRC32C alone for ``compressor="none"`` and where the best shuffle stores ``sample`` in more
    than ``1 / config.MIN_COMPRESSION_RATIO`` of its bytes. Strings, and arrays whose first rows are not
    known or fewer than ``_LEAST_SAMPLE_BYTES``, take the usual shuffle: byte shuffle for integers wider
    than a byte, none otherwise."""
    checksum = Crc32cCodec()
    if compressor == "none":
        return [checksum]
    cname = cast(Literal["lz4", "zstd"], compressor)
    clevel = 5 if compressor == "lz4" else 1
    if dtype.kind in "OTU" or sample is None or sample.nbytes < _LEAST_SAMPLE_BYTES:
        usual: Literal["shuffle", "noshuffle"] = "shuffle" if dtype.kind in "iu" and dtype.itemsize > 1 else "noshuffle"
        return [BloscCodec(cname=cname, clevel=clevel, shuffle=usual), checksum]
    shuffles = _SHUFFLES[dtype.itemsize == 1]
    rows = np.ascontiguousarray(sample[: max(1, config.CODEC_SAMPLE_BYTES * len(sample) // sample.nbytes)], dtype)
    stored = {name: len(numcodecs.Blosc(cname, clevel, code, typesize=dtype.itemsize).encode(rows))
              for name, code in shuffles.items()}
    best = min(stored, key=stored.__getitem__)
    if rows.nbytes < config.MIN_COMPRESSION_RATIO * stored[best]:
        return [checksum]
    return [BloscCodec(cname=cname, clevel=clevel, shuffle=best), checksum]


def create_rows_array(group: Group, name: str, info: FieldInfo, capacity: int, compressor: str, *,
                      chunk: int | None = None, sample: np.ndarray | None = None) -> Array:
    """A preallocated ``(capacity, *info.shape)`` array chunked along rows (``chunk`` rows a chunk, by default
    ``chunk_rows`` and no more than ``capacity`` needs), compressed (``compressor``, one of
    ``COMPRESSORS``, checked by ``ChunkWriter``) where that pays on ``sample``, its first rows (see
    ``_codecs``), and checksummed.

    Floats are filled with NaN so unwritten rows are visible; committed row
    counts live in the manifests, never in the fill value. Chunk keys are flat
    (``c.3.0.0``): nested keys cost a directory per axis and chunk, and creating
    those inodes was about half of the recorder's kernel time on ext4.
    """
    dtype = numpy_dtype(info.dtype)
    fill = np.nan if dtype.kind in "fc" else None
    parent, _, base = name.rpartition("/")
    return _zarr.create_array(
        require_group(group, parent) if parent else group,
        base,
        shape=(capacity, *_fixed(info)),
        dtype=str if info.dtype == "str" else dtype,
        chunks=(chunk or min(chunk_rows(info), _covering(capacity)), *_fixed(info)),
        chunk_key_encoding={"name": "default", "separator": "."},
        compressors=_codecs(dtype, compressor, sample),
        fill_value=fill,
        dimension_names=("row", *(f"dim_{i}" for i in range(1, len(info.shape) + 1))),
        attributes={"field": info.to_dict()},
        config={"write_empty_chunks": True},
    )


_SERIALIZERS = (zarr.codecs.BytesCodec, zarr.codecs.VLenUTF8Codec)


def check_array(array: Array, where: str, *, dtype: np.dtype | None = None, row_shape: tuple[int, ...] | None = None,
                rows: int = 0) -> None:
    """Refuse an array whose metadata snapstore did not write, before it decodes a byte of it.

    The metadata is not checksummed, so it is checked against what the
    manifests say: rows chunked along axis 0 only, ``dtype`` and ``row_shape``
    as recorded, at least ``rows`` rows, and chunks stored as snapstore
    stores them (``check_chunks``: their size, and the codec chain
    little-endian bytes or vlen-utf8, an optional blosc, crc32c last).
    Anything else, a transpose, a missing checksum, a codec outside
    the Zarr spec, could turn stored bytes into wrong values without an
    error, so it raises ``CorruptionError``.
    """
    def bad(what: str) -> CorruptionError:
        return CorruptionError.damaged(f"array {array.path!r} of {where}: {what} (its metadata was altered)")

    md = array.metadata
    if md.zarr_format != 3 or array.ndim < 1:
        raise bad(f"expected a Zarr v3 array of rows, found zarr_format {md.zarr_format} with {array.ndim} dimensions")
    if tuple(array.chunks[1:]) != tuple(array.shape[1:]):
        raise bad(f"chunks {array.chunks} split rows of shape {array.shape[1:]}; snapstore chunks along rows only")
    if array.shape[0] < rows:
        raise bad(f"{array.shape[0]} rows, fewer than the {rows} the manifest says were committed")
    if dtype is not None and array.dtype != dtype:
        raise bad(f"dtype {array.dtype}, but the manifest records {dtype}")
    if row_shape is not None and tuple(array.shape[1:]) != tuple(row_shape):
        raise bad(f"rows of shape {tuple(array.shape[1:])}, but the manifest records {tuple(row_shape)}")
    check_chunks(array, where)


def chunk_bytes(array: Array) -> int:
    """Bytes one whole row-chunk of ``array`` holds decoded; string rows count 16 bytes, as in ``chunk_rows``."""
    itemsize = 16 if array.dtype.kind in "OTU" else array.dtype.itemsize
    return math.prod(array.chunks) * itemsize


def check_chunks(array: Array, where: str) -> None:
    """Refuse ``array`` (of ``where``) whose chunks are not stored as snapstore stores them, before a chunk
    is read: chunks larger than one row or ``config.DEFAULT_CHUNK_BYTES`` decoded (a ragged field's
    ``values`` hold up to that many one-byte elements), or codecs other than little-endian bytes or
    vlen-utf8, an optional blosc (whose header declares the decoded size), and crc32c last."""
    def bad(what: str) -> CorruptionError:
        return CorruptionError.damaged(f"array {array.path!r} of {where}: {what} (its metadata was altered)")

    rows = array.chunks[0]
    if rows > 1 and max(rows, chunk_bytes(array)) > config.DEFAULT_CHUNK_BYTES:
        raise bad(f"chunks of {rows} rows ({chunk_bytes(array)} bytes decoded), larger than snapstore writes (at "
                  f"most {config.DEFAULT_CHUNK_BYTES} bytes, or one row)")
    codecs = list(getattr(array.metadata, "codecs", ()))  # a v2 array has none: refused
    ok = (
        len(codecs) in (2, 3)
        and isinstance(codecs[0], _SERIALIZERS)
        and getattr(codecs[0], "endian", None) in (None, zarr.codecs.Endian.little)
        and all(isinstance(c, BloscCodec) for c in codecs[1:-1])
        and isinstance(codecs[-1], Crc32cCodec)
    )
    if not ok:
        raise bad(f"codecs {[type(c).__name__ for c in codecs]} are not the chain snapstore writes "
                  "(bytes or vlen-utf8, an optional blosc, crc32c)")


def _coords(array: Array, c: int) -> tuple[int, ...]:
    """Grid coordinates of row-chunk ``c`` (every chunk spans the whole row shape)."""
    return (c,) + (0,) * (array.ndim - 1)


def chunk_path(array: Array, c: int) -> Any:
    """Where row-chunk ``c`` of ``array`` is stored: a ``StorePath`` (store and key)."""
    return array.store_path / array.metadata.encode_chunk_key(_coords(array, c))


def local_file(where: Any) -> Path | None:
    """The file behind a ``StorePath`` on a local disk; ``None`` on any other store."""
    return Path(where.store.root) / where.path if isinstance(where.store, zarr.storage.LocalStore) else None


def chunk_codecs(array: Array, c: int) -> list[tuple[Any, Any]]:
    """``(codec, spec of its input)`` for each of ``array``'s codecs on row-chunk ``c``, in encoding
    order: what snapstore needs to encode (``writers.ChunkWriter``) or decode (``read_chunk``) a
    whole chunk itself, as zarr's codec pipeline does."""
    return _zarr.chunk_codecs(array, _coords(array, c))


def read_chunk(array: Array, c: int, committed_in: str | None = None, expect: ChunkHashes | None = None) -> np.ndarray:
    """Rows of row-chunk ``c`` of ``array`` (the last chunk may be shorter), decoded and checksum-verified;
    possibly read-only (copy before changing them).

    One store read (a plain file read on a local disk) and the array's codecs
    in reverse: what ``array[lo:lo + rows]`` returns, without
    zarr's per-call machinery. A chunk missing from the store reads as the fill
    value, as in zarr, unless ``committed_in`` names what the manifest committing
    its rows belongs to (``"epoch 3 of stream 'train'"``). ``expect``: what the
    commit record covering the chunk names of its array (format version 2), which
    the rows are verified against (``_check_hash``); the chunk must then be stored
    unless the record names it absent.

    Raises
    ------
    CorruptionError
        The chunk fails to decode or its CRC32C does not match, it is not the
        chunk ``expect`` names (swapped, duplicated, stale, moved from another
        array or epoch), or it is missing although ``committed_in`` or
        ``expect`` says its rows were committed; the message names the array,
        the chunk and its rows.
    """
    rows = array.chunks[0]
    lo = c * rows
    n = min(rows, array.shape[0] - lo)
    check_chunks(array, "the snapshot")
    if 0 in array.shape[1:]:  # rows of zero size (a (B, 0) field) hold no bytes to read: blosc refuses to decode none
        return np.empty((n, *array.shape[1:]), dtype=array.dtype)
    if expect is not None and not expect.named(c):
        return _unnamed(array, c, n, expect)
    try:
        data = _get_chunk(chunk_path(array, c), _largest_stored(array))
        if data is not None:
            _check_decoded_size(array, c, data)
            block = _zarr.decode(chunk_codecs(array, c), data)[:n]
            return block if expect is None else _check_hash(array, c, block, expect)
    except SnapstoreError:  # the store cannot be reached or refuses access (``groups.RemoteStore``): no damage
        raise
    except (ValueError, RuntimeError, OSError, TypeError, IndexError) as e:
        raise CorruptionError.damaged(f"chunk {c} (rows {lo}-{lo + rows - 1}) of array {array.path!r} "
                                      f"cannot be read: {e}") from e
    if committed_in is not None or expect is not None:
        raise CorruptionError.damaged(_missing(array, c, committed_in or "the snapshot"))
    return _fill(array, n)


def _fill(array: Array, n: int) -> np.ndarray:
    return np.full((n, *array.shape[1:]), array.fill_value, dtype=array.dtype)


def _check_hash(array: Array, c: int, block: np.ndarray, expect: ChunkHashes) -> np.ndarray:
    """``block`` (row-chunk ``c`` of ``array``, decoded) if its rows are those its commit record names: the
    hash of the rows the record covers equals the record's (``merkle.chunk_hash``); rows past them, written
    since or never, read as the fill value. ``CorruptionError`` naming the array and the chunk otherwise."""
    rows = expect.covered(c)
    if expect.chunk != array.chunks[0] or chunk_hash(block[:rows]) != int(expect.hashes[c]):
        lo = c * array.chunks[0]
        raise CorruptionError.damaged(
            f"chunk {c} (rows {lo}-{lo + array.chunks[0] - 1}) of array {array.path!r} is not the chunk its commit "
            "record names (its content hash differs: a chunk swapped, duplicated, stale or moved from elsewhere)")
    if rows < len(block):
        block = block.copy()
        block[rows:] = array.fill_value
    return block


def _unnamed(array: Array, c: int, n: int, expect: ChunkHashes) -> np.ndarray:
    """Row-chunk ``c`` of ``array`` whose commit record names no stored chunk: rows never written, the fill
    value. A chunk stored where the record names none (``merkle.ABSENT``) is ``CorruptionError``."""
    if c < len(expect.hashes) and _get_chunk(chunk_path(array, c), _largest_stored(array)) is not None:
        raise CorruptionError.damaged(f"chunk {c} of array {array.path!r} is stored, but its commit record says no "
                                      "row of it was written (a chunk copied or moved there)")
    return _fill(array, n)


def _missing(array: Array, c: int, where: str) -> str:
    rows = array.chunks[0]
    return (f"chunk {c} (rows {c * rows}-{(c + 1) * rows - 1}) of array {array.path!r} of {where} is missing from "
            "the store although the manifest says its rows were committed")


def _get_chunk(where: Any, limit: int) -> Any:
    """The bytes of one key (a ``StorePath``), ``None`` if absent: on a local disk a read of a regular file
    of at most ``limit`` bytes inside the snapshot (``files.read_local``, without the hops through zarr's
    event loop and a thread), else zarr's get."""
    path = local_file(where)
    if path is None:
        return _zarr.get(where)
    data = files.read_local(Path(where.store.root), path, limit)
    return None if data is None else _zarr.as_buffer(data)


#: Decoded bytes of one chunk of strings a reader accepts (vlen-utf8: a 4-byte length and the UTF-8 bytes a
#: row); 65536 rows of up to 4 KiB each.
_LARGEST_STRINGS = 256 * 1024 * 1024

#: What Blosc adds to a chunk at most (its header), plus the CRC32C.
_OVERHEAD = 16 + 4


def _largest_decoded(array: Array) -> int:
    return _LARGEST_STRINGS if array.dtype.kind in "OTU" else chunk_bytes(array)


def _largest_stored(array: Array) -> int:
    """Most bytes a stored chunk of ``array`` can hold: Blosc never stores more than its input plus its header."""
    return _largest_decoded(array) + _OVERHEAD


def _check_decoded_size(array: Array, c: int, data: Any) -> None:
    """Refuse chunk ``c`` of ``array`` whose Blosc header (bytes 4-8: the decoded size) declares other than
    a whole chunk (at most ``_LARGEST_STRINGS`` for strings), before decoding it."""
    if not isinstance(array.metadata.codecs[1], BloscCodec):  # type: ignore[union-attr]  # always v3 here
        return  # no compressor: the stored size, already bounded, is the decoded size
    raw = data.as_numpy_array()
    declared = int.from_bytes(raw[4:8].tobytes(), "little") if len(raw) >= 16 else -1
    expected = _largest_decoded(array)
    strings = array.dtype.kind in "OTU"
    if declared < 0 or declared > expected or (not strings and declared != expected):
        what = f"at most {expected}" if strings else f"{expected}"
        raise CorruptionError.damaged(f"chunk {c} of array {array.path!r} declares {declared} bytes decoded, "
                                      f"but a whole chunk holds {what} bytes: it is not a chunk of this array")


def stored_chunks(array: Array) -> set[int]:
    """Row-chunk numbers of ``array`` that have a key (a file, an object) in the store.

    Found from the keys listed, never by walking the chunk grid, which a
    hostile shape can make astronomically long: the work is one pass over
    the keys that exist.
    """
    base = array.store_path.path
    prefix = f"{base}/" if base else ""
    encode = array.metadata.chunk_key_encoding.encode_chunk_key  # type: ignore[union-attr]  # always v3 here
    found = set()
    for key in _zarr.list_prefix(array.store_path.store, prefix):
        name = key[len(prefix):]
        number = re.search(r"\d{1,18}", name)  # the row-chunk number comes first: c.<c>.0.0
        if number is not None and int(number[0]) < array.cdata_shape[0] and encode(
                _coords(array, int(number[0]))) == name:
            found.add(int(number[0]))
    return found


def store_chunk(where: Any, data: Any) -> None:
    """Write one chunk key (a ``StorePath``): zarr's own temp-file-and-rename write on a local
    disk, minus the hops through its event loop; one PUT on an object store."""
    path = local_file(where)
    if path is not None:
        _zarr.local_put(path, data)
    else:
        _zarr.run(where.set(data))
