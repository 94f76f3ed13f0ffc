"""Recorded rows back into torch: batch-for-batch replay, a lazy ``Dataset``, a ``TensorDataset``."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from .. import storage
from ..core.manifest import FieldInfo
from ..errors import SchemaError, SnapstoreError
from .numpy import to_numpy
from .plan import RowPlan, gather, refuse_ragged, select

if TYPE_CHECKING:
    from .epoch import Epoch
    from .raw import RawSamples
    from .stream import Stream


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
    plan = obj.row_plan()
    paths = select(plan, None)
    for p in paths:
        if plan.infos[p].dtype == "str":
            raise SchemaError(f"field {p!r} holds strings, which a TensorDataset cannot; use to_numpy() for it")
    refuse_ragged(plan, paths, "a TensorDataset")
    arrays = to_numpy(obj, index=False)
    return TensorDataset(*(_as_tensor(plan.infos[p], arrays[p]) for p in paths))


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

    def __init__(self, plan: RowPlan) -> None:
        self.plan = plan

    def __len__(self) -> int:
        return len(self.plan.batches)

    def __iter__(self) -> Iterator[Any]:
        plan = self.plan
        cursors = {(k, p): storage.Cursor(r.array, s.rows, r.expect) for k, s in enumerate(plan.segments)
                   for p, r in s.readers.items() if isinstance(r, storage.ChunkReader)}
        paths = select(plan, None)
        start = 0
        for k, lo, hi in plan.batches:
            stop = start + hi - lo
            if plan.references and not _stored_together(plan, start, stop, k, lo):
                rows = gather(plan, paths, np.arange(start, stop))  # some rows are read from the raw samples
            else:  # views: the batch copies them
                rows = {p: cursors[k, p].take(lo, hi) if (k, p) in cursors else r.read(lo, hi)
                        for p, r in plan.segments[k].readers.items()}
            start = stop
            yield plan.build(rows, batched=plan.batched)

    def __repr__(self) -> str:
        return f"<ReplayLoader of {self.plan.what}: {len(self)} batches>"


def _stored_together(plan: RowPlan, start: int, stop: int, k: int, lo: int) -> bool:
    """Export positions ``start:stop`` are rows ``lo ..`` of segment ``k``, consecutively."""
    return bool(np.all(plan.segment_of[start:stop] == k)
                and np.array_equal(plan.local_of[start:stop], np.arange(lo, lo + stop - start)))


class StoreDataset(Dataset):
    """A map-style ``Dataset`` over a stream, read lazily from the snapshot; see ``Stream.as_dataset``.

    It keeps only how to open its stream again (``reopen``: the snapshot path,
    storage options and stream name), the rank and the epoch number, and
    opens the snapshot on first use in each process, so it pickles into
    DataLoader workers (``fork`` or ``spawn``).
    """

    def __init__(self, reopen: Callable[[], Stream], stream: str, epoch: int | None, *, rank: int | None = None,
                 length: int) -> None:
        self.reopen = reopen
        self.stream = stream
        self.epoch = epoch
        self.rank = rank
        self._len = length
        self._target: Any = None
        self._pid: int | None = None

    def _open(self) -> Any:
        if self._target is None or self._pid != os.getpid():
            stream = self.reopen()
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
        return f"StoreDataset(stream={self.stream!r}, {what}, {self._len} items)"
