"""Where each row lives: the plan every export, replay and gather of committed rows follows.

An export reads an epoch's seen rows or a stream's raw samples. Those rows
are stored in one or more *segments* (the pieces of an epoch recorded by
several ranks or continued after a resume, each rank's raw samples), each
with a reader per field. A ``RowPlan`` says which segment and row holds the
row at each export position; ``Epoch.row_plan`` and ``RawSamples.row_plan``
build it, and nothing else looks inside those objects.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import numpy as np

from .. import config, storage
from ..core.manifest import FieldInfo, numpy_dtype
from ..core.rows import no_rows, place
from ..core.schema import Structure, leaf_paths, rebuild_leaf, unflatten
from ..errors import FieldNotFoundError, SchemaError

__all__ = ["Fields", "RaggedMode", "RowPlan", "Segment", "block_rows", "export_shapes", "gather",
           "ragged_block_rows", "raw_positions", "refuse_ragged", "row_bytes", "select"]

Reader = storage.ChunkReader | storage.RaggedReader

Fields = str | Sequence[str] | None
"""Which fields an export takes: one path, several, or ``None`` for every field."""

RaggedMode = Literal["list", "pad"]
"""How exports return ragged fields: lists of row arrays, or zero-padded with their lengths."""


@dataclass(frozen=True)
class Segment:
    """Rows stored together: their count, a reader per field, and the dataset index of each.

    ``readers`` maps a field path to a ``storage.ChunkReader`` (a field stored
    with one row shape) or a ``storage.RaggedReader`` (stored ragged).
    ``index`` is int64, shape (rows,).
    """

    rows: int
    readers: dict[str, Reader]
    index: np.ndarray

    def fixed(self, path: str) -> storage.ChunkReader:
        """The reader of a field stored with one row shape."""
        return cast(storage.ChunkReader, self.readers[path])

    def ragged(self, path: str) -> Any:
        """A reader of ``path``'s rows as lists of arrays, with ``shapes`` (int64, (rows, ndim))."""
        reader = self.readers[path]
        return reader if isinstance(reader, storage.RaggedReader) else _FixedAsRagged(reader, self.rows)

    def stored_ragged(self, path: str) -> bool:
        return isinstance(self.readers.get(path), storage.RaggedReader)


class _FixedAsRagged:
    """A field stored with one row shape, read like a ragged one (lists of rows)."""

    def __init__(self, reader: storage.ChunkReader, rows: int) -> None:
        self._reader = reader
        self.shapes = np.tile(np.array(reader.array.shape[1:], dtype=np.int64), (rows, 1))

    def read(self, start: int, stop: int) -> list[np.ndarray]:
        return list(self._reader.read(start, stop))

    def gather(self, positions: np.ndarray) -> list[np.ndarray]:
        return list(self._reader.gather(positions))


@dataclass(frozen=True)
class RowPlan:
    """The rows one export reads, in export order (seen order, or dataset-index order for raw samples).

    Attributes
    ----------
    what : str
        For messages: ``"stream 'train' epoch 1"``, ``"raw samples of stream 'train'"``.
    structure, infos
        The stream's batch (or raw sample) structure and its fields.
    segments : list of Segment
    segment_of, local_of : ndarray of int64, shape (rows,)
        Segment, and row within it, of the row at each export position.
    export_index : ndarray of int64, shape (rows,)
        Dataset index at each export position.
    raw : bool
        Raw samples (dataset-index order) rather than seen rows.
    batched : bool
        Rows were yielded in batches (``False``: a ``batch_size=None`` loader).
    batches : list of (segment, start, stop)
        An epoch's batches in the order the loader yielded them; empty for raw samples.
    references : bool
        Some seen rows are read from the raw samples of their index (segments after the epoch's pieces),
        where they are stored once (``layout.SEEN_RAW``); such a raw row may be read at several positions.
    """

    what: str
    structure: Structure
    infos: dict[str, FieldInfo]
    segments: list[Segment]
    segment_of: np.ndarray
    local_of: np.ndarray
    export_index: np.ndarray
    raw: bool
    batched: bool = True
    batches: Sequence[tuple[int, int, int]] = field(default_factory=list)
    references: bool = False

    @property
    def rows(self) -> int:
        return len(self.segment_of)

    def is_ragged(self, path: str) -> bool:
        """Rows of ``path`` may differ in shape (stored ragged somewhere, or ragged in the stream's schema)."""
        return self.infos[path].ragged or any(s.stored_ragged(path) for s in self.segments)

    def build(self, rows: dict[str, Any], batched: bool) -> Any:
        """A batch (``batched``) or one row rebuilt from ``{path: rows}`` with the recorded structure and types."""
        return unflatten(self.structure, lambda p: rebuild_leaf(self.infos[p], rows[p], batched))

    def dest(self, k: int) -> np.ndarray | slice:
        """Export position of each stored row of segment ``k``: a slice when they are consecutive, else an
        int64 array with -1 for rows not exported (a raw sample also recorded by an earlier rank)."""
        segment = self.segments[k]
        if len(self.segments) == 1 and np.array_equal(self.local_of, np.arange(segment.rows)):
            return slice(0, segment.rows)
        dest = np.full(segment.rows, -1, dtype=np.int64)
        mine = np.nonzero(self.segment_of == k)[0]
        dest[self.local_of[mine]] = mine
        return dest

    @property
    def sequential(self) -> bool:
        """Every segment's rows appear in export order in the order they are stored, so exports can stream."""
        return all(bool(np.all(np.diff(self.local_of[self.segment_of == k]) > 0)) for k in range(len(self.segments)))

    @property
    def concatenated(self) -> bool:
        """Export order is the segments' rows one segment after the other (so Dask can concatenate them)."""
        expected = np.concatenate([np.arange(s.rows) for s in self.segments] or [np.empty(0, np.int64)])
        return bool(np.all(np.diff(self.segment_of) >= 0)) and np.array_equal(self.local_of, expected)


