"""Committed rows read forward in chunk-aligned blocks: the reading side of every export.

A ``Source`` is what one export reads: an epoch's seen rows or a stream's raw
samples. Its rows live in one or more *parts* (the ranks of a distributed
run, the continuation of a resumed epoch, each rank's raw samples), and
``part_of``/``local_of`` say where the row at each export position is stored.
Fixed-shape fields are read in blocks of whole chunks of about
``config.DEFAULT_EXPORT_BLOCK_BYTES``; ragged fields (``FieldInfo.ragged``)
in blocks of rows through their reader.

This is the one module that knows how ``reader.py`` lays out its parts.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from . import config, layout, store
from .errors import CorruptionError, SchemaError, UsageError
from .layout import FieldInfo
from .schema import Structure, leaf_paths, numpy_dtype

if TYPE_CHECKING:
    from .reader import Epoch, RawSamples

Rows = np.ndarray | list  # a block of fixed rows, or a list of ragged row arrays


@dataclass(frozen=True)
class Part:
    """One place rows are stored: its committed rows and a reader per field."""

    rows: int
    fixed: dict[str, Any]  # field path -> stored (>= rows, *shape) array, for fields stored with one row shape
    stored_ragged: dict[str, Any]  # field path -> store.RaggedReader
    index: np.ndarray  # dataset index of each stored row, int64 (rows,)

    def ragged(self, path: str) -> Any:
        """A reader of ``path``'s rows as lists of arrays, with ``shapes`` (int64, (rows, ndim))."""
        reader = self.stored_ragged.get(path)
        return reader if reader is not None else _FixedAsRagged(self.fixed[path], self.rows)


@dataclass(frozen=True)
class Source:
    """The rows one export reads, in export order (seen order, or dataset-index order for raw samples)."""

    what: str  # for messages: "stream 'train' epoch 1", "raw samples of stream 'train'"
    structure: Structure
    infos: dict[str, FieldInfo]
    parts: list[Part]
    part_of: np.ndarray  # int64 (rows,): part of the row at each export position
    local_of: np.ndarray  # int64 (rows,): its row within that part
    export_index: np.ndarray  # int64 (rows,): its dataset index
    raw: bool

    @property
    def rows(self) -> int:
        return len(self.part_of)

    def is_ragged(self, path: str) -> bool:
        """Rows of ``path`` may differ in shape (stored ragged somewhere, or ragged in the stream's schema)."""
        return self.infos[path].ragged or any(path in part.stored_ragged for part in self.parts)

    def dest(self, k: int) -> np.ndarray | slice:
        """Export position of each stored row of part ``k``: a slice when they are consecutive, else an
        int64 array with -1 for rows not exported (a raw sample also recorded by an earlier rank)."""
        part = self.parts[k]
        if len(self.parts) == 1 and np.array_equal(self.local_of, np.arange(part.rows)):
            return slice(0, part.rows)
        dest = np.full(part.rows, -1, dtype=np.int64)
        mine = np.nonzero(self.part_of == k)[0]
        dest[self.local_of[mine]] = mine
        return dest

    @property
    def sequential(self) -> bool:
        """Every part's rows appear in export order in the order they are stored, so exports can stream."""
        return all(bool(np.all(np.diff(self.local_of[self.part_of == k]) > 0)) for k in range(len(self.parts)))

    @property
    def concatenated(self) -> bool:
        """Export order is the parts' rows one part after the other (so Dask can concatenate the parts)."""
        expected = np.concatenate([np.arange(p.rows) for p in self.parts] or [np.empty(0, np.int64)])
        return bool(np.all(np.diff(self.part_of) >= 0)) and np.array_equal(self.local_of, expected)


