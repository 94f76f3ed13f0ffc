"""``to_numpy``: an epoch's seen rows or a stream's raw samples as NumPy arrays, filled chunk by chunk."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from ..core.manifest import FieldInfo, numpy_dtype
from ..errors import SchemaError, UsageError
from .blocks import blocks, row_blocks
from .plan import Fields, RaggedMode, RowPlan, export_shapes, ragged_block_rows, select

if TYPE_CHECKING:
    from .epoch import Epoch
    from .raw import RawSamples

INDEX = "index"
"""Key of the dataset-index array in every export."""

LENGTHS = ".lengths"
"""Suffix of the key holding a padded ragged field's row lengths: ``"tokens.lengths"``."""

RAGGED_MODES = ("list", "pad")

Specs = dict[str, tuple[tuple[int, ...], np.dtype]]


def out_specs(obj: Epoch | RawSamples, fields: Fields = None, *, index: bool = True,
              ragged: RaggedMode = "list") -> Specs:
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
    plan = obj.row_plan()
    return export_specs(plan, select(plan, fields), index, _mode(ragged))


def _mode(ragged: str) -> str:
    if ragged not in RAGGED_MODES:
        raise UsageError(f"ragged={ragged!r} is not one of {RAGGED_MODES}: 'list' (a list of row arrays) or "
                         "'pad' (zero-padded rows plus '<field>.lengths')")
    return ragged


def export_specs(plan: RowPlan, paths: list[str], index: bool, ragged: str) -> Specs:
    specs: Specs = {INDEX: ((plan.rows,), np.dtype(np.int64))} if index else {}
    keys = list(specs)
    for p in paths:
        info = plan.infos[p]
        dtype = numpy_dtype(info.dtype)
        if not plan.is_ragged(p):
            specs[p] = ((plan.rows, *info.shape), dtype)  # type: ignore[arg-type]
            keys.append(p)
        elif ragged == "pad":
            shapes = export_shapes(plan, p)
            widest = tuple(int(d) for d in shapes.max(axis=0, initial=0)) if len(info.shape) else ()
            specs[p] = ((plan.rows, *widest), dtype)
            varying = _varying(info)
            specs[p + LENGTHS] = ((plan.rows,) if len(varying) == 1 else (plan.rows, len(varying)), np.dtype(np.int64))
            keys += [p, p + LENGTHS]
        else:
            keys.append(p)
    clash = sorted({k for k in keys if keys.count(k) > 1})
    if clash:
        raise SchemaError(f"{plan.what} has fields whose export keys collide: {clash} ('index' is the dataset index, "
                          f"'<field>{LENGTHS}' a padded field's lengths); pass fields=[...] without them, "
                          "or index=False")
    return specs


def _varying(info: FieldInfo) -> list[int]:
    """Row dimensions a ragged field's rows differ in (all of them when the schema does not say)."""
    varying = [i for i, d in enumerate(info.shape) if d is None]
    return varying or list(range(len(info.shape)))


def to_numpy(
    obj: Epoch | RawSamples,
    *,
    fields: Fields = None,
    out: Mapping[str, np.ndarray] | None = None,
    ragged: RaggedMode = "list",
    progress: Callable[[int], None] | None = None,
    index: bool = True,
) -> dict[str, Any]:
    """Fill one array per field (and ``"index"``) chunk by chunk; see ``Epoch.to_numpy``.

    ``progress(nbytes)`` is called after each block is written (the CLI's
    progress bar). ``index=False`` leaves out ``"index"``.
    """
    plan = obj.row_plan()
    paths = select(plan, fields)
    specs = export_specs(plan, paths, index, _mode(ragged))
    given = dict(out or {})
    lists = [p for p in paths if plan.is_ragged(p) and ragged == "list"]
    if any(p in given for p in lists):
        raise UsageError(f"out= cannot hold the ragged fields {[p for p in lists if p in given]} of {plan.what} "
                         "as lists; leave them out of out=, or pass ragged='pad'")
    arrays = _prepare_out(plan, specs, given)
    if index:
        arrays[INDEX][...] = plan.export_index
    result: dict[str, Any] = {INDEX: arrays[INDEX]} if index else {}
    for p in paths:
        if p in lists:
            result[p] = _ragged_list(plan, p, progress)
            continue
        if plan.is_ragged(p):
            _fill_padded(plan, p, arrays[p], arrays[p + LENGTHS], progress)
            result[p], result[p + LENGTHS] = arrays[p], arrays[p + LENGTHS]
        elif plan.references:  # some rows are raw rows, read at each position that saw them
            result[p] = arrays[p]
            at = 0
            for piece in row_blocks(plan, [p]):
                rows = cast(np.ndarray, piece[p])
                arrays[p][at : at + len(rows)] = rows
                at += len(rows)
                if progress is not None:
                    progress(rows.nbytes)
        else:
            result[p] = arrays[p]
            for k, part in enumerate(plan.segments):
                dest = plan.dest(k) if part.rows else None
                for lo, hi, block in blocks(part.fixed(p), part.rows) if part.rows else ():
                    _put(arrays[p], dest, lo, hi, block)
                    if progress is not None:
                        progress(block.nbytes)
        for a in (result[p], result.get(p + LENGTHS)):
            if isinstance(a, np.memmap):
                a.flush()
    return result


