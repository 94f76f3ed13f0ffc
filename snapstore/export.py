"""Export recorded rows to NumPy, torch, tf.data and Dask, streamed chunk by chunk.

Every export reads each stored chunk once (``to_tf_dataset(epoch=None)`` of
out-of-order raw samples excepted, see there), in chunk-aligned blocks of
about ``config.DEFAULT_EXPORT_BLOCK_BYTES`` per field (``_rows.py``), and
writes each block straight to its destination. Memory therefore stays at a
few blocks whatever the epoch size, plus the destination itself unless it is
a ``numpy.memmap``.

Orders, the same in every export:

- an epoch's seen rows come in seen order (positions ``0 .. len(epoch)-1``),
  with ``"index"`` the dataset index of each row (``epoch.order``);
- raw samples come in dataset-index order, with ``"index"`` the sorted
  recorded indices (``raw.indices``). Raw rows are stored in the order they
  were first captured, so exports scatter each stored chunk to its place.
  ``to_dask`` is the exception: it returns raw rows in stored order (see there).

Ragged fields (rows of differing shapes) come back from ``to_numpy`` as a list
of row arrays (``ragged="list"``) or zero-padded with their lengths
(``ragged="pad"``), and as ``None`` dimensions from ``to_tf_dataset``;
``TensorDataset`` and Dask, which need one shape, refuse them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from ._rows import (
    Cursor,
    Source,
    blocks,
    export_shapes,
    ragged_block_rows,
    read,
    refuse_ragged,
    row_blocks,
    select,
    source,
)
from .errors import SchemaError, SnapstoreError, UsageError
from .layout import FieldInfo
from .schema import Structure, _namedtuple, leaf_paths, numpy_dtype

if TYPE_CHECKING:
    from .reader import Epoch, RawSamples, Stream

__all__ = [
    "INDEX",
    "LENGTHS",
    "RAGGED_MODES",
    "ReplayLoader",
    "StoreDataset",
    "out_specs",
    "to_dask",
    "to_numpy",
    "to_tensor_dataset",
    "to_tf_dataset",
]

INDEX = "index"
"""Key of the dataset-index array in every export."""

LENGTHS = ".lengths"
"""Suffix of the key holding a padded ragged field's row lengths: ``"tokens.lengths"``."""

RAGGED_MODES = ("list", "pad")

Specs = dict[str, tuple[tuple[int, ...], np.dtype]]


# -- NumPy -------------------------------------------------------------------------------------


def out_specs(obj: Epoch | RawSamples, fields: Any = None, *, index: bool = True, ragged: str = "list") -> Specs:
    """Shape and dtype of each array ``to_numpy`` fills, e.g. to allocate ``out=`` memmaps.

    Parameters
    ----------
    obj : Epoch or RawSamples
    fields : list of str, optional
        Field paths; all fields when omitted.
    index : bool, default True
        Include ``"index"`` (int64, (rows,)).
    ragged : {"list", "pad"}, default "list"
        As in ``to_numpy``. Ragged fields exported as lists are not listed
        (a list cannot be preallocated); padded ones are, with their
        ``"<field>.lengths"``.

    Returns
    -------
    dict of str to (shape, dtype)
        ``shape`` is ``(rows, *row_shape)``; ``dtype`` the stored NumPy dtype
        (``StringDType`` for strings, ``uint16`` bit patterns for bfloat16).

    Raises
    ------
    UsageError
        An unknown field or ragged mode.
    SchemaError
        A field's key collides with ``"index"`` or a ``".lengths"`` key.
    """
    src = source(obj)
    return _specs(src, select(src, fields), index, _mode(ragged))


def _mode(ragged: str) -> str:
    if ragged not in RAGGED_MODES:
        raise UsageError(f"ragged={ragged!r} is not one of {RAGGED_MODES}: 'list' (a list of row arrays) or "
                         "'pad' (zero-padded rows plus '<field>.lengths')")
    return ragged


