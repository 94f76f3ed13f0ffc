"""``Epoch``: one recorded pass over a loader, stitched across ranks and resumes."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import cached_property
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt

from .. import storage
from ..core import hashing, layout
from ..core.manifest import EpochManifest, numpy_dtype
from ..core.merkle import Coverage, parse_chunks
from ..core.rows import join, no_rows, place
from ..core.schema import rebuild_leaf, unflatten
from ..errors import CorruptionError, FieldNotFoundError, NotStoredError
from ..storage.tree import array_at
from .fields import FieldReaders, check_indices, expect, fill_hashes, row_shape
from .numpy import to_numpy
from .plan import Fields, RaggedMode, RowPlan, Segment, gather, select
from .replay import ReplayLoader
from .where import piece_positions

if TYPE_CHECKING:
    from .stream import Stream


class Piece:
    """One recorded piece of an epoch: a rank's epoch group, or a continuation after a resume."""

    def __init__(self, stream: Stream, group: Any, rank: int, what: str, number: int, part: int) -> None:
        self.group = group
        self.rank = rank
        m = stream.manifest  # read after this commit record (Stream.epoch): it covers its rows
        self.manifest = EpochManifest.from_dict(group.attrs.get(layout.EPOCH_ATTR), where=what, number=number,
                                                part=part, stream=m)
        self.rows = self.manifest.rows
        self.what = what
        self.coverage = Coverage(parse_chunks(group.attrs.get(layout.EPOCH_ATTR), what), group.path, what)
        # the nodes listed after the commit record was read: every array it covers is there
        self.nodes = (storage.members(group, what, recursive=True, exclude=(layout.CONTINUED_GROUP,))
                      if self.rows or self.manifest.batches else {})
        policy = self.manifest.seen
        self.full: np.ndarray | None = None  # where the seen row is stored in full; None: every row
        if policy.mode == "hash":
            self.full = np.zeros(self.rows, dtype=bool)
        elif policy.mode == "sampled":
            self.full = self.array(layout.FULL, self.rows, np.uint8, 0).astype(bool)
        # where the seen row is its raw sample, stored in raw/ only (layout.SEEN_RAW); None: no such row
        self.same: np.ndarray | None = None
        if self.rows and layout.SEEN_RAW in self.nodes:
            self.same = self.array(layout.SEEN_RAW, self.rows, np.uint8).astype(bool)
        in_seen = np.ones(self.rows, dtype=bool) if self.full is None else self.full
        stored = bool((in_seen & ~self.same).any()) if self.same is not None else bool(in_seen.any())
        self.seen = (FieldReaders(self.nodes, layout.SEEN_GROUP, m.structure, m.fields, self.manifest.ragged,
                                  self.rows, what, self.coverage) if self.rows and stored else None)

    def array(self, name: str, n: int, dtype: Any = np.int64, fill: Any = None) -> np.ndarray:
        """The first ``n`` entries of a per-position (or per-batch) array; ``fill`` when it does not exist."""
        if n == 0:
            return np.empty(0, dtype=dtype)
        if name not in self.nodes and fill is not None:
            return np.full(n, fill, dtype=dtype)
        array = array_at(self.nodes, name, self.what)
        return storage.ChunkReader(array, self.what, rows=n, dtype=np.dtype(dtype), row_shape=(),
                                   expect=expect(self.coverage, array)).read(0, n)

    def batch_sizes(self) -> np.ndarray:
        """Rows of each committed batch; ``CorruptionError`` unless they add up to the committed rows."""
        sizes = self.array(layout.BATCH_SIZES, self.manifest.batches)
        if (sizes < 0).any() or int(sizes.sum()) != self.rows:
            raise CorruptionError.damaged(
                f"{self.what}: its {len(sizes)} batch sizes add up to {int(sizes.sum())} rows, but the commit record "
                f"says {self.rows}")
        return sizes


def _interleave(per_rank: list[list[tuple[int, int, int]]]) -> list[tuple[int, int, int]]:
    """Batches of all ranks in step order: batch j of rank 0, of rank 1, ..., then batch j + 1."""
    out: list[tuple[int, int, int]] = []
    for j in range(max((len(b) for b in per_rank), default=0)):
        out.extend(b[j] for b in per_rank if j < len(b))
    return out


