"""Reading committed rows: random access through a chunk cache, forward reads with read-ahead.

Every reader decodes through ``chunks.read_chunk``, so one missing-chunk
rule and one error message hold for every read.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import zarr

from .. import config
from ..core import layout
from ..core.manifest import FieldInfo, numpy_dtype
from ..core.merkle import ChunkHashes, Coverage
from ..errors import CorruptionError
from .chunks import check_array, read_chunk
from .groups import Array
from .pools import pool


class RaggedReader:
    """Reads rows of a ragged field: a list of arrays per read, through the values' chunk cache.

    ``nodes`` maps ``values``/``offsets``/``shapes`` to their arrays; ``coverage``: the commit record
    covering them, whose chunk hashes they are verified against (``None``: unverified).
    """

    def __init__(self, nodes: dict[str, Any], rows: int, info: FieldInfo, where: str,
                 coverage: Coverage | None = None) -> None:
        def array(name: str) -> Array:
            node = nodes.get(name)
            if not isinstance(node, zarr.Array):
                raise CorruptionError.damaged(f"{where}: array {name!r} of a ragged field is missing")
            return node

        def expect(a: Array) -> ChunkHashes | None:
            return coverage.of(a.path) if coverage is not None else None

        int64 = np.dtype("int64")
        self._where = where
        offsets, shapes = array(layout.OFFSETS), array(layout.SHAPES)
        self.offsets = ChunkReader(offsets, where, rows=rows, dtype=int64, row_shape=(),
                                   expect=expect(offsets)).read(0, rows)
        self.shapes = ChunkReader(shapes, where, rows=rows, dtype=int64, row_shape=(len(info.shape),),
                                  expect=expect(shapes)).read(0, rows)
        counts = np.prod(self.shapes, axis=1, dtype=np.int64)
        ends = self.offsets + counts
        if rows and (self.offsets[0] < 0 or (self.shapes < 0).any() or (self.offsets[1:] != ends[:-1]).any()):
            raise CorruptionError.damaged(f"{where}: the offsets and shapes of a ragged field disagree")
        total = int(ends[-1]) if rows else 0
        values = array(layout.VALUES)
        self._values = ChunkReader(values, where, rows=total, dtype=numpy_dtype(info.dtype), row_shape=(),
                                   expect=expect(values))

    def read(self, start: int, stop: int) -> list[np.ndarray]:
        if stop <= start:
            return []
        counts = np.prod(self.shapes[start:stop], axis=1, dtype=np.int64)
        lo = int(self.offsets[start])
        flat = self._values.read(lo, int(self.offsets[stop - 1] + counts[-1]))
        starts = (self.offsets[start:stop] - lo).tolist()
        return [flat[a : a + c].reshape(sh)
                for a, c, sh in zip(starts, counts.tolist(), self.shapes[start:stop].tolist())]

    def gather(self, positions: np.ndarray) -> list[np.ndarray]:
        return [self.read(int(p), int(p) + 1)[0] for p in positions]


class ChunkReader:
    """Reads rows of one array chunk by chunk, keeping a few decoded chunks.

    Sequential reads decode each chunk once; a random read of a recently read
    chunk costs a slice. The array's metadata is checked first (``check_array``).
    Decode and checksum failures become ``CorruptionError`` naming the array
    and the chunk, and so does a chunk missing from the store for rows the
    manifest says were committed (zarr would read it as the fill value), unless
    ``sparse`` (outputs, whose rows may never have been logged). ``expect``: what the commit record
    covering the array names of its chunks (format version 2); every chunk read is verified against
    it (``read_chunk``).
    """

    def __init__(self, array: Array, where: str = "the snapshot", *, rows: int | None = None,
                 dtype: np.dtype | None = None, row_shape: tuple[int, ...] | None = None, sparse: bool = False,
                 cached_chunks: int = config.DEFAULT_CACHED_CHUNKS, expect: ChunkHashes | None = None) -> None:
        check_array(array, where, dtype=dtype, row_shape=row_shape, rows=rows or 0)
        if expect is not None:
            covers(array, expect, where)
        self.array = array
        self.expect = expect
        self.rows = array.chunks[0]
        self._where = where
        self._committed = array.shape[0] if rows is None else rows
        self._sparse = sparse
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cached_chunks = cached_chunks

    def chunk(self, c: int) -> np.ndarray:
        block = self._cache.get(c)
        if block is not None:
            self._cache.move_to_end(c)
            return block
        committed = not self._sparse and c * self.rows < self._committed
        block = read_chunk(self.array, c, self._where if committed else None, self.expect)
        self._cache[c] = block
        if len(self._cache) > self._cached_chunks:
            self._cache.popitem(last=False)
        return block

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as a new array."""
        if stop - start == 0:
            return np.empty((0, *self.array.shape[1:]), dtype=self.array.dtype)
        first, last = start // self.rows, (stop - 1) // self.rows
        if first == last:  # one chunk: the common case of a batch or a single row
            lo = first * self.rows
            return self.chunk(first)[start - lo : stop - lo].copy()
        parts = [
            self.chunk(c)[max(start - c * self.rows, 0) : stop - c * self.rows]
            for c in range(first, last + 1)
        ]
        return np.concatenate(parts)

    def gather(self, positions: np.ndarray) -> np.ndarray:
        """Rows at ``positions`` (any order) as a new array, each chunk decoded once."""
        out = np.empty((len(positions), *self.array.shape[1:]), dtype=self.array.dtype)
        chunks = positions // self.rows
        for c in np.unique(chunks):
            sel = np.nonzero(chunks == c)[0]
            out[sel] = self.chunk(int(c))[positions[sel] - c * self.rows]
        return out