def _specs(src: Source, paths: list[str], index: bool, ragged: str) -> Specs:
    specs: Specs = {INDEX: ((src.rows,), np.dtype(np.int64))} if index else {}
    keys = list(specs)
    for p in paths:
        info = src.infos[p]
        dtype = numpy_dtype(info.dtype)
        if not src.is_ragged(p):
            specs[p] = ((src.rows, *info.shape), dtype)  # type: ignore[arg-type]
            keys.append(p)
        elif ragged == "pad":
            shapes = export_shapes(src, p)
            widest = tuple(int(d) for d in shapes.max(axis=0, initial=0)) if len(info.shape) else ()
            specs[p] = ((src.rows, *widest), dtype)
            varying = _varying(info)
            specs[p + LENGTHS] = ((src.rows,) if len(varying) == 1 else (src.rows, len(varying)), np.dtype(np.int64))
            keys += [p, p + LENGTHS]
        else:
            keys.append(p)
    clash = sorted({k for k in keys if keys.count(k) > 1})
    if clash:
        raise SchemaError(f"{src.what} has fields whose export keys collide: {clash} ('index' is the dataset index, "
                          f"'<field>{LENGTHS}' a padded field's lengths); pass fields=[...] without them, or index=False")
    return specs


def _varying(info: FieldInfo) -> list[int]:
    """Row dimensions a ragged field's rows differ in (all of them when the schema does not say)."""
    varying = [i for i, d in enumerate(info.shape) if d is None]
    return varying or list(range(len(info.shape)))


def to_numpy(
    obj: Epoch | RawSamples,
    *,
    fields: Any = None,
    out: Mapping[str, np.ndarray] | None = None,
    ragged: str = "list",
    progress: Callable[[int], None] | None = None,
    index: bool = True,
) -> dict[str, Any]:
    """Fill one array per field (and ``"index"``) chunk by chunk; see ``Epoch.to_numpy``.

    ``progress(nbytes)`` is called after each block is written (the CLI's
    progress bar). ``index=False`` leaves out ``"index"``.
    """
    src = source(obj)
    paths = select(src, fields)
    specs = _specs(src, paths, index, _mode(ragged))
    given = dict(out or {})
    lists = [p for p in paths if src.is_ragged(p) and ragged == "list"]
    if any(p in given for p in lists):
        raise UsageError(f"out= cannot hold the ragged fields {[p for p in lists if p in given]} of {src.what} as lists; "
                         "leave them out of out=, or pass ragged='pad'")
    arrays = _prepare_out(src, specs, given)
    if index:
        arrays[INDEX][...] = src.export_index
    result: dict[str, Any] = {INDEX: arrays[INDEX]} if index else {}
    for p in paths:
        if p in lists:
            result[p] = _ragged_list(src, p, progress)
            continue
        if src.is_ragged(p):
            _fill_padded(src, p, arrays[p], arrays[p + LENGTHS], progress)
            result[p], result[p + LENGTHS] = arrays[p], arrays[p + LENGTHS]
        else:
            result[p] = arrays[p]
            for k, part in enumerate(src.parts):
                dest = src.dest(k) if part.rows else None
                for lo, hi, block in blocks(part.fixed[p], part.rows) if part.rows else ():
                    _put(arrays[p], dest, lo, hi, block)
                    if progress is not None:
                        progress(block.nbytes)
        for a in (result[p], result.get(p + LENGTHS)):
            if isinstance(a, np.memmap):
                a.flush()
    return result


def _put(target: np.ndarray, dest: Any, lo: int, hi: int, block: np.ndarray) -> None:
    """Stored rows ``lo:hi`` of a part into ``target`` at their export positions (``dest`` from ``Source.dest``)."""
    if isinstance(dest, slice):
        target[dest.start + lo : dest.start + hi] = block
        return
    where = dest[lo:hi]
    keep = where >= 0
    if keep.all():
        target[where] = block
    elif keep.any():
        target[where[keep]] = block[keep]