class Epoch:
    """One recorded pass over a stream's loader.

    Positions run over the batches in the order the loop saw them. An epoch
    cut by a crash and continued after a resume (``wrap(resume_epoch=True)``)
    is stitched: the continuation's rows follow the rows committed before the
    crash. With several ranks, step ``j`` holds batch ``j`` of every rank, in
    rank order.
    """

    def __init__(self, stream: Stream, ranks: list[list[Piece]]) -> None:
        self.stream = stream
        self.schema = stream.manifest  # read after this epoch's commit records (Stream.epoch)
        self._pieces = [p for parts in ranks for p in parts]
        self.manifest = self._pieces[0].manifest
        self.number = self.manifest.number
        batches: list[list[tuple[int, int, int]]] = []
        k = 0
        for parts in ranks:
            mine: list[tuple[int, int, int]] = []
            for part in parts:
                ends = np.cumsum(part.batch_sizes())
                mine.extend((k, int(lo), int(hi)) for lo, hi in zip([0, *ends[:-1].tolist()], ends.tolist()))
                k += 1
            batches.append(mine)
        self._batches = _interleave(batches)
        self._complete = all(parts[-1].manifest.complete for parts in ranks)

    def __len__(self) -> int:
        return sum(p.rows for p in self._pieces)

    @property
    def complete(self) -> bool:
        """False for an epoch cut short (a crash, an exception, a ``break``) and not continued to its end."""
        return self._complete

    @property
    def provenance(self) -> dict[str, Any]:
        """Loader configuration, sampler state, seeds, versions and host at epoch start."""
        return self.manifest.provenance

    @property
    def parts(self) -> list[EpochManifest]:
        """Manifests of the pieces this epoch was recorded in (ranks, resumes)."""
        return [p.manifest for p in self._pieces]

    @cached_property
    def _map(self) -> tuple[np.ndarray, np.ndarray]:
        """(part, local position) of each position."""
        if len(self._pieces) == 1:
            return np.zeros(len(self), dtype=np.int64), np.arange(len(self), dtype=np.int64)
        part = np.concatenate([np.full(hi - lo, k, dtype=np.int64) for k, lo, hi in self._batches]
                              or [np.empty(0, np.int64)])
        local = np.concatenate([np.arange(lo, hi, dtype=np.int64) for _, lo, hi in self._batches]
                               or [np.empty(0, np.int64)])
        return part, local

    def _per_position(self, name: str, dtype: Any = np.int64, fill: Any = None) -> np.ndarray:
        return self._in_position_order([p.array(name, p.rows, dtype, fill) for p in self._pieces])

    def _in_position_order(self, arrays: list[np.ndarray]) -> np.ndarray:
        """One per-row array from each part's, reordered to the epoch's positions."""
        if len(arrays) == 1:
            return arrays[0]
        part, local = self._map
        offsets = np.concatenate([[0], np.cumsum([p.rows for p in self._pieces])])
        return np.concatenate(arrays)[offsets[part] + local]

    @cached_property
    def full(self) -> np.ndarray:
        """Whether the seen row at each position is stored in full (bool, (rows,)); rows recorded with
        ``seen="hash"``, or left out by a sampling policy, have content hashes only."""
        if all(p.full is None for p in self._pieces):
            return np.ones(len(self), dtype=bool)
        return self._in_position_order([np.ones(p.rows, dtype=bool) if p.full is None else p.full
                                        for p in self._pieces])

    def _require_full(self, positions: np.ndarray | slice, what: str) -> None:
        """``NotStoredError`` unless every seen row at ``positions`` is stored in full."""
        if all(p.full is None for p in self._pieces):
            return
        missing = np.flatnonzero(~self.full[positions])
        if len(missing) == 0:
            return
        first = int(missing[0] + (positions.start or 0) if isinstance(positions, slice) else positions[missing[0]])
        policies = sorted({p.manifest.seen.describe() for p in self._pieces})
        stored = int(self.full.sum())
        raise NotStoredError(
            f"{what} of epoch {self.number} of stream {self.stream.name!r}: the seen row at position {first} (and "
            f"{len(missing) - 1} more) was recorded with {' and '.join(policies)} and is stored as content hashes "
            f"only ({stored} of {len(self)} rows of this epoch are stored in full: epoch.full); order, batch_sizes, "
            "hashes(), outputs and stream.where() work for every row, and snapstore.verify(epoch, loader) checks "
            "a rerun against the hashes")

    @cached_property
    def order(self) -> np.ndarray:
        """Dataset index at each position, in the order the model saw them (int64, (rows,))."""
        return check_indices(self._per_position(layout.ORDER), self.stream.manifest,
                             f"{self._pieces[0].what}/{layout.ORDER}")

    @cached_property
    def batch_sizes(self) -> np.ndarray:
        """Rows of each yielded batch (int64, (batches,)); 1 per item for ``batch_size=None``."""
        return np.array([hi - lo for _, lo, hi in self._batches], dtype=np.int64)

    @cached_property
    def ranks(self) -> np.ndarray:
        """Rank that saw each position (int64, (rows,)); all 0 without torch.distributed."""
        part, _ = self._map
        return np.array([p.rank for p in self._pieces], dtype=np.int64)[part]

    @cached_property
    def workers(self) -> np.ndarray:
        """Loader worker that fetched each position (int32, (rows,)); -1 for the main process.

        For an iterable stream with ``W`` workers, ``order // W`` is the item's
        position in its worker's stream.
        """
        return self._per_position(layout.WORKER, np.int32, -1)

    @cached_property
    def base_order(self) -> np.ndarray:
        """Index into the innermost dataset at each position (int64, (rows,)).

        Differs from ``order`` when the loader's dataset is a ``Subset`` or
        ``ConcatDataset`` (nested too); ``base_dataset`` says which innermost
        dataset (``stream.manifest.base_datasets``) each row came from.
        """
        if layout.BASE_ORDER not in self._pieces[0].nodes:
            return self.order
        return self._per_position(layout.BASE_ORDER)

    @cached_property
    def base_dataset(self) -> np.ndarray:
        """Position in ``stream.manifest.base_datasets`` of each row's innermost dataset (int32, (rows,))."""
        return self._per_position(layout.BASE_DATASET, np.int32, 0)

    @cached_property
    def _references(self) -> bool:
        """Some seen rows are stored as their raw sample (``layout.SEEN_RAW``)."""
        return any(p.same is not None and p.same.any() for p in self._pieces)

    def _rows(self, start: int, stop: int) -> dict[str, Any]:
        """Seen rows of positions ``start:stop``, field by field."""
        self._require_full(slice(start, stop), "reading seen rows")
        if self._references:
            return gather(self._plan, select(self._plan, None), np.arange(start, stop))
        if len(self._pieces) == 1:
            return self._pieces[0].seen.read(start, stop)  # type: ignore[union-attr]
        part, local = self._map
        runs, k = [], start
        while k < stop:  # maximal runs of consecutive local positions in one part
            end = k + 1
            while end < stop and part[end] == part[k] and local[end] == local[end - 1] + 1:
                end += 1
            runs.append(self._pieces[part[k]].seen.read(int(local[k]), int(local[end - 1]) + 1))  # type: ignore[union-attr]
            k = end
        return {p: join([run[p] for run in runs]) for p in runs[0]} if runs else {}

    def row_plan(self) -> RowPlan:
        """Where each seen row of this epoch is stored, in seen order: what exports and replay read."""
        self._require_full(slice(0, len(self)), "exporting or replaying the seen rows")
        return self._plan

    @cached_property
    def _plan(self) -> RowPlan:
        """``row_plan`` without the check that every row is stored: rows stored as their raw sample are read
        from the raw rows of their rank (segments after the pieces')."""
        m = self.stream.manifest
        single = len(self._pieces) == 1
        segments = [Segment(p.rows, p.seen.readers if p.seen is not None else {},
                            self.order if single else p.array(layout.ORDER, p.rows)) for p in self._pieces]
        segment_of, local_of = self._map
        if self._references:
            unlike = [p for p, info in m.fields.items() if m.raw_fields.get(p) is None
                      or info.dtype != m.raw_fields[p].dtype]
            if unlike:
                raise CorruptionError.damaged(
                    f"{self._pieces[0].what}/{layout.SEEN_RAW}: seen rows of epoch {self.number} are stored as their "
                    f"raw samples, but the stream's manifest gives seen fields {unlike} another dtype than the raw "
                    "fields of the same path")
            segment_of, local_of = segment_of.copy(), local_of.copy()
            same = self._in_position_order([np.zeros(p.rows, dtype=bool) if p.same is None else p.same
                                            for p in self._pieces])
            ranks = self.ranks
            for rank in np.unique(ranks[same]).tolist():
                at = np.flatnonzero(same & (ranks == rank))
                raw = self.stream.rank(rank).raw.row_plan()
                found = np.searchsorted(raw.export_index, self.order[at])
                found = np.minimum(found, max(0, len(raw.export_index) - 1))
                if not len(raw.export_index) or not np.array_equal(raw.export_index[found], self.order[at]):
                    raise CorruptionError.damaged(
                        f"{self._pieces[0].what}/{layout.SEEN_RAW}: seen rows of epoch {self.number} are stored as "
                        f"their raw samples, but rank {rank} holds no committed raw sample of some of their indices")
                segment_of[at] = len(segments) + raw.segment_of[found]
                local_of[at] = raw.local_of[found]
                segments += raw.segments
        return RowPlan(f"stream {m.name!r} epoch {self.number}", m.structure or {"type": "none"}, dict(m.fields),
                       segments, segment_of, local_of, self.order, raw=False, batched=m.batched, batches=self._batches,
                       references=self._references)

    def _build(self, rows: dict[str, Any], batched: bool) -> Any:
        m = self.stream.manifest
        return unflatten(m.structure or {"type": "none"}, lambda p: rebuild_leaf(m.fields[p], rows[p], batched))

    def __getitem__(self, position: int) -> Any:
        """The seen sample at ``position`` (one row of its batch, without the batch dimension)."""
        n = len(self)
        if not -n <= position < n:
            raise IndexError(f"position {position} is outside epoch {self.number} of stream {self.stream.name!r} "
                             f"({n} rows)")
        position %= n
        return self._build(self._rows(position, position + 1), batched=False)

    def positions(self, *, index: int) -> np.ndarray:
        """Every position where dataset ``index`` was seen in this epoch (int64, ascending).

        Several with a sampler that draws with replacement; none if never seen.
        Read from the epoch's inverse index (``Stream.where``), without the order.
        """
        if len(self._pieces) == 1:
            p = self._pieces[0]
            return piece_positions(p.group, p.what, p.manifest, index)
        part, _ = self._map
        found = [np.flatnonzero(part == k)[piece_positions(p.group, p.what, p.manifest, index)]
                 for k, p in enumerate(self._pieces)]
        return np.sort(np.concatenate(found))

    def sample(self, *, index: int) -> Any:
        """The seen sample of dataset ``index`` (its first occurrence). ``KeyError`` if never seen."""
        where = self.positions(index=index)
        if len(where) == 0:
            raise KeyError(f"dataset index {index} was not seen in epoch {self.number} of stream {self.stream.name!r}")
        return self[int(where[0])]

    def batch(self, j: int) -> Any:
        """Batch ``j`` exactly as the loader yielded it."""
        nb = len(self._batches)
        if not -nb <= j < nb:
            raise IndexError(f"batch {j} is outside epoch {self.number} of stream {self.stream.name!r} ({nb} batches)")
        k, lo, hi = self._batches[j % nb]
        start = int(np.sum(self.batch_sizes[: j % nb]))
        self._require_full(slice(start, start + hi - lo), f"batch {j % nb}")
        if self._references:
            return self._build(self._rows(start, start + hi - lo), batched=self.stream.manifest.batched)
        return self._build(self._pieces[k].seen.read(lo, hi), batched=self.stream.manifest.batched)  # type: ignore[union-attr]

    def batches(self) -> Iterator[Any]:
        """Every batch in the order the loader yielded them; bitwise equal to the originals."""
        return iter(self.replay_loader())

    def replay_loader(self) -> ReplayLoader:
        """A re-iterable loader of the recorded batches in recorded order.

        Each batch has the structure, types, dtypes, shapes and values the
        loader yielded; ``len()`` is the number of batches. Fields are read
        forward in chunk-aligned blocks: one decode per chunk per pass.

        Examples
        --------
        >>> for x, y in snapstore.open("runs/exp1.snap")["train"].epoch(0).replay_loader():  # doctest: +SKIP
        ...     loss = criterion(model(x), y)
        """
        return ReplayLoader(self.row_plan())

    @cached_property
    def outputs(self) -> Mapping[str, np.ndarray]:
        """Logged outputs by name, aligned with ``order`` (rows never logged read as NaN or 0)."""
        return _Outputs(self)

    def unpadded(self, field: str, *, lengths: str, position: int | None = None) -> Any:
        """Rows of ``field`` without their padding, cut to the length in field ``lengths``.

        For batches of padded sequences (``pad_sequence(..., batch_first=True)``
        with a lengths tensor): row ``k`` of ``field`` becomes ``row[:length[k]]``.

        Parameters
        ----------
        field : str
            The padded field, rows of shape ``(max_length, *feature_shape)``.
        lengths : str
            The field holding each row's true length (an integer per row).
        position : int, optional
            One row; by default, every row of the epoch as a list.

        Raises
        ------
        KeyError
            ``field`` or ``lengths`` is not a field of the stream.
        """
        infos = self.stream.manifest.fields
        for f in (field, lengths):
            if f not in infos:
                raise FieldNotFoundError(f"no field {f!r} in stream {self.stream.name!r}; fields: {list(infos)}")
        start, stop = (position, position + 1) if position is not None else (0, len(self))
        rows = self._rows(start, stop)
        values, cut = rows[field], np.asarray(rows[lengths]).astype(np.int64)
        out = [rebuild_leaf(infos[field], values[k : k + 1] if isinstance(values, np.ndarray) else [values[k]],
                            False)[: int(cut[k])]
               for k in range(stop - start)]
        return out[0] if position is not None else out

    def to_numpy(self, *, fields: Fields = None, out: Mapping[str, np.ndarray] | None = None,
                 ragged: RaggedMode = "list") -> dict[str, Any]:
        """Seen rows in seen order, one array per field, plus ``"index"``.

        Each array is allocated once (or taken from ``out``) and filled chunk
        by chunk, so memory stays at one block beyond the result, and at one
        block when every array is a ``numpy.memmap``.

        Parameters
        ----------
        fields : list of str, optional
            Field paths to export (``stream.fields``); all by default.
        out : dict of str to ndarray, optional
            Preallocated destinations (arrays or ``numpy.memmap``) for some or
            all keys; the rest is allocated. Each must have the shape and
            dtype of ``snapstore.export.out_specs(epoch)``.
        ragged : {"list", "pad"}, default "list"
            Ragged fields (rows of differing shapes): a list of row arrays, or
            zero-padded to the widest row plus ``"<field>.lengths"`` (int64,
            (n,) for one varying dimension, else (n, varying dimensions)).

        Returns
        -------
        dict of str to ndarray or list
            ``"index"``: int64, (n,), ``order``; each field: ``(n, *row_shape)``
            in its stored dtype (``StringDType`` for strings, ``uint16`` bit
            patterns for bfloat16), or a list of n arrays for a ragged field
            with ``ragged="list"``; the ``out`` arrays themselves where given.

        Raises
        ------
        UsageError
            An unknown field or ragged mode, or an ``out`` array of the wrong
            shape or dtype.
        SchemaError
            A field's key collides with ``"index"`` or a ``".lengths"`` key
            (leave it out of ``fields``).
        CorruptionError
            A chunk fails to decode or its checksum.

        Examples
        --------
        >>> ep = snapstore.open("runs/exp1.snap")["train"].epoch(0)  # doctest: +SKIP
        >>> (shape, dtype), = snapstore.export.out_specs(ep, ["0"], index=False).values()  # doctest: +SKIP
        >>> x = numpy.lib.format.open_memmap("x.npy", mode="w+", shape=shape, dtype=dtype)  # doctest: +SKIP
        >>> ep.to_numpy(fields=["0"], out={"0": x})["index"]  # doctest: +SKIP
        """
        return to_numpy(self, fields=fields, out=out, ragged=ragged)

    def to_dask(self, fields: Fields = None) -> dict[str, Any]:
        """Seen rows as ``dask.array``s in seen order, chunk-aligned, plus ``"index"``.

        Parameters
        ----------
        fields : list of str, optional
            Field paths; all by default.

        Returns
        -------
        dict of str to dask.array.Array
            ``"index"``: int64, (n,), ``order``; each field ``(n, *row_shape)``.
            Dask chunks are the stored chunks, limited to the committed rows;
            each task reads one chunk.

        Raises
        ------
        SnapstoreError
            Dask is not installed (``pip install 'snapstore[dask]'``).
        SchemaError
            A selected field is ragged (a dask array needs one row shape).
        """
        from ..export.dask import to_dask  # Dask is optional

        return to_dask(self, fields)

    def _check_field(self, field: str) -> None:
        if field not in self.schema.fields:
            raise FieldNotFoundError(f"no seen field {field!r} in stream {self.stream.name!r}; "
                                     f"fields: {list(self.schema.fields)}")

    def hashes(self, field: str) -> np.ndarray:
        """Content hash (xxh3_64, see ``snapstore.hashing``) of each seen row of ``field``.

        Returns
        -------
        ndarray of uint64, shape (len(self),)
            Aligned with ``order``; equal hashes mean bitwise-equal rows.

        Raises
        ------
        KeyError
            No such field.
        CorruptionError
            A chunk of the hashes (or, for snapshots without stored hashes, of
            the data) fails to decode.
        """
        self._check_field(field)
        if not len(self):
            return np.empty(0, dtype=np.uint64)
        stored = self._per_position(layout.seen_hashes_path(field), np.uint64, hashing.NO_HASH)
        return fill_hashes(stored, lambda k: self.gather(field, k))

    def output_hashes(self, name: str) -> np.ndarray:
        """Content hash of each row of output ``name`` (uint64, (len(self),)), aligned with ``order``."""
        if name not in self.schema.outputs:
            raise FieldNotFoundError(f"no output {name!r} in stream {self.stream.name!r}; "
                                     f"logged outputs: {list(self.schema.outputs)}")
        if not len(self):
            return np.empty(0, dtype=np.uint64)
        stored = self._per_position(layout.output_hashes_path(name), np.uint64, hashing.NO_HASH)
        return fill_hashes(stored, lambda k: self.outputs[name][k])

    def gather(self, field: str, positions: npt.ArrayLike) -> np.ndarray | list[np.ndarray]:
        """Rows of seen field ``field`` at ``positions`` (any order): shape (n, *row_shape), or a list of
        arrays for a ragged field; each chunk is decoded once."""
        self._check_field(field)
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        if len(positions) and (positions.min() < 0 or positions.max() >= len(self)):
            raise IndexError(f"positions outside epoch {self.number} of stream {self.stream.name!r} ({len(self)} rows)")
        self._require_full(positions, f"rows of field {field!r}")
        if self._references:
            return gather(self._plan, [field], positions)[field]
        part, local = self._map
        parts, where = [], []
        for k in np.unique(part[positions]):
            which = np.nonzero(part[positions] == k)[0]
            parts.append(self._pieces[k].seen.readers[field].gather(local[positions[which]]))  # type: ignore[union-attr]
            where.append(which)
        return place(parts, where, len(positions)) if parts else no_rows(self.schema.fields[field])

    def __repr__(self) -> str:
        state = "complete" if self.complete else "incomplete"
        return (f"<Epoch {self.number} of {self.stream.name!r}: {len(self)} rows, {len(self.batch_sizes)} batches, "
                f"{state}>")