class Cursor:
    """Hands out increasing row ranges of one array, decoding it forward chunk by chunk.

    Each chunk is read and decoded once, directly (``read_chunk``): zarr's
    ``Array.__getitem__`` ran the same codecs at about half the speed. The
    next ``AHEAD`` chunks are read and decoded ahead on a thread per CPU
    (Blosc releases the GIL), so a replay decodes on every core and a cold
    one reads the disk while it decodes. A cursor holds at most ``AHEAD + 1``
    decoded chunks besides the rows it handed out.
    """

    AHEAD = 2

    def __init__(self, array: Any, rows: int, expect: ChunkHashes | None = None) -> None:
        if expect is not None:
            covers(array, expect, "the snapshot")
        self._array, self._rows, self._expect = array, rows, expect
        self._chunk = int(array.chunks[0])
        self._chunks = -(-rows // self._chunk)  # chunks holding the rows
        self._pieces: list[tuple[int, np.ndarray]] = []  # (first row, decoded chunk), ascending
        self._next = 0  # first row not read yet, at a chunk boundary
        self._ahead: dict[int, Future[np.ndarray]] = {}  # chunk -> its decoding

    def take(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` (``start`` never below an earlier ``start``); a read-only view when one chunk
        holds them."""
        self._pieces = [(lo, b) for lo, b in self._pieces if lo + len(b) > start]
        if self._next < start:  # skip rows nobody asks for (raw rows also recorded by an earlier rank)
            self._next = max(self._next, start - start % self._chunk)
        while self._next < stop:
            block = self._decoded(self._next // self._chunk)[: self._rows - self._next]
            self._pieces.append((self._next, block))
            self._next += len(block)
        parts = [b[max(start - lo, 0) : stop - lo] for lo, b in self._pieces if lo < stop]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _decoded(self, c: int) -> np.ndarray:
        for k in [k for k in self._ahead if k < c]:  # skipped chunks
            del self._ahead[k]
        for k in range(c, min(c + 1 + self.AHEAD, self._chunks)):
            if k not in self._ahead:
                self._ahead[k] = _decoders().submit(read_chunk, self._array, k, "the snapshot", self._expect)
        return self._ahead.pop(c).result()


def covers(array: Array, expect: ChunkHashes, where: str) -> None:
    """``CorruptionError`` unless the chunk hashes ``expect`` a commit record names of ``array`` are of chunks
    of its size. (Rows past those the record covers were never written: they read as the fill value.)"""
    if expect.chunk != array.chunks[0]:
        raise CorruptionError.damaged(
            f"array {array.path!r} of {where}: its commit record names chunks of {expect.chunk} rows, but its "
            f"metadata says {array.chunks[0]} (the array's metadata or the record was replaced)")


def _decoders() -> ThreadPoolExecutor:
    """The threads cursors decode on: one per CPU (at most ``config.MAX_CODEC_THREADS``)."""
    return pool("decode", min(config.MAX_CODEC_THREADS, os.cpu_count() or 1))