def _prepare_out(src: Source, specs: Specs, given: dict[str, Any]) -> dict[str, np.ndarray]:
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
                f"shape={shape}) (snapstore.export.out_specs gives every shape and dtype)"
            )
        elif not a.flags.writeable:
            raise UsageError(f"out[{key!r}] is read-only; pass a writeable array (a memmap opened with mode='w+' or 'r+')")
        arrays[key] = a
    return arrays


def _ragged_blocks(src: Source, path: str) -> Iterator[tuple[Any, int, int, list[np.ndarray]]]:
    """``(dest, start, stop, rows)`` for blocks of stored rows of a ragged field, part by part."""
    for k, part in enumerate(src.parts):
        if not part.rows:
            continue
        reader = part.ragged(path)
        dest = src.dest(k)
        step = ragged_block_rows(src.infos[path], reader.shapes)
        for lo in range(0, part.rows, step):
            hi = min(lo + step, part.rows)
            yield dest, lo, hi, reader.read(lo, hi)


def _ragged_list(src: Source, path: str, progress: Callable[[int], None] | None) -> list[np.ndarray]:
    rows: list[Any] = [None] * src.rows
    for dest, lo, hi, part in _ragged_blocks(src, path):
        where = range(dest.start + lo, dest.start + hi) if isinstance(dest, slice) else dest[lo:hi].tolist()
        for k, r in zip(where, part):
            if k >= 0:
                rows[k] = r
        if progress is not None:
            progress(sum(r.nbytes for r in part))
    return rows


def _fill_padded(src: Source, path: str, target: np.ndarray, lengths: np.ndarray,
                 progress: Callable[[int], None] | None) -> None:
    """Zero-padded rows of a ragged field, block by block, and the sizes of its varying dimensions."""
    lengths[...] = export_shapes(src, path)[:, _varying(src.infos[path])].reshape(lengths.shape)
    for dest, lo, hi, part in _ragged_blocks(src, path):
        padded = np.zeros((hi - lo, *target.shape[1:]), dtype=target.dtype)
        for k, r in enumerate(part):
            where: tuple[Any, ...] = (k, *[slice(0, n) for n in r.shape])
            padded[where] = r
        _put(target, dest, lo, hi, padded)
        if progress is not None:
            progress(padded.nbytes)


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
    src = source(obj)
    paths = select(src, None)
    for p in paths:
        if src.infos[p].dtype == "str":
            raise SchemaError(f"field {p!r} holds strings, which a TensorDataset cannot; use to_numpy() for it")
    refuse_ragged(src, paths, "a TensorDataset")
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
        src = source(ep)
        batched = ep.stream.manifest.batched
        cursors = {(k, p): Cursor(a, part.rows) for k, part in enumerate(src.parts) for p, a in part.fixed.items()}
        for k, lo, hi in ep._batches:
            part = src.parts[k]
            rows: dict[str, Any] = {p: cursors[k, p].take(lo, hi) for p in part.fixed}  # views: the batch copies them
            rows.update({p: r.read(lo, hi) for p, r in part.stored_ragged.items()})
            yield ep._build(rows, batched=batched)

    def __repr__(self) -> str:
        return f"<ReplayLoader of epoch {self.epoch.number} of {self.epoch.stream.name!r}: {len(self)} batches>"