def raw_positions(segments: list[Segment]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(segment_of, local_of, export_index)`` of raw samples in dataset-index order, each index once
    (the first recording of an index recorded by several ranks)."""
    empty = [np.empty(0, np.int64)]
    every = np.concatenate([s.index for s in segments] or empty)
    which = np.concatenate([np.full(s.rows, k, dtype=np.int64) for k, s in enumerate(segments)] or empty)
    row = np.concatenate([np.arange(s.rows, dtype=np.int64) for s in segments] or empty)
    by_index = np.argsort(every, kind="stable")  # ties keep segment and row order: the first recording comes first
    first = np.ones(len(by_index), dtype=bool)
    first[1:] = every[by_index][1:] != every[by_index][:-1]
    keep = by_index[first]
    return which[keep], row[keep], every[keep]


def gather(plan: RowPlan, paths: list[str], positions: np.ndarray) -> dict[str, Any]:
    """Rows of ``paths`` at export ``positions`` (int64, (n,), any order): ``(n, *shape)`` arrays, lists of arrays
    for ragged fields; each chunk holding one of them is decoded once."""
    positions = np.asarray(positions, dtype=np.int64)
    segment_of, local_of = plan.segment_of[positions], plan.local_of[positions]
    out: dict[str, Any] = {}
    for p in paths:
        pieces, where = [], []
        for k in np.unique(segment_of).tolist():
            sel = np.nonzero(segment_of == k)[0]
            segment = plan.segments[k]
            reader = segment.ragged(p) if plan.is_ragged(p) else segment.fixed(p)
            pieces.append(reader.gather(local_of[sel]))
            where.append(sel)
        out[p] = place(pieces, where, len(positions)) if pieces else no_rows(plan.infos[p])
    return out


def select(plan: RowPlan, fields: Fields) -> list[str]:
    """Requested field paths in structure order; every field when ``fields`` is None.

    Raises ``FieldNotFoundError`` naming unknown paths and the known ones.
    """
    every = [p for p in leaf_paths(plan.structure) if p in plan.infos]
    if fields is None:
        return every
    wanted = [fields] if isinstance(fields, str) else list(fields)
    unknown = [f for f in wanted if f not in plan.infos]
    if unknown:
        raise FieldNotFoundError(f"no field {', '.join(map(repr, unknown))} in {plan.what}; its fields are {every}")
    return [p for p in every if p in wanted]


def refuse_ragged(plan: RowPlan, paths: list[str], what: str) -> None:
    """``SchemaError`` when a field in ``paths`` is ragged, which ``what`` cannot hold."""
    ragged = [p for p in paths if plan.is_ragged(p)]
    if ragged:
        raise SchemaError(f"fields {ragged} of {plan.what} are ragged (rows differ in shape), which {what} "
                          "cannot hold; pass fields=[...] without them, or use to_numpy(ragged='pad') "
                          "or to_numpy(ragged='list')")


def block_rows(reader: storage.ChunkReader) -> int:
    """Rows per read: whole chunks, about ``config.DEFAULT_EXPORT_BLOCK_BYTES``, at least one chunk."""
    array = reader.array
    chunk = int(array.chunks[0])
    row = max(1, math.prod(array.shape[1:]) * array.dtype.itemsize)
    return chunk * max(1, config.DEFAULT_EXPORT_BLOCK_BYTES // (chunk * row))


def ragged_block_rows(info: FieldInfo, shapes: np.ndarray) -> int:
    """Rows per read of a ragged field: about ``DEFAULT_EXPORT_BLOCK_BYTES`` of its widest rows."""
    return max(1, config.DEFAULT_EXPORT_BLOCK_BYTES // _widest_bytes(info, shapes))


def _widest_bytes(info: FieldInfo, shapes: np.ndarray) -> int:
    widest = int(np.prod(shapes, axis=1, dtype=np.int64).max(initial=1)) if len(shapes) else 1
    return max(1, widest * numpy_dtype(info.dtype).itemsize)


def export_shapes(plan: RowPlan, path: str) -> np.ndarray:
    """Row shape of ``path`` at each export position (int64, (rows, ndim)), from the segments' readers."""
    out = np.zeros((plan.rows, len(plan.infos[path].shape)), dtype=np.int64)
    for k, segment in enumerate(plan.segments):
        sel = np.nonzero(plan.segment_of == k)[0]
        if len(sel):
            out[sel] = segment.ragged(path).shapes[plan.local_of[sel]]
    return out


def row_bytes(plan: RowPlan, path: str, ragged: bool) -> int:
    """Bytes of one row of ``path`` (its widest row when ragged)."""
    segment = next(s for s in plan.segments if s.rows and path in s.readers)  # an epoch's rows may all be raw rows
    if ragged:
        return _widest_bytes(plan.infos[path], segment.ragged(path).shapes)
    array = segment.fixed(path).array
    return max(1, math.prod(array.shape[1:]) * array.dtype.itemsize)