def source(obj: Epoch | RawSamples) -> Source:
    """The ``Source`` of an ``Epoch`` (seen rows) or a ``RawSamples`` (raw samples)."""
    from .reader import Epoch, RawSamples  # reader imports the exports: import it when called

    if isinstance(obj, Epoch):
        m = obj.stream.manifest
        index = obj.order
        single = len(obj._parts) == 1
        parts = [_part(p.seen, p.rows, index if single else p.array(layout.ORDER, p.rows)) for p in obj._parts]
        part_of, local_of = obj._map
        return Source(f"stream {m.name!r} epoch {obj.number}", m.structure or {"type": "none"}, dict(m.fields),
                      parts, part_of, local_of, index, raw=False)
    if isinstance(obj, RawSamples):
        m = obj._stream.manifest
        parts = [_part(fields, len(index), index) for fields, index in obj._sources]
        every = np.concatenate([p.index for p in parts] or [np.empty(0, np.int64)])
        which = np.concatenate([np.full(p.rows, k, dtype=np.int64) for k, p in enumerate(parts)] or [np.empty(0, np.int64)])
        row = np.concatenate([np.arange(p.rows, dtype=np.int64) for p in parts] or [np.empty(0, np.int64)])
        by_index = np.argsort(every, kind="stable")  # ties keep part and row order: the first recording comes first
        first = np.ones(len(by_index), dtype=bool)
        first[1:] = every[by_index][1:] != every[by_index][:-1]
        keep = by_index[first]
        return Source(f"raw samples of stream {m.name!r}", m.raw_structure or {"type": "none"}, dict(m.raw_fields),
                      parts, which[keep], row[keep], every[keep], raw=True)
    raise UsageError(f"exports read an Epoch or a stream's RawSamples, not a {type(obj).__name__}")


def _part(fields: Any, rows: int, index: np.ndarray) -> Part:
    readers = fields.readers if fields is not None else {}
    return Part(
        rows,
        {p: r.array for p, r in readers.items() if isinstance(r, store.ChunkReader)},
        {p: r for p, r in readers.items() if not isinstance(r, store.ChunkReader)},
        np.asarray(index, dtype=np.int64),
    )


def select(src: Source, fields: Any) -> list[str]:
    """Requested field paths in structure order; every field when ``fields`` is None.

    Raises ``UsageError`` naming unknown paths and the known ones.
    """
    every = [p for p in leaf_paths(src.structure) if p in src.infos]
    if fields is None:
        return every
    wanted = [fields] if isinstance(fields, str) else list(fields)
    unknown = [f for f in wanted if f not in src.infos]
    if unknown:
        raise UsageError(f"no field {', '.join(map(repr, unknown))} in {src.what}; its fields are {every}")
    return [p for p in every if p in wanted]


def refuse_ragged(src: Source, paths: list[str], what: str) -> None:
    """``SchemaError`` when a field in ``paths`` is ragged, which ``what`` cannot hold."""
    ragged = [p for p in paths if src.is_ragged(p)]
    if ragged:
        raise SchemaError(f"fields {ragged} of {src.what} are ragged (rows differ in shape), which {what} cannot hold; "
                          "pass fields=[...] without them, or use to_numpy(ragged='pad') or to_numpy(ragged='list')")


# -- reading ---------------------------------------------------------------------------------


def read(array: Any, start: int, stop: int, rest: tuple[Any, ...] = ()) -> np.ndarray:
    """``array[start:stop, *rest]`` of a stored array.

    Decode or checksum failures become ``CorruptionError`` naming the array
    and the chunk that failed.
    """
    try:
        block = array[(slice(start, stop), *rest)]
    except (ValueError, RuntimeError, OSError, TypeError, IndexError) as e:
        chunk = int(array.chunks[0])
        for lo in range(start - start % chunk, stop, chunk):  # find the damaged chunk to name it
            try:
                array[(slice(lo, min(lo + chunk, array.shape[0])), *rest)]
            except (ValueError, RuntimeError, OSError, TypeError, IndexError) as err:
                raise CorruptionError(
                    f"chunk {lo // chunk} (rows {lo}-{lo + chunk - 1}) of array {array.path!r} cannot be read: {err}; "
                    "the file is damaged: restore it from a copy, or run `snapstore audit` to list every damaged chunk"
                ) from err
        raise CorruptionError(
            f"rows {start}-{stop - 1} of array {array.path!r} cannot be read: {e}; the file is damaged: restore it "
            "from a copy, or run `snapstore audit` to list every damaged chunk"
        ) from e
    if not rest:  # whole rows: a chunk missing from the store must not pass for fill values
        store.check_rows_stored(array, start, block)
    return block