class StoreDataset(Dataset):
    """A map-style ``Dataset`` over a stream, read lazily from the snapshot; see ``Stream.as_dataset``.

    It keeps only the snapshot path, storage options, stream name, rank and
    epoch number, and opens the snapshot on first use in each process, so it pickles
    into DataLoader workers (``fork`` or ``spawn``).
    """

    def __init__(self, path: str, stream: str, epoch: int | None, *, storage_options: dict[str, Any] | None = None,
                 rank: int | None = None, length: int) -> None:
        self.path = path
        self.stream = stream
        self.epoch = epoch
        self.rank = rank
        self.storage_options = storage_options
        self._len = length
        self._target: Any = None
        self._pid: int | None = None

    def _open(self) -> Any:
        if self._target is None or self._pid != os.getpid():
            from .reader import open as open_snapshot

            stream = open_snapshot(self.path, storage_options=self.storage_options)[self.stream]
            if self.rank is not None:
                stream = stream.rank(self.rank)
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
    src = source(stream.raw if epoch is None else stream.epoch(epoch))
    paths = select(src, fields)
    if not paths:
        raise UsageError(f"{src.what} has no field to put in a tf.data.Dataset")
    structure = _prune(src.structure, set(paths))
    paths = leaf_paths(structure)
    moved = {p for p in paths if channels_last and _image_like(src.infos[p])}
    ragged = any(src.is_ragged(p) for p in paths)  # one element per generator step instead of blocks
    specs = []
    for p in paths:
        info = src.infos[p]
        shape = (*info.shape[1:], info.shape[0]) if p in moved else info.shape
        if src.is_ragged(p) and not any(d is None for d in shape):
            shape = (None,) * len(shape)  # ragged in another epoch, or the schema does not say which dims vary
        dtype = tf.string if info.dtype == "str" else tf.uint16 if info.dtype == "bfloat16" else tf.as_dtype(numpy_dtype(info.dtype))
        specs.append(tf.TensorSpec(shape if ragged else (None, *shape), dtype))

    def rows() -> Iterator[tuple[Any, ...]]:
        for block in row_blocks(src, paths):
            cols = [_tf_rows(src.infos[p], block[p], p in moved) for p in paths]
            if ragged:
                yield from zip(*cols)
            else:
                yield tuple(cols)

    bf16 = [src.infos[p].dtype == "bfloat16" for p in paths]

    def nest(*flat: Any) -> Any:
        leaves = dict(zip(paths, (tf.bitcast(t, tf.bfloat16) if b else t for t, b in zip(flat, bf16))))
        return _tf_structure(structure, leaves)

    ds = tf.data.Dataset.from_generator(rows, output_signature=tuple(specs)).map(nest)
    return ds if ragged else ds.unbatch()


def _image_like(info: FieldInfo) -> bool:
    """Rows of shape (C, H, W) from torch tensors (torch's channels-first convention)."""
    return info.kind in ("tensor", "tensor-list") and len(info.shape) == 3


def _tf_rows(info: FieldInfo, rows: Any, move: bool) -> Any:
    """One field's rows as TensorFlow takes them: a block, or a list of ragged rows."""
    if isinstance(rows, list):
        return [_tf_rows(info, r[np.newaxis], move)[0] for r in rows]
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
    src = source(obj)
    paths = select(src, fields)
    refuse_ragged(src, paths, "a dask.array")
    _specs(src, paths, True, "list")  # the key collision check
    if not src.raw and not src.concatenated:
        raise UsageError(f"{src.what} interleaves the batches of several ranks, which dask chunks cannot follow; "
                         "export one rank at a time with stream.rank(r).epoch(e).to_dask(), or use to_numpy()")
    parts = [part for part in src.parts if part.rows]
    index = np.concatenate([part.index for part in parts]) if src.raw and parts else src.export_index
    out = {INDEX: da.from_array(index, chunks=(max(1, min(len(index), 65536)),))}
    for p in paths:
        pieces = [
            da.from_array(
                _Committed(part.fixed[p], part.rows), chunks=(int(part.fixed[p].chunks[0]), *part.fixed[p].shape[1:]),
                name=f"snapstore-{p}-{uuid.uuid4().hex}", asarray=False, fancy=False, lock=False,
                meta=np.empty((0,) * part.fixed[p].ndim, dtype=part.fixed[p].dtype),
            )
            for part in parts
        ]
        if not pieces:  # nothing committed
            info = src.infos[p]
            pieces = [da.from_array(np.empty((0, *info.shape), dtype=numpy_dtype(info.dtype)))]
        out[p] = pieces[0] if len(pieces) == 1 else da.concatenate(pieces)
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
        return read(self.array, start, max(start, stop), key[1:])
