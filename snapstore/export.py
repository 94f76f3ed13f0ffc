"""Export recorded rows to NumPy, torch, tf.data and Dask, streamed chunk by chunk.

Every export reads each stored chunk once (``to_tf_dataset(epoch=None)`` of
out-of-order raw samples excepted, see there), in chunk-aligned blocks of
about ``config.DEFAULT_EXPORT_BLOCK_BYTES`` per field, and writes each block
straight to its destination. Memory therefore stays at a few blocks whatever
the epoch size, plus the destination itself unless it is a ``numpy.memmap``.

Orders, the same in every export:

- an epoch's seen rows come in seen order (positions ``0 .. len(epoch)-1``),
  with ``"index"`` the dataset index of each row (``epoch.order``);
- raw samples come in dataset-index order, with ``"index"`` the sorted
  recorded indices (``raw.indices``). Raw rows are stored in the order they
  were first captured, so exports scatter each stored chunk to its place.
  ``to_dask`` is the exception: it returns raw rows in stored order (see there).

Reached through ``Epoch.to_numpy``, ``RawSamples.to_numpy``,
``Stream.to_tensor_dataset`` and friends in ``reader.py``; TensorFlow and Dask
are imported only when their export is called.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from . import config, layout
from .errors import CorruptionError, SchemaError, SnapstoreError, UsageError
from .layout import FieldInfo
from .schema import Structure, _namedtuple, leaf_paths, numpy_dtype

if TYPE_CHECKING:
    from .reader import Epoch, RawSamples, Stream

__all__ = ["ReplayLoader", "StoreDataset", "out_specs", "to_dask", "to_numpy", "to_tensor_dataset", "to_tf_dataset"]

INDEX = "index"
"""Key of the dataset-index array in every export."""


# -- sources: what an export reads -------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    """The committed rows of an epoch's seen fields or of a stream's raw samples."""

    what: str  # for messages: "stream 'train' epoch 1", "raw samples of stream 'train'"
    rows: int
    structure: Structure
    infos: dict[str, FieldInfo]
    arrays: dict[str, Any]  # field path -> array of >= rows rows (preallocated)
    index: np.ndarray  # dataset index of each stored row, int64 (rows,)
    index_array: Any  # the stored array ``index`` comes from (for to_dask), or None
    raw: bool  # exports put raw rows in dataset-index order

    @property
    def shuffled(self) -> bool:
        """Raw rows stored out of dataset-index order, so exports must reorder them."""
        return self.raw and not bool(np.all(self.index[1:] >= self.index[:-1]))

    def dest(self) -> np.ndarray:
        """Export position of each stored row (raw rows: its place in index order), int64 (rows,)."""
        dest = np.empty(self.rows, dtype=np.int64)
        dest[np.argsort(self.index, kind="stable")] = np.arange(self.rows)
        return dest

    @property
    def export_index(self) -> np.ndarray:
        """Dataset index of each exported row: sorted for raw samples, the order for seen rows."""
        return np.sort(self.index, kind="stable") if self.raw else self.index


def _source(obj: Epoch | RawSamples) -> _Source:
    from .reader import Epoch, RawSamples, _node

    if isinstance(obj, Epoch):
        m = obj.stream.manifest
        seen = obj._seen
        arrays = {p: r.array for p, r in seen.readers.items()} if seen is not None else {}
        order = _node(obj._group, layout.ORDER, obj._what) if len(obj) else None
        return _Source(
            f"stream {m.name!r} epoch {obj.number}", len(obj), m.structure or {"type": "none"}, dict(m.fields),
            arrays, obj.order, order, raw=False,
        )
    if isinstance(obj, RawSamples):
        m = obj._stream.manifest
        fields = obj._fields
        arrays = {p: r.array for p, r in fields.readers.items()} if fields is not None else {}
        index = _node(obj._group, layout.RAW_INDEX, obj._stream.path) if obj._rows else None
        return _Source(
            f"raw samples of stream {m.name!r}", obj._rows, m.raw_structure or {"type": "none"},
            dict(m.raw_fields) if obj._rows else {}, arrays, obj._index, index, raw=True,
        )
    raise UsageError(f"exports read an Epoch or a stream's RawSamples, not a {type(obj).__name__}")


def _select(src: _Source, fields: Any) -> list[str]:
    """Requested field paths in structure order; every field when ``fields`` is None."""
    every = [p for p in leaf_paths(src.structure) if p in src.infos]
    if fields is None:
        paths = every
    else:
        if isinstance(fields, str):
            fields = [fields]
        wanted = list(dict.fromkeys(fields))
        unknown = [f for f in wanted if f not in src.infos]
        if unknown:
            raise UsageError(f"no field {', '.join(map(repr, unknown))} in {src.what}; its fields are {every}")
        paths = [p for p in every if p in wanted]
    ragged = [p for p in paths if src.infos[p].ragged]
    if ragged:
        raise SchemaError(f"fields {ragged} of {src.what} are ragged, which this export cannot hold yet; "
                          "select fixed-shape fields with fields=[...]")
    return paths


def out_specs(obj: Epoch | RawSamples, fields: Any = None, *, index: bool = True) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of each array ``to_numpy`` returns, e.g. to allocate ``out=`` memmaps.

    Parameters
    ----------
    obj : Epoch or RawSamples
    fields : list of str, optional
        Field paths; all fields when omitted.
    index : bool, default True
        Include ``"index"`` (int64, (rows,)).

    Returns
    -------
    dict of str to (shape, dtype)
        ``shape`` is ``(rows, *row_shape)``; ``dtype`` the stored NumPy dtype
        (``StringDType`` for strings, ``uint16`` bit patterns for bfloat16).
    """
    src = _source(obj)
    return _specs(src, _select(src, fields), index)