class _Outputs(Mapping):
    """Logged outputs of an epoch by name, read on first access."""

    def __init__(self, epoch: Epoch) -> None:
        self._epoch = epoch
        self._infos = epoch.stream.manifest.outputs
        self._cache: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._infos:
            raise FieldNotFoundError(f"no output {name!r} in stream {self._epoch.stream.name!r}; "
                                     f"logged outputs: {list(self._infos)}")
        if name not in self._cache:
            info = self._infos[name]
            dtype = numpy_dtype(info.dtype)
            fill = np.nan if dtype.kind in "fc" else 0
            parts = []
            for p in self._epoch._pieces:
                key = f"{layout.OUTPUTS_GROUP}/{name}"
                named = (p.coverage.entries or {}).get(key)
                if key not in p.nodes and named is not None and named.hashes.any():
                    raise CorruptionError.damaged(f"{p.what}/{key}: the array is missing (or its group was replaced), "
                                                  "although the commit record names its chunks")
                # rows never logged in this part (or not yet committed) read as the fill value
                block = np.full((p.rows, *cast(tuple[int, ...], info.shape)),  # outputs are never ragged
                                fill, dtype=dtype)
                if key in p.nodes and p.rows:
                    array = array_at(p.nodes, key, p.what)
                    n = min(p.rows, array.shape[0])  # an output logged only early may be shorter than the rows
                    covered = expect(p.coverage, array, required=False)
                    if p.coverage.entries is not None:  # rows its commit record does not cover were not logged yet
                        n = min(n, covered.rows if covered is not None else 0)
                    reader = storage.ChunkReader(array, p.what, rows=n, dtype=dtype, row_shape=row_shape(info),
                                                 sparse=True, expect=covered)
                    block[:n] = reader.read(0, n)
                parts.append(block)
            self._cache[name] = self._epoch._in_position_order(parts)
        return self._cache[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._infos)

    def __len__(self) -> int:
        return len(self._infos)