def block_rows(array: Any) -> int:
    """Rows per read: whole chunks, about ``config.DEFAULT_EXPORT_BLOCK_BYTES``, at least one chunk."""
    chunk = int(array.chunks[0])
    row_bytes = max(1, math.prod(array.shape[1:]) * array.dtype.itemsize)
    return chunk * max(1, config.DEFAULT_EXPORT_BLOCK_BYTES // (chunk * row_bytes))


def ragged_block_rows(info: FieldInfo, shapes: np.ndarray) -> int:
    """Rows per read of a ragged field: about ``DEFAULT_EXPORT_BLOCK_BYTES`` of its widest rows."""
    return max(1, config.DEFAULT_EXPORT_BLOCK_BYTES // _widest_bytes(info, shapes))


def _widest_bytes(info: FieldInfo, shapes: np.ndarray) -> int:
    widest = int(np.prod(shapes, axis=1, dtype=np.int64).max(initial=1)) if len(shapes) else 1
    return max(1, widest * numpy_dtype(info.dtype).itemsize)


def blocks(array: Any, rows: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(start, stop, rows)`` for consecutive chunk-aligned blocks of the first ``rows`` rows."""
    step = block_rows(array) if rows else 1
    for lo in range(0, rows, step):
        hi = min(lo + step, rows)
        yield lo, hi, read(array, lo, hi)


class Cursor:
    """Hands out increasing row ranges of one array, decoding it forward chunk by chunk.

    Each chunk is read and decoded once, directly (``store.read_chunk``): zarr's
    ``Array.__getitem__`` ran the same codecs at about half the speed. The
    next ``AHEAD`` chunks are read and decoded ahead on a thread per CPU
    (Blosc releases the GIL), so a replay decodes on every core and a cold
    one reads the disk while it decodes. A cursor holds at most ``AHEAD + 1``
    decoded chunks besides the rows it handed out.
    """

    AHEAD = 2

    def __init__(self, array: Any, rows: int) -> None:
        self._array, self._rows = array, rows
        self._chunk = int(array.chunks[0])
        self._chunks = -(-rows // self._chunk)  # chunks holding the rows
        self._pieces: list[tuple[int, np.ndarray]] = []  # (first row, decoded chunk), ascending
        self._next = 0  # first row not read yet, at a chunk boundary
        self._ahead: dict[int, Future[np.ndarray]] = {}  # chunk -> its decoding

    def take(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` (``start`` never below an earlier ``start``); a read-only view when one chunk holds them."""
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
                self._ahead[k] = _decoders().submit(store.read_chunk, self._array, k, "the snapshot")
        return self._ahead.pop(c).result()


_DECODERS: tuple[int, ThreadPoolExecutor] | None = None


def _decoders() -> ThreadPoolExecutor:
    """The threads cursors decode on: one per CPU (at most ``config.MAX_CODEC_THREADS``), made afresh in a
    forked process (an executor inherited through ``fork`` has no threads)."""
    global _DECODERS
    if _DECODERS is None or _DECODERS[0] != os.getpid():
        workers = min(config.MAX_CODEC_THREADS, os.cpu_count() or 1)
        _DECODERS = (os.getpid(), ThreadPoolExecutor(workers, thread_name_prefix="snapstore-decode"))
    return _DECODERS[1]


class _FixedAsRagged:
    """A field stored with one row shape, read like a ragged one (lists of rows)."""

    def __init__(self, array: Any, rows: int) -> None:
        self._array = array
        self.shapes = np.tile(np.array(array.shape[1:], dtype=np.int64), (rows, 1))

    def read(self, start: int, stop: int) -> list[np.ndarray]:
        return list(read(self._array, start, stop))


def join(pieces: list[Rows]) -> Rows:
    """Row blocks of one field, in order: one array, or one list of ragged rows."""
    if len(pieces) == 1:
        return pieces[0]
    if isinstance(pieces[0], list):
        return [r for piece in pieces for r in piece]
    return np.concatenate(pieces)


def row_blocks(src: Source, paths: list[str]) -> Iterator[dict[str, Rows]]:
    """Consecutive blocks of rows in export order, ``{path: rows}`` aligned across fields.

    Fixed fields come as ``(n, *shape)`` arrays, ragged ones as lists of
    arrays. When every part is exported in stored order (seen rows, raw rows
    captured in index order), rows stream through per-part cursors; otherwise
    (raw samples captured out of index order) they are gathered window by
    window (``config.DEFAULT_GATHER_BYTES`` of rows), each window decoding
    every chunk that holds one of its rows.
    """
    if not paths or not src.rows:
        return
    ragged = {p for p in paths if src.is_ragged(p)}
    if src.sequential:
        yield from _streamed(src, paths, ragged)
        return
    row_bytes = sum(_row_bytes(src, p, p in ragged) for p in paths)
    window = max(1, config.DEFAULT_GATHER_BYTES // row_bytes)
    for lo in range(0, src.rows, window):
        part_of, local_of = src.part_of[lo : lo + window], src.local_of[lo : lo + window]
        out: dict[str, Rows] = {}
        for p in paths:
            pieces, where = [], []
            for k in np.unique(part_of).tolist():
                sel = np.nonzero(part_of == k)[0]
                part = src.parts[k]
                rows = local_of[sel]
                pieces.append(_gather_ragged(part.ragged(p), rows) if p in ragged else gather(part.fixed[p], rows, part.rows))
                where.append(sel)
            out[p] = _place(pieces, where, len(part_of))
        yield out


def _streamed(src: Source, paths: list[str], ragged: set[str]) -> Iterator[dict[str, Rows]]:
    live = [k for k, part in enumerate(src.parts) if part.rows]
    steps = [block_rows(src.parts[k].fixed[p]) for k in live for p in paths if p not in ragged]
    steps += [ragged_block_rows(src.infos[p], src.parts[k].ragged(p).shapes) for k in live for p in paths if p in ragged]
    step = min(steps)
    cursors = {(k, p): Cursor(src.parts[k].fixed[p], src.parts[k].rows) for k in live for p in paths if p not in ragged}
    readers = {(k, p): src.parts[k].ragged(p) for k in live for p in paths if p in ragged}
    # runs: maximal stretches of export positions stored consecutively in one part
    breaks = np.nonzero((np.diff(src.part_of) != 0) | (np.diff(src.local_of) != 1))[0] + 1
    starts = np.concatenate([[0], breaks]).astype(np.int64)
    ends = np.concatenate([breaks, [src.rows]]).astype(np.int64)
    for lo in range(0, src.rows, step):
        hi = min(lo + step, src.rows)
        first = int(np.searchsorted(ends, lo, side="right"))
        pieces: dict[str, list[Rows]] = {p: [] for p in paths}
        for r in range(first, len(starts)):
            a, b = max(lo, int(starts[r])), min(hi, int(ends[r]))
            if a >= b:
                break
            k, local = int(src.part_of[a]), int(src.local_of[a])
            for p in paths:
                if p in ragged:
                    pieces[p].append(readers[k, p].read(local, local + b - a))
                else:
                    pieces[p].append(cursors[k, p].take(local, local + b - a))
        yield {p: join(pieces[p]) for p in paths}


def _place(pieces: list[Rows], where: list[np.ndarray], n: int) -> Rows:
    """Rows gathered part by part, put back at their window positions ``where``."""
    if len(pieces) == 1:
        return pieces[0]
    if isinstance(pieces[0], list):
        out: list[Any] = [None] * n
        for piece, sel in zip(pieces, where):
            for k, r in zip(sel.tolist(), piece):
                out[k] = r
        return out
    block = np.empty((n, *pieces[0].shape[1:]), dtype=pieces[0].dtype)
    for piece, sel in zip(pieces, where):
        block[sel] = piece
    return block


def export_shapes(src: Source, path: str) -> np.ndarray:
    """Row shape of ``path`` at each export position (int64, (rows, ndim)), from the parts' readers."""
    out = np.zeros((src.rows, len(src.infos[path].shape)), dtype=np.int64)
    for k, part in enumerate(src.parts):
        sel = np.nonzero(src.part_of == k)[0]
        if len(sel):
            out[sel] = part.ragged(path).shapes[src.local_of[sel]]
    return out


def _row_bytes(src: Source, path: str, ragged: bool) -> int:
    part = next(p for p in src.parts if p.rows)
    if ragged:
        return _widest_bytes(src.infos[path], part.ragged(path).shapes)
    array = part.fixed[path]
    return max(1, math.prod(array.shape[1:]) * array.dtype.itemsize)


def gather(array: Any, rows: np.ndarray, committed: int) -> np.ndarray:
    """Stored rows ``rows`` (any order), decoding each chunk that holds one once."""
    chunk = int(array.chunks[0])
    out = np.empty((len(rows), *array.shape[1:]), dtype=array.dtype)
    which = rows // chunk
    for c in np.unique(which):
        sel = np.nonzero(which == c)[0]
        lo = int(c) * chunk
        out[sel] = read(array, lo, min(lo + chunk, committed))[rows[sel] - lo]
    return out


def _gather_ragged(reader: Any, rows: np.ndarray) -> list[np.ndarray]:
    """Stored ragged rows ``rows`` (any order), read in stored order so the reader's chunk cache serves them."""
    out: list[Any] = [None] * len(rows)
    for k in np.argsort(rows, kind="stable").tolist():
        r = int(rows[k])
        out[k] = reader.read(r, r + 1)[0]
    return out
