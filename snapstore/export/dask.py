"""``to_dask``: recorded rows as chunk-aligned ``dask.array``s (Dask is optional)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.manifest import numpy_dtype
from ..errors import SnapstoreError, UsageError
from ..read.numpy import INDEX, export_specs
from ..read.plan import Fields, refuse_ragged, select

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
    if not plan.raw and not plan.concatenated:
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