def _put(target: np.ndarray, dest: Any, lo: int, hi: int, block: np.ndarray) -> None:
    """Stored rows ``lo:hi`` of a segment into ``target`` at their export positions (``dest`` from ``RowPlan.dest``)."""
    if isinstance(dest, slice):
        target[dest.start + lo : dest.start + hi] = block
        return
    where = dest[lo:hi]
    keep = where >= 0
    if keep.all():
        target[where] = block
    elif keep.any():
        target[where[keep]] = block[keep]


def _prepare_out(plan: RowPlan, specs: Specs, given: dict[str, Any]) -> dict[str, np.ndarray]:
    extra = [k for k in given if k not in specs]
    if extra:
        raise UsageError(f"out has arrays for {extra}, which this export of {plan.what} does not write; "
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
                f"out[{key!r}] has shape {a.shape} and dtype {a.dtype}, but {plan.what} needs shape {shape} and dtype "
                f"{dtype} for it; allocate it with e.g. numpy.lib.format.open_memmap(path, mode='w+', "
                f"dtype={str(dtype)!r}, shape={shape}) (snapstore.export.out_specs gives every shape and dtype)"
            )
        elif not a.flags.writeable:
            raise UsageError(f"out[{key!r}] is read-only; pass a writeable array (a memmap opened with mode='w+' "
                             "or 'r+')")
        arrays[key] = a
    return arrays


def _ragged_blocks(plan: RowPlan, path: str) -> Iterator[tuple[Any, int, int, list[np.ndarray]]]:
    """``(dest, start, stop, rows)`` for blocks of stored rows of a ragged field, segment by segment."""
    for k, part in enumerate(plan.segments):
        if not part.rows:
            continue
        reader = part.ragged(path)
        dest = plan.dest(k)
        step = ragged_block_rows(plan.infos[path], reader.shapes)
        for lo in range(0, part.rows, step):
            hi = min(lo + step, part.rows)
            yield dest, lo, hi, reader.read(lo, hi)


def _ragged_list(plan: RowPlan, path: str, progress: Callable[[int], None] | None) -> list[np.ndarray]:
    rows: list[Any] = [None] * plan.rows
    for dest, lo, hi, part in _ragged_blocks(plan, path):
        where = range(dest.start + lo, dest.start + hi) if isinstance(dest, slice) else dest[lo:hi].tolist()
        for k, r in zip(where, part):
            if k >= 0:
                rows[k] = r
        if progress is not None:
            progress(sum(r.nbytes for r in part))
    return rows


def _fill_padded(plan: RowPlan, path: str, target: np.ndarray, lengths: np.ndarray,
                 progress: Callable[[int], None] | None) -> None:
    """Zero-padded rows of a ragged field, block by block, and the sizes of its varying dimensions."""
    lengths[...] = export_shapes(plan, path)[:, _varying(plan.infos[path])].reshape(lengths.shape)
    for dest, lo, hi, part in _ragged_blocks(plan, path):
        padded = np.zeros((hi - lo, *target.shape[1:]), dtype=target.dtype)
        for k, r in enumerate(part):
            where: tuple[Any, ...] = (k, *[slice(0, n) for n in r.shape])
            padded[where] = r
        _put(target, dest, lo, hi, padded)
        if progress is not None:
            progress(padded.nbytes)
