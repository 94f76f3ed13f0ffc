"""``to_dask``: recorded rows as chunk-aligned ``dask.array``s (Dask is optional)."""

from __future__ import annotations

import uuid
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
        pieces = [
            da.from_array(
                _Committed(part.fixed(p), part.rows),
                chunks=(int(part.fixed(p).array.chunks[0]), *part.fixed(p).array.shape[1:]),
                name=f"snapstore-{p}-{uuid.uuid4().hex}", asarray=False, fancy=False, lock=False,
                meta=np.empty((0,) * part.fixed(p).array.ndim, dtype=part.fixed(p).array.dtype),
            )
            for part in parts
        ]
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
        source = _Positions(plan, p, (plan.rows, *shape), numpy_dtype(info.dtype))
        out[p] = da.from_array(source, chunks=(step, *shape),
                               name=f"snapstore-{p}-{uuid.uuid4().hex}", asarray=False, fancy=False, lock=False,
                               meta=np.empty((0,) * source.ndim, dtype=source.dtype))
    return out


class _Positions:
    """One field's rows at export positions, gathered through a ``RowPlan``, for ``dask.array.from_array``."""

    def __init__(self, plan: RowPlan, path: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.plan, self.path, self.shape, self.dtype, self.ndim = plan, path, shape, dtype, len(shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        rows = key[0] if key else slice(None)
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise UsageError(f"rows are read by contiguous row slices, not {rows!r}")
        start, stop, _ = rows.indices(self.shape[0])
        block = gather(self.plan, [self.path], np.arange(start, max(start, stop)))[self.path]
        return block[(slice(None), *key[1:])]


class _Committed:
    """The first ``rows`` rows of a stored array (read through its ``storage.ChunkReader``), for
    ``dask.array.from_array``."""

    def __init__(self, reader: Any, rows: int) -> None:
        self.reader = reader
        self.shape = (rows, *reader.array.shape[1:])
        self.dtype = reader.array.dtype
        self.ndim = reader.array.ndim

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        rows = key[0] if key else slice(None)
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise UsageError(f"committed rows are read by contiguous row slices, not {rows!r}")
        start, stop, _ = rows.indices(self.shape[0])
        return self.reader.read(start, max(start, stop))[(slice(None), *key[1:])]
