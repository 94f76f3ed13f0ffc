"""``to_dask``: recorded rows as chunk-aligned ``dask.array``s (Dask is optional)."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.manifest import numpy_dtype
from ..errors import SnapstoreError, UsageError
from ..read.numpy import INDEX, export_specs
from ..read.plan import Fields, RowPlan, gather, refuse_ragged, select

if TYPE_CHECKING:
    from ..read.epoch import Epoch
    from ..read.raw import RawSamples


def to_dask(obj: Epoch | RawSamples, fields: Fields = None) -> dict[str, Any]:
    """One chunk-aligned ``dask.array`` per field plus ``"index"``; see ``Epoch.to_dask``."""
    try:
        import dask.array as da
    except ImportError:
        raise SnapstoreError("to_dask needs Dask: pip install 'snapstore[dask]'") from None
    plan = obj.row_plan()
    paths = select(plan, fields)
    refuse_ragged(plan, paths, "a dask.array")
    export_specs(plan, paths, True, "list")  # the key collision check
    interleaved = any(b[0] < a[0] for a, b in zip(plan.batches, plan.batches[1:]))
    if plan.references and not interleaved:  # some rows are read from the raw samples: dask chunks of positions
        return _gathered(plan, paths)
    if not plan.raw and (interleaved or not plan.concatenated):
        raise UsageError(f"{plan.what} interleaves the batches of several ranks, which dask chunks cannot follow; "
                         "export one rank at a time with stream.rank(r).epoch(e).to_dask(), or use to_numpy()")
    parts = [part for part in plan.segments if part.rows]
    index = np.concatenate([part.index for part in parts]) if plan.raw and parts else plan.export_index
    out = {INDEX: da.from_array(index, chunks=(max(1, min(len(index), 65536)),))}
    for p in paths:
        pieces = [_committed(part.fixed(p), part.rows, p) for part in parts]
        if not pieces:  # nothing committed
            info = plan.infos[p]
            pieces = [da.from_array(np.empty((0, *info.shape), dtype=numpy_dtype(info.dtype)))]
        out[p] = pieces[0] if len(pieces) == 1 else da.concatenate(pieces)
    return out


def _gathered(plan: RowPlan, paths: list[str]) -> dict[str, Any]:
    """Dask arrays of an epoch some of whose rows are stored as their raw samples: each task gathers as many
    export positions as a stored chunk of the first row's segment holds (fixed fields only: ``refuse_ragged`` ran)."""
    import dask.array as da

    chunk = int(plan.segments[int(plan.segment_of[0])].fixed(paths[0]).array.chunks[0]) if plan.rows and paths else 1
    step = max(1, min(plan.rows, chunk))
    out = {INDEX: da.from_array(plan.export_index, chunks=(step,))}
    for p in paths:
        info = plan.infos[p]
        shape = tuple(int(d or 0) for d in info.shape)
        read = functools.partial(_gather_rows, plan, p)
        out[p] = _dask_rows(_Rows(read, (plan.rows, *shape), numpy_dtype(info.dtype)), step, p)
    return out


def _committed(reader: Any, rows: int, path: str) -> Any:
    """The first ``rows`` rows of a stored array, read through its ``storage.ChunkReader``, chunked as stored."""
    array = reader.array
    return _dask_rows(_Rows(reader.read, (rows, *array.shape[1:]), array.dtype), int(array.chunks[0]), path)


def _gather_rows(plan: RowPlan, path: str, start: int, stop: int) -> np.ndarray:
    return gather(plan, [path], np.arange(start, stop))[path]


def _dask_rows(source: _Rows, chunk: int, path: str) -> Any:
    """``source`` as a ``dask.array`` of ``chunk`` rows a chunk, read lazily, one task a chunk."""
    import dask.array as da

    return da.from_array(source, chunks=(chunk, *source.shape[1:]), name=f"snapstore-{path}-{uuid.uuid4().hex}",
                         asarray=False, fancy=False, lock=False, meta=np.empty((0,) * source.ndim, dtype=source.dtype))


class _Rows:
    """One field's rows, read by ``read(start, stop)``, for ``dask.array.from_array``: a stored array's
    committed rows (its ``ChunkReader``), or rows at export positions gathered through a ``RowPlan``."""

    def __init__(self, read: Callable[[int, int], np.ndarray], shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.read, self.shape, self.dtype, self.ndim = read, shape, dtype, len(shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        rows = key[0] if key else slice(None)
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise UsageError(f"rows are read by contiguous row slices, not {rows!r}")
        start, stop, _ = rows.indices(self.shape[0])
        return self.read(start, max(start, stop))[(slice(None), *key[1:])]
