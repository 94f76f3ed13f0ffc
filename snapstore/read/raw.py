"""``RawSamples``: a stream's raw samples by dataset index."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from torch.utils.data import Dataset

from .. import storage
from ..core import layout
from ..core.manifest import RawManifest, StreamManifest, merge_ranks
from ..core.merkle import Coverage
from ..core.rows import no_rows, place
from ..errors import FieldNotFoundError
from ..storage.tree import array_at, group_at, raw_coverage
from .fields import FieldReaders, check_indices, expect, fill_hashes, stored_hashes
from .numpy import to_numpy
from .plan import Fields, RaggedMode, RowPlan, Segment, raw_positions

if TYPE_CHECKING:
    from .stream import Stream


class RawSamples(Dataset):
    """Raw samples by dataset index: ``raw[i]`` is ``dataset[i]`` as recorded (before transforms).

    ``len(raw)`` is the dataset's length (for iterable streams: the number
    recorded). ``raw.indices`` lists the recorded indices, sorted. Indexing an
    index that was never fetched raises ``KeyError``.
    """

    def __init__(self, stream: Stream, ranks: list[tuple[Any, str]]) -> None:
        """``ranks``: the stream group of each rank that recorded ``stream`` and its path (for messages)."""
        self._stream = stream
        self._sources: list[tuple[FieldReaders, np.ndarray]] = []  # one per rank that recorded raw samples
        self._groups: list[tuple[Any, Coverage | None]] = []  # the raw group of each source, and its commit record
        wheres = [f"{p}/{layout.RAW_GROUP}" for _, p in ranks]
        groups = [group_at(storage.members(g, p), layout.RAW_GROUP, p) for g, p in ranks]
        attrs = [g.attrs.get(layout.RAW_ATTR, {}) if g is not None else {} for g in groups]
        # the schema, read after the raw commit records, covers every committed raw row
        m = merge_ranks([StreamManifest.from_dict(storage.reread(g).attrs.get(layout.STREAM_ATTR), where=p,
                                                  name=stream.name)
                         for g, p in ranks])
        self.schema = m
        for (rank_group, _), group, a, where in zip(ranks, groups, attrs, wheres):
            committed = RawManifest.from_dict(a, where=where, stream=m)
            rows, ragged = committed.rows, committed.ragged
            coverage = raw_coverage(rank_group, group, where) if group is not None else None
            if rows:
                nodes = storage.members(group, where, recursive=True)
                fields = FieldReaders(nodes, layout.RAW_FIELDS, m.raw_structure, m.raw_fields, ragged, rows, where,
                                      coverage)
                index_array = array_at(nodes, layout.RAW_INDEX, where)
                reader = storage.ChunkReader(index_array, where, rows=rows, dtype=np.dtype(np.int64), row_shape=(),
                                             expect=expect(coverage, index_array))
                index = check_indices(reader.read(0, rows), m, f"{where}/{layout.RAW_INDEX}")
                self._sources.append((fields, index))
                self._groups.append((group, coverage))
        self._rows = sum(len(index) for _, index in self._sources)

    @cached_property
    def _where(self) -> dict[int, tuple[int, int]]:
        """Dataset index -> (source, row) of its first recording."""
        where: dict[int, tuple[int, int]] = {}
        for s, (_, index) in enumerate(self._sources):
            for r, i in enumerate(index.tolist()):
                where.setdefault(i, (s, r))
        return where

    @cached_property
    def indices(self) -> np.ndarray:
        """Dataset indices with a recorded raw sample, ascending (int64)."""
        return np.array(sorted(self._where), dtype=np.int64)

    def __len__(self) -> int:
        n = self._stream.manifest.dataset_len
        return n if n is not None else len(self._where)

    def __getitem__(self, index: int) -> Any:
        where = self._where.get(int(index))
        if where is None:
            raise KeyError(f"no raw sample of dataset index {index} in stream {self._stream.name!r}: "
                           "no epoch fetched it")
        fields, _ = self._sources[where[0]]
        return fields.build(fields.read(where[1], where[1] + 1), batched=False)

    def to_numpy(self, *, fields: Fields = None, out: Mapping[str, np.ndarray] | None = None,
                 ragged: RaggedMode = "list") -> dict[str, Any]:
        """Raw samples in dataset-index order, one array per field.

        Raw rows are stored in the order they were first captured; each
        stored chunk is read once and its rows scattered to their place in
        index order, so memory stays at one block beyond the result.

        Parameters
        ----------
        fields : list of str, optional
            Raw field paths to export (``stream.manifest.raw_fields``); all by default.
        out : dict of str to ndarray, optional
            Preallocated destinations (arrays or ``numpy.memmap``) for some or
            all keys, e.g. to export more than fits in memory; the rest is
            allocated. Shapes and dtypes: ``snapstore.export.out_specs(raw)``.
        ragged : {"list", "pad"}, default "list"
            Ragged fields (rows of differing shapes): a list of row arrays, or
            zero-padded to the widest row plus ``"<field>.lengths"`` (int64,
            (n,) for one varying dimension, else (n, varying dimensions)).

        Returns
        -------
        dict of str to ndarray or list
            ``"index"``: int64, (n,), the recorded dataset indices ascending;
            each field: ``(n, *row_shape)`` in its stored dtype (``StringDType``
            for strings, ``uint16`` bit patterns for bfloat16), or a list of n
            arrays for a ragged field with ``ragged="list"``; the ``out``
            arrays themselves where given.

        Raises
        ------
        UsageError
            An unknown field, or an ``out`` array of the wrong shape or dtype.
        CorruptionError
            A chunk fails to decode or its checksum.
        """
        return to_numpy(self, fields=fields, out=out, ragged=ragged)

    def to_dask(self, fields: Fields = None) -> dict[str, Any]:
        """Raw samples as ``dask.array``s, in stored (capture) order, chunk-aligned.

        Unlike ``to_numpy``, rows stay in the order they were captured: index
        order would make every dask chunk gather from every stored chunk.
        ``"index"`` holds the dataset index of each row; for index order,
        ``x[np.argsort(index.compute())]`` (a full shuffle in dask).

        Parameters
        ----------
        fields : list of str, optional
            Raw field paths; all by default.

        Returns
        -------
        dict of str to dask.array.Array
            ``"index"``: int64, (n,); each field ``(n, *row_shape)``; dask
            chunks are the stored chunks, limited to the committed rows.

        Raises
        ------
        SnapstoreError
            Dask is not installed (``pip install 'snapstore[dask]'``).
        SchemaError
            A selected field is ragged (a dask array needs one row shape).
        """
        from ..export.dask import to_dask  # Dask is optional

        return to_dask(self, fields)

    def row_plan(self) -> RowPlan:
        """Where each raw sample is stored, in dataset-index order: what exports read."""
        m = self._stream.manifest
        segments = [Segment(len(index), fields.readers, np.asarray(index, dtype=np.int64))
                    for fields, index in self._sources]
        segment_of, local_of, export_index = raw_positions(segments)
        return RowPlan(f"raw samples of stream {m.name!r}", m.raw_structure or {"type": "none"}, dict(m.raw_fields),
                       segments, segment_of, local_of, export_index, raw=True, batched=False)

    def _check_field(self, field: str) -> None:
        if field not in self.schema.raw_fields:
            raise FieldNotFoundError(f"no raw field {field!r} in stream {self._stream.name!r}; "
                                     f"raw fields: {list(self.schema.raw_fields)}")

    def _by_source(self, indices: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """``(source, which of indices, rows in that source)`` for recorded dataset ``indices``."""
        located = []
        for i in indices.tolist():
            where = self._where.get(i)
            if where is None:
                raise KeyError(f"no raw sample of dataset index {i} in stream {self._stream.name!r}: "
                               "no epoch fetched it")
            located.append(where)
        src = np.array([s for s, _ in located], dtype=np.int64)
        rows = np.array([r for _, r in located], dtype=np.int64)
        return [(int(s), np.nonzero(src == s)[0], rows[src == s]) for s in np.unique(src)]

    def hashes(self, field: str) -> np.ndarray:
        """Content hash (xxh3_64, see ``snapstore.hashing``) of each raw sample's ``field``.

        Returns
        -------
        ndarray of uint64, shape (len(indices),)
            Aligned with ``indices`` (ascending dataset index).

        Raises
        ------
        KeyError
            No such raw field.
        CorruptionError
            A chunk of the hashes (or, for snapshots without stored hashes, of
            the data) fails to decode.
        """
        self._check_field(field)
        out = np.empty(len(self.indices), dtype=np.uint64)
        for s, which, rows in self._by_source(self.indices):
            fields, index = self._sources[s]
            group, coverage = self._groups[s]
            stored = stored_hashes(group, layout.raw_hashes_path(field), len(index), coverage)
            out[which] = fill_hashes(stored[rows], lambda k, f=fields, r=rows: f.readers[field].gather(r[k]))
        return out

    def gather(self, field: str, indices: npt.ArrayLike) -> np.ndarray | list[np.ndarray]:
        """Rows of raw field ``field`` for dataset ``indices`` (any order): shape (n, *row_shape), or a
        list of arrays for a ragged field. ``KeyError`` for an unknown field or an index without a raw sample."""
        self._check_field(field)
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        parts, where = [], []
        for s, which, rows in self._by_source(idx):
            parts.append(self._sources[s][0].readers[field].gather(rows))
            where.append(which)
        return place(parts, where, len(idx)) if parts else no_rows(self.schema.raw_fields[field])
