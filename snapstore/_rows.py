"""Committed rows read forward in chunk-aligned blocks: the reading side of every export.

A ``Source`` is what one export reads: an epoch's seen fields or a stream's
raw samples, limited to the committed rows. Fixed-shape fields are read in
blocks of whole chunks of about ``config.DEFAULT_EXPORT_BLOCK_BYTES``;
ragged fields (``FieldInfo.ragged``) row by row in blocks through their
reader. Raw rows are stored in capture order; ``Source.dest()`` says where
each lands in dataset-index order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
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
class Source:
    """The committed rows of an epoch's seen fields or of a stream's raw samples."""

    what: str  # for messages: "stream 'train' epoch 1", "raw samples of stream 'train'"
    rows: int
    structure: Structure
    infos: dict[str, FieldInfo]
    fixed: dict[str, Any]  # field path -> stored (rows, *shape) array, for fields stored with one shape
    stored_ragged: dict[str, Any]  # field path -> store.RaggedReader, for fields stored ragged
    index: np.ndarray  # dataset index of each stored row, int64 (rows,)
    index_array: Any  # the stored array ``index`` comes from, or None when nothing is committed
    raw: bool  # exports put raw rows in dataset-index order

    def is_ragged(self, path: str) -> bool:
        """Rows of ``path`` may differ in shape (stored ragged here, or ragged in another epoch)."""
        return self.infos[path].ragged or path in self.stored_ragged

    def ragged(self, path: str) -> Any:
        """A reader of ``path``'s rows as lists of arrays, with ``shapes`` (int64, (rows, ndim))."""
        reader = self.stored_ragged.get(path)
        return reader if reader is not None else _FixedAsRagged(self.fixed[path], self.rows)

    @property
    def shuffled(self) -> bool:
        """Raw rows stored out of dataset-index order, so exports must reorder them."""
        return self.raw and not bool(np.all(self.index[1:] >= self.index[:-1]))

    def dest(self) -> np.ndarray | None:
        """Export position of each stored row (int64, (rows,)), or None when it is the stored position."""
        if not self.shuffled:
            return None
        dest = np.empty(self.rows, dtype=np.int64)
        dest[np.argsort(self.index, kind="stable")] = np.arange(self.rows)
        return dest

    @property
    def export_index(self) -> np.ndarray:
        """Dataset index of each exported row: sorted for raw samples, the order for seen rows."""
        return np.sort(self.index, kind="stable") if self.raw else self.index