def _specs(src: _Source, paths: list[str], index: bool) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    if index and INDEX in paths:
        raise SchemaError(f"{src.what} has a field named {INDEX!r}, which collides with the dataset-index array of "
                          f"the export; pass fields=[...] without it (its data: fields=[{INDEX!r}], index=False)")
    specs: dict[str, tuple[tuple[int, ...], np.dtype]] = {INDEX: ((src.rows,), np.dtype(np.int64))} if index else {}
    for p in paths:
        info = src.infos[p]
        specs[p] = ((src.rows, *info.shape), numpy_dtype(info.dtype))
    return specs


# -- reading whole chunks ----------------------------------------------------------------------


def _read(array: Any, start: int, stop: int, rest: tuple[Any, ...] = ()) -> np.ndarray:
    """Rows ``start:stop`` (``array[start:stop, *rest]``) of a stored array.

    Decode or checksum failures become ``CorruptionError`` naming the array and rows.
    """
    try:
        return array[(slice(start, stop), *rest)]
    except (ValueError, RuntimeError, OSError) as e:
        raise CorruptionError(
            f"rows {start}-{stop - 1} of array {array.path!r} cannot be read: {e}; the file is damaged: restore it "
            "from a copy, or run `snapstore audit` to list every damaged chunk"
        ) from e


def _block_rows(array: Any) -> int:
    """Rows per read: whole chunks, about ``config.DEFAULT_EXPORT_BLOCK_BYTES``, at least one chunk."""
    budget = config.DEFAULT_EXPORT_BLOCK_BYTES
    chunk = int(array.chunks[0])
    row_bytes = max(1, math.prod(array.shape[1:]) * array.dtype.itemsize)
    return chunk * max(1, budget // (chunk * row_bytes))


def _blocks(array: Any, rows: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(start, stop, rows)`` for consecutive chunk-aligned blocks of the first ``rows`` rows."""
    step = _block_rows(array)
    for lo in range(0, rows, step):
        hi = min(lo + step, rows)
        yield lo, hi, _read(array, lo, hi)


class _Cursor:
    """Hands out consecutive row ranges of one array, reading it forward in chunk-aligned blocks."""

    def __init__(self, array: Any, rows: int) -> None:
        self._array, self._rows = array, rows
        self._step = _block_rows(array)
        self._pieces: list[tuple[int, np.ndarray]] = []  # (first row, block), ascending
        self._next = 0  # first row not read yet

    def take(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` (``start`` never below an earlier ``start``), as a view when one block holds them."""
        self._pieces = [(lo, b) for lo, b in self._pieces if lo + len(b) > start]
        while self._next < stop:
            hi = min(self._next + self._step, self._rows)
            self._pieces.append((self._next, _read(self._array, self._next, hi)))
            self._next = hi
        parts = [b[max(start - lo, 0) : stop - lo] for lo, b in self._pieces if lo < stop]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _row_blocks(src: _Source, paths: list[str]) -> Iterator[dict[str, np.ndarray]]:
    """Consecutive blocks of rows in export order, ``{path: rows}`` aligned across fields.

    Seen rows and raw rows captured in index order stream through cursors,
    stepping by the block of the widest field. Raw rows captured out of order
    are gathered window by window (``config.DEFAULT_GATHER_BYTES`` of rows):
    each window decodes every chunk that holds one of its rows.
    """
    if not paths or not src.rows:
        return
    if not src.shuffled:
        step = min(_block_rows(src.arrays[p]) for p in paths)
        cursors = {p: _Cursor(src.arrays[p], src.rows) for p in paths}
        for lo in range(0, src.rows, step):
            yield {p: c.take(lo, min(lo + step, src.rows)) for p, c in cursors.items()}
        return
    source_row = np.argsort(src.index, kind="stable")  # stored row at each export position
    row_bytes = sum(max(1, math.prod(src.infos[p].shape)) * numpy_dtype(src.infos[p].dtype).itemsize for p in paths)
    window = max(1, config.DEFAULT_GATHER_BYTES // row_bytes)
    for lo in range(0, src.rows, window):
        rows = source_row[lo : lo + window]
        yield {p: _gather(src.arrays[p], rows, src.rows) for p in paths}


def _gather(array: Any, rows: np.ndarray, committed: int) -> np.ndarray:
    """Stored rows ``rows`` (any order), decoding each chunk that holds one once."""
    chunk = int(array.chunks[0])
    out = np.empty((len(rows), *array.shape[1:]), dtype=array.dtype)
    which = rows // chunk
    for c in np.unique(which):
        sel = np.nonzero(which == c)[0]
        lo = int(c) * chunk
        out[sel] = _read(array, lo, min(lo + chunk, committed))[rows[sel] - lo]
    return out


# -- NumPy -------------------------------------------------------------------------------------


def to_numpy(
    obj: Epoch | RawSamples,
    *,
    fields: Any = None,
    out: Mapping[str, np.ndarray] | None = None,
    progress: Callable[[int], None] | None = None,
    index: bool = True,
) -> dict[str, np.ndarray]:
    """Fill one array per field (and ``"index"``) chunk by chunk; see ``Epoch.to_numpy``.

    ``progress(nbytes)`` is called after each block is written (the CLI's
    progress bar). ``index=False`` leaves out ``"index"``.
    """
    src = _source(obj)
    paths = _select(src, fields)
    arrays = _prepare_out(src, _specs(src, paths, index), out)
    dest = src.dest() if src.shuffled else None
    if index:
        arrays[INDEX][...] = src.export_index
    for p in paths:
        target = arrays[p]
        for lo, hi, block in _blocks(src.arrays[p], src.rows):
            if dest is None:
                target[lo:hi] = block
            else:
                target[dest[lo:hi]] = block
            if progress is not None:
                progress(block.nbytes)
        if isinstance(target, np.memmap):
            target.flush()
    return arrays


def _prepare_out(src: _Source, specs: dict[str, tuple[tuple[int, ...], np.dtype]], out: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    given = dict(out or {})
    extra = [k for k in given if k not in specs]
    if extra:
        raise UsageError(f"out has arrays for {extra}, which this export of {src.what} does not write; "
                         f"it writes {list(specs)}")
    arrays = {}
    for key, (shape, dtype) in specs.items():
        a = given.get(key)
        if a is None:
            a = np.empty(shape, dtype=dtype)
        elif not isinstance(a, np.ndarray):
            raise UsageError(f"out[{key!r}] is a {type(a).__name__}; pass a numpy.ndarray or numpy.memmap")
        elif a.shape != shape or a.dtype != dtype:
            if dtype.kind == "T":
                raise UsageError(f"out[{key!r}] must be a numpy.empty({shape}, dtype=numpy.dtypes.StringDType()): "
                                 "string fields cannot live in a memmap; leave it out of out= to have it allocated")
            raise UsageError(
                f"out[{key!r}] has shape {a.shape} and dtype {a.dtype}, but {src.what} needs shape {shape} and dtype "
                f"{dtype} for it; allocate it with e.g. numpy.lib.format.open_memmap(path, mode='w+', dtype={str(dtype)!r}, "
                f"shape={shape})"
            )
        elif not a.flags.writeable:
            raise UsageError(f"out[{key!r}] is read-only; pass a writeable array (a memmap opened with mode='w+' or 'r+')")
        arrays[key] = a
    return arrays


# -- torch -------------------------------------------------------------------------------------


def to_tensor_dataset(stream: Stream, epoch: int | None = None) -> TensorDataset:
    """Raw samples in index order, or an epoch's seen rows in seen order; see ``Stream.to_tensor_dataset``."""
    if epoch is None:
        raw = stream.raw
        missing = len(raw) - len(raw.indices)
        if missing:
            raise SnapstoreError(
                f"stream {stream.name!r} holds raw samples for {len(raw.indices)} of {len(raw)} dataset indices "
                f"({missing} never fetched); pass epoch=e for the rows an epoch saw, or use stream.raw"
            )
        obj: Epoch | RawSamples = raw
    else:
        obj = stream.epoch(epoch)
    src = _source(obj)
    paths = _select(src, None)
    for p in paths:
        if src.infos[p].dtype == "str":
            raise SchemaError(f"field {p!r} holds strings, which a TensorDataset cannot; use to_numpy() for it")
    arrays = to_numpy(obj, index=False)
    return TensorDataset(*(_as_tensor(src.infos[p], arrays[p]) for p in paths))


def _as_tensor(info: FieldInfo, rows: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(rows)  # shares the freshly filled array: no second copy
    return t.view(torch.bfloat16) if info.dtype == "bfloat16" else t


class ReplayLoader:
    """The recorded batches of an epoch, in recorded order; returned by ``Epoch.replay_loader``.

    Iterate it like the DataLoader it replays: each batch has the structure,
    types, dtypes, shapes and values the loader yielded. ``len()`` is the
    number of batches. Every field is read forward in chunk-aligned blocks, so
    each chunk is decoded once per iteration; each batch owns its memory.
    """

    def __init__(self, epoch: Epoch) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.epoch.batch_sizes)

    def __iter__(self) -> Iterator[Any]:
        ep = self.epoch
        seen = ep._seen
        offsets = ep._offsets
        batched = ep.stream.manifest.batched
        cursors = {p: _Cursor(r.array, len(ep)) for p, r in seen.readers.items()} if seen is not None else {}
        for j in range(len(self)):
            lo, hi = int(offsets[j]), int(offsets[j + 1])
            rows = {p: c.take(lo, hi).copy() for p, c in cursors.items()}
            yield seen.build(rows, batched=batched) if seen is not None else None

    def __repr__(self) -> str:
        return f"<ReplayLoader of epoch {self.epoch.number} of {self.epoch.stream.name!r}: {len(self)} batches>"


class StoreDataset(Dataset):
    """A map-style ``Dataset`` over a stream, read lazily from the snapshot; see ``Stream.as_dataset``.

    It keeps only the snapshot path, storage options, stream name and epoch
    number, and opens the snapshot on first use in each process, so it pickles
    into DataLoader workers (``fork`` or ``spawn``).
    """

    def __init__(self, path: str, stream: str, epoch: int | None, *, storage_options: dict[str, Any] | None = None,
                 length: int) -> None:
        self.path = path
        self.stream = stream
        self.epoch = epoch
        self.storage_options = storage_options
        self._len = length
        self._target: Any = None
        self._pid: int | None = None

    def _open(self) -> Any:
        if self._target is None or self._pid != os.getpid():
            from .reader import open as open_snapshot

            stream = open_snapshot(self.path, storage_options=self.storage_options)[self.stream]
            self._target = stream.raw if self.epoch is None else stream.epoch(self.epoch)
            self._pid = os.getpid()
        return self._target

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, key: int) -> Any:
        """Raw sample of dataset index ``key`` (``epoch=None``), or the seen sample at position ``key``."""
        return self._open()[key]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_target": None, "_pid": None}

    def __repr__(self) -> str:
        what = "raw samples" if self.epoch is None else f"epoch {self.epoch}"
        return f"StoreDataset({self.path!r}, stream={self.stream!r}, {what}, {self._len} items)"


# -- tf.data -----------------------------------------------------------------------------------


def to_tf_dataset(stream: Stream, epoch: int | None = None, *, channels_last: bool = False, fields: Any = None) -> Any:
    """A streaming ``tf.data.Dataset`` of rows; see ``Stream.to_tf_dataset``."""
    try:
        import tensorflow as tf
    except ImportError:
        raise SnapstoreError("to_tf_dataset needs TensorFlow: pip install 'snapstore[tf]'") from None
    src = _source(stream.raw if epoch is None else stream.epoch(epoch))
    paths = _select(src, fields)
    if not paths:
        raise UsageError(f"{src.what} has no field to put in a tf.data.Dataset")
    structure = _prune(src.structure, set(paths))
    paths = leaf_paths(structure)
    moved = {p for p in paths if channels_last and _image_like(src.infos[p])}
    specs = []
    for p in paths:
        info = src.infos[p]
        shape = (*info.shape[1:], info.shape[0]) if p in moved else info.shape
        dtype = tf.string if info.dtype == "str" else tf.uint16 if info.dtype == "bfloat16" else tf.as_dtype(numpy_dtype(info.dtype))
        specs.append(tf.TensorSpec((None, *shape), dtype))

    def rows() -> Iterator[tuple[np.ndarray, ...]]:
        for block in _row_blocks(src, paths):
            yield tuple(_tf_rows(src.infos[p], block[p], p in moved) for p in paths)

    bf16 = [src.infos[p].dtype == "bfloat16" for p in paths]

    def nest(*flat: Any) -> Any:
        leaves = dict(zip(paths, (tf.bitcast(t, tf.bfloat16) if b else t for t, b in zip(flat, bf16))))
        return _tf_structure(structure, leaves)

    ds = tf.data.Dataset.from_generator(rows, output_signature=tuple(specs))
    return ds.map(nest).unbatch()


def _image_like(info: FieldInfo) -> bool:
    """Rows of shape (C, H, W) from torch tensors (torch's channels-first convention)."""
    return info.kind == "tensor" and len(info.shape) == 3


def _tf_rows(info: FieldInfo, rows: np.ndarray, move: bool) -> np.ndarray:
    if info.dtype == "str":
        return rows.astype(object)
    return np.ascontiguousarray(np.moveaxis(rows, 1, -1)) if move else rows


def _prune(structure: Structure, keep: set[str]) -> Structure:
    """``structure`` with only the leaves in ``keep``; emptied containers and ``None`` leaves dropped."""
    t = structure["type"]
    if t == "leaf":
        return structure if structure["field"] in keep else {"type": "none"}
    if t == "none":
        return structure
    items = [_prune(s, keep) for s in structure["items"]]
    kept = [i for i, s in enumerate(items) if s["type"] != "none"]
    if not kept:
        return {"type": "none"}
    pruned = {**structure, "items": [items[i] for i in kept]}
    if t == "dict":
        pruned["keys"] = [structure["keys"][i] for i in kept]
    if t == "namedtuple":
        pruned["fields"] = [structure["fields"][i] for i in kept]
    return pruned


def _tf_structure(structure: Structure, leaves: dict[str, Any]) -> Any:
    """Elements mirror the batch: dicts stay dicts, namedtuples stay, lists and tuples become tuples."""
    t = structure["type"]
    if t == "leaf":
        return leaves[structure["field"]]
    items = [_tf_structure(s, leaves) for s in structure["items"]]
    if t == "dict":
        return dict(zip(structure["keys"], items))
    if t == "namedtuple":
        return _namedtuple(structure["name"], tuple(structure["fields"]))(*items)
    return tuple(items)


# -- Dask --------------------------------------------------------------------------------------


def to_dask(obj: Epoch | RawSamples, fields: Any = None) -> dict[str, Any]:
    """One chunk-aligned ``dask.array`` per field plus ``"index"``; see ``Epoch.to_dask``."""
    try:
        import dask.array as da
    except ImportError:
        raise SnapstoreError("to_dask needs Dask: pip install 'snapstore[dask]'") from None
    src = _source(obj)
    paths = _select(src, fields)
    _specs(src, paths, True)  # the "index" collision check
    named = {INDEX: src.index_array, **{p: src.arrays[p] for p in paths}}
    out = {}
    for key, array in named.items():
        if array is None:  # nothing committed
            info = FieldInfo("ndarray", "int64", ()) if key == INDEX else src.infos[key]
            out[key] = da.from_array(np.empty((0, *info.shape), dtype=numpy_dtype(info.dtype)))
            continue
        rows = _Committed(array, src.rows)
        out[key] = da.from_array(
            rows, chunks=(int(array.chunks[0]), *array.shape[1:]), name=f"snapstore-{key}-{uuid.uuid4().hex}",
            asarray=False, fancy=False, lock=False, meta=np.empty((0,) * array.ndim, dtype=array.dtype),
        )
    return out


class _Committed:
    """The first ``rows`` rows of a stored array, for ``dask.array.from_array``."""

    def __init__(self, array: Any, rows: int) -> None:
        self.array = array
        self.shape = (rows, *array.shape[1:])
        self.dtype = array.dtype
        self.ndim = array.ndim

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        rows = key[0] if key else slice(None)
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise UsageError(f"committed rows are read by contiguous row slices, not {rows!r}")
        start, stop, _ = rows.indices(self.shape[0])
        return _read(self.array, start, max(start, stop), key[1:])