def source(obj: Epoch | RawSamples) -> Source:
    """The ``Source`` of an ``Epoch`` (seen rows) or a ``RawSamples`` (raw samples)."""
    from .reader import Epoch, RawSamples, _node  # reader imports the exports: import it when called

    if isinstance(obj, Epoch):
        m = obj.stream.manifest
        fields, rows, group, name = obj._seen, len(obj), obj._group, layout.ORDER
        what, structure, infos, index = f"stream {m.name!r} epoch {obj.number}", m.structure, m.fields, obj.order
        where = obj._what
    elif isinstance(obj, RawSamples):
        m = obj._stream.manifest
        fields, rows, group, name = obj._fields, obj._rows, obj._group, layout.RAW_INDEX
        what, structure, infos, index = f"raw samples of stream {m.name!r}", m.raw_structure, m.raw_fields, obj._index
        where = obj._stream.path
    else:
        raise UsageError(f"exports read an Epoch or a stream's RawSamples, not a {type(obj).__name__}")
    readers = fields.readers if fields is not None else {}
    return Source(
        what=what, rows=rows, structure=structure or {"type": "none"}, infos=dict(infos),
        fixed={p: r.array for p, r in readers.items() if isinstance(r, store.ChunkReader)},
        stored_ragged={p: r for p, r in readers.items() if not isinstance(r, store.ChunkReader)},
        index=index, index_array=_node(group, name, where) if rows else None, raw=isinstance(obj, RawSamples),
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

    Decode or checksum failures become ``CorruptionError`` naming the array and rows.
    """
    try:
        return array[(slice(start, stop), *rest)]
    except (ValueError, RuntimeError, OSError) as e:
        raise CorruptionError(
            f"rows {start}-{stop - 1} of array {array.path!r} cannot be read: {e}; the file is damaged: restore it "
            "from a copy, or run `snapstore audit` to list every damaged chunk"
        ) from e


def block_rows(array: Any) -> int:
    """Rows per read: whole chunks, about ``config.DEFAULT_EXPORT_BLOCK_BYTES``, at least one chunk."""
    chunk = int(array.chunks[0])
    row_bytes = max(1, math.prod(array.shape[1:]) * array.dtype.itemsize)
    return chunk * max(1, config.DEFAULT_EXPORT_BLOCK_BYTES // (chunk * row_bytes))


def ragged_block_rows(info: FieldInfo, shapes: np.ndarray) -> int:
    """Rows per read of a ragged field: about ``DEFAULT_EXPORT_BLOCK_BYTES`` of its widest rows."""
    widest = int(np.prod(shapes, axis=1, dtype=np.int64).max(initial=1)) if len(shapes) else 1
    return max(1, config.DEFAULT_EXPORT_BLOCK_BYTES // max(1, widest * numpy_dtype(info.dtype).itemsize))


def blocks(array: Any, rows: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(start, stop, rows)`` for consecutive chunk-aligned blocks of the first ``rows`` rows."""
    step = block_rows(array) if rows else 1
    for lo in range(0, rows, step):
        hi = min(lo + step, rows)
        yield lo, hi, read(array, lo, hi)


class Cursor:
    """Hands out consecutive row ranges of one array, reading it forward in chunk-aligned blocks."""

    def __init__(self, array: Any, rows: int) -> None:
        self._array, self._rows = array, rows
        self._step = block_rows(array)
        self._pieces: list[tuple[int, np.ndarray]] = []  # (first row, block), ascending
        self._next = 0  # first row not read yet

    def take(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` (``start`` never below an earlier ``start``); a view when one block holds them."""
        self._pieces = [(lo, b) for lo, b in self._pieces if lo + len(b) > start]
        while self._next < stop:
            hi = min(self._next + self._step, self._rows)
            self._pieces.append((self._next, read(self._array, self._next, hi)))
            self._next = hi
        parts = [b[max(start - lo, 0) : stop - lo] for lo, b in self._pieces if lo < stop]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


class _FixedAsRagged:
    """A field stored with one row shape, read like a ragged one (lists of rows)."""

    def __init__(self, array: Any, rows: int) -> None:
        self._array = array
        self.shapes = np.tile(np.array(array.shape[1:], dtype=np.int64), (rows, 1))

    def read(self, start: int, stop: int) -> list[np.ndarray]:
        return list(read(self._array, start, stop))


def row_blocks(src: Source, paths: list[str]) -> Iterator[dict[str, Rows]]:
    """Consecutive blocks of rows in export order, ``{path: rows}`` aligned across fields.

    Fixed fields come as ``(n, *shape)`` arrays, ragged ones as lists of
    arrays. Seen rows, and raw rows captured in index order, stream through
    cursors. Raw rows captured out of order are gathered window by window
    (``config.DEFAULT_GATHER_BYTES`` of rows): each window decodes every
    chunk that holds one of its rows.
    """
    if not paths or not src.rows:
        return
    ragged = {p: src.ragged(p) for p in paths if src.is_ragged(p)}
    fixed = [p for p in paths if p not in ragged]
    if not src.shuffled:
        step = min([block_rows(src.fixed[p]) for p in fixed] + [ragged_block_rows(src.infos[p], r.shapes) for p, r in ragged.items()])
        cursors = {p: Cursor(src.fixed[p], src.rows) for p in fixed}
        for lo in range(0, src.rows, step):
            hi = min(lo + step, src.rows)
            yield {p: cursors[p].take(lo, hi) if p in cursors else ragged[p].read(lo, hi) for p in paths}
        return
    stored = np.argsort(src.index, kind="stable")  # stored row at each export position
    row_bytes = sum(_row_bytes(src, p, ragged.get(p)) for p in paths)
    window = max(1, config.DEFAULT_GATHER_BYTES // row_bytes)
    for lo in range(0, src.rows, window):
        rows = stored[lo : lo + window]
        yield {p: _gather_ragged(ragged[p], rows) if p in ragged else gather(src.fixed[p], rows, src.rows) for p in paths}


def _row_bytes(src: Source, path: str, reader: Any) -> int:
    itemsize = numpy_dtype(src.infos[path].dtype).itemsize
    if reader is None:
        return max(1, math.prod(src.fixed[path].shape[1:]) * itemsize)
    return max(1, int(np.prod(reader.shapes, axis=1, dtype=np.int64).max(initial=1)) * itemsize)


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
