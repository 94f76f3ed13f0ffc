"""``RecordingLoader``: the training-thread side of recording one stream.

It captures each batch the loader yields (indices, worker, raw samples,
seen rows), checks it against the stream's schema, copies it and hands it
to the recorder's background writer; ``log`` does the same for outputs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from .. import config, storage
from ..core import layout
from ..core.datasets import bases, is_wrapped, raw_source
from ..core.manifest import EpochManifest, FieldInfo, RawManifest, StreamManifest
from ..core.rows import DeviceCopy, Ragged
from ..core.schema import flatten, reconcile
from ..errors import SchemaError, UsageError
from ..storage.tree import epoch_groups, epoch_pieces
from .capture import CaptureCollate, CaptureIterable, CaptureMap, RawBlock, Tagged, Tags
from .provenance import epoch_provenance, utc_now
from .session import WriteSession
from .sinks import EpochSink, RawSink


def _expected_rows(loader: DataLoader) -> int | None:
    """Rows one epoch will yield, when the loader can tell without iterating."""
    try:
        if isinstance(loader.dataset, IterableDataset):
            return None
        if loader.batch_sampler is None:
            return len(loader.sampler)  # type: ignore[arg-type]
        if type(loader.batch_sampler) is torch.utils.data.BatchSampler:
            n = len(loader.batch_sampler.sampler)  # type: ignore[arg-type]
            bs = loader.batch_sampler.batch_size
            return n - n % bs if loader.batch_sampler.drop_last else n
    except TypeError:  # a sampler without __len__
        pass
    return None


class RecordingLoader:
    """A DataLoader that records what it yields; returned by ``Recorder.wrap``.

    Iterating it once is one epoch and yields exactly the loader's batches
    (same objects, types, dtypes, shapes and values). ``len()`` and every
    attribute it does not define (``sampler``, ``dataset``, ``batch_size``
    ...) are the loader's, so ``stream.sampler.set_epoch(e)`` keeps working.
    """

    def __init__(self, session: WriteSession, loader: DataLoader, name: str, path: str, raw: Any,
                 resume_epoch: bool, *, seen: Any = "full") -> None:
        self._session = session
        self._seen = seen
        self._loader = loader
        self._name = name
        iterable = isinstance(loader.dataset, IterableDataset)
        batched = loader.batch_size is not None if iterable else loader.batch_sampler is not None
        dataset_len = None if iterable else len(loader.dataset)  # type: ignore[arg-type]
        fetch_raw, record_raw = raw_source(raw, loader.dataset)

        root = session.root
        group = storage.child(root, path)
        if group is not None and _unfinished(group, layout.STREAM_ATTR):
            # a writer killed between creating the stream's group and writing its manifest: readers skip
            # the empty group (storage.tree.manifested); the stream starts afresh in it
            storage.write_attr(group, layout.STREAM_ATTR,
                               StreamManifest(name, iterable, batched, dataset_len).to_dict())
        if group is None:
            group = storage.create_group(root, path)
            self._manifest = StreamManifest(name, iterable, batched, dataset_len)
            storage.write_attr(group, layout.STREAM_ATTR, self._manifest.to_dict())
        else:
            self._manifest = StreamManifest.from_dict(group.attrs.get(layout.STREAM_ATTR),
                                                      where=f"{session.path}/{path}")
            if self._manifest.dataset_len != dataset_len:
                raise UsageError(
                    f"stream {name!r} in {session.path} was recorded from a dataset of {self._manifest.dataset_len} "
                    f"samples; this loader's dataset has {dataset_len}: record it under another name"
                )
            if (self._manifest.iterable, self._manifest.batched) != (iterable, batched):
                raise UsageError(
                    f"stream {name!r} in {session.path} was recorded from a loader with "
                    f"iterable={self._manifest.iterable}, batched={self._manifest.batched}; "
                    f"this loader has iterable={iterable}, batched={batched}: record it under another name"
                )
        self._group = group
        where = f"{session.path}/{path}"
        storage.require_group(group, layout.EPOCHS_GROUP)
        epochs = epoch_groups(group, where)  # the epochs committed so far, by number
        self._next_epoch = 1 + max(epochs, default=-1)
        self._continue = _continuation(epochs, name) if resume_epoch else None

        raw_group = storage.require_group(group, layout.RAW_GROUP)
        committed = RawManifest.from_dict(raw_group.attrs.get(layout.RAW_ATTR, {}), where=f"{where}/{layout.RAW_GROUP}")
        raw_rows = committed.rows
        self._recorded: np.ndarray | set[int]
        shared = None
        if record_raw and dataset_len is not None:
            shared = torch.zeros(dataset_len, dtype=torch.bool).share_memory_()
            seen = shared.numpy()
            index = storage.child(raw_group, layout.RAW_INDEX)
            if raw_rows and index is not None:
                seen[storage.ChunkReader(index, rows=raw_rows).read(0, raw_rows)] = True
            self._recorded = seen
        else:
            index = storage.child(raw_group, layout.RAW_INDEX)
            self._recorded = set()
            if raw_rows and index is not None:
                self._recorded.update(storage.ChunkReader(index, rows=raw_rows).read(0, raw_rows).tolist())
        capacity = dataset_len or config.DEFAULT_UNKNOWN_ROWS
        self._raw_sink = RawSink(raw_group, raw_rows, committed.ragged, capacity, session.chunks)
        session.raws.append(self._raw_sink)
        if is_wrapped(loader.dataset) and not self._manifest.base_datasets:
            self._update_manifest(base_datasets=[_class_name(b) for b in bases(loader.dataset)])

        self._batched = batched
        capture = (CaptureIterable(loader.dataset, fetch_raw, record_raw) if iterable
                   else CaptureMap(loader.dataset, fetch_raw, shared))
        self._inner = _rebuild(loader, capture, CaptureCollate(loader.collate_fn), iterable)
        self._epoch: _EpochCursor | None = None

    # -- transparency -----------------------------------------------------
    def __len__(self) -> int:
        return len(self._loader)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._loader, name)

    def __repr__(self) -> str:
        return f"RecordingLoader(name={self._name!r}, loader={self._loader!r})"

    @property
    def name(self) -> str:
        """The stream name."""
        return self._name

    @property
    def loader(self) -> DataLoader:
        """The wrapped DataLoader."""
        return self._loader

    # -- one epoch --------------------------------------------------------
    def __iter__(self):
        self._session.check_open()
        self.end_epoch(complete=False)  # a previous iteration abandoned mid-way
        cursor = self._begin_epoch()
        complete = False
        try:
            for tagged in self._inner:
                self._hand_off(cursor, tagged)
                yield tagged.batch
            complete = True
        finally:
            cursor.current = None
            if self._epoch is cursor:
                self.end_epoch(complete=complete)

    def _begin_epoch(self) -> _EpochCursor:
        if self._continue is not None:
            (number, part), self._continue = self._continue, None
        else:
            number, part = self._next_epoch, 0
            self._next_epoch += 1
        manifest = EpochManifest(number, 0, 0, False, utc_now(), None, epoch_provenance(self._loader), part=part)
        capacity = _expected_rows(self._loader) or config.DEFAULT_UNKNOWN_ROWS
        cursor = _EpochCursor(number)
        self._epoch = cursor
        self._session.submit(self._open_sink, cursor, manifest, capacity)
        return cursor

    def _open_sink(self, cursor: _EpochCursor, manifest: EpochManifest, capacity: int) -> None:  # writer thread
        name = layout.epoch_name(manifest.number)
        if manifest.part:
            name = f"{name}/{layout.CONTINUED_GROUP}/{manifest.part}"
        epochs = self._group[layout.EPOCHS_GROUP]
        group = storage.child(epochs, name)
        if group is None or not _unfinished(group, layout.EPOCH_ATTR):  # (an unfinished one is taken over)
            group = storage.create_group(epochs, name)
        cursor.sink = EpochSink(group, manifest, capacity, self._session.chunks, seen=self._seen)
        self._session.epochs.append(cursor.sink)

    def end_epoch(self, *, complete: bool) -> None:
        """End the epoch being iterated, if any: commit it durably and return once that is done (after a
        writer failure there is nothing to commit: ``RecordingError``, or nothing with ``on_error="warn"``)."""
        cursor, self._epoch = self._epoch, None
        if cursor is not None and not self._session.failed:
            self._session.submit(self._close_sink, cursor, complete)
            self._session.drain()

    def _close_sink(self, cursor: _EpochCursor, complete: bool) -> None:  # writer thread
        for raw in self._session.raws:  # the raw samples its rows refer to, first
            raw.commit(durable=True)
        cursor.sink.commit(complete=complete, final=True)
        self._session.epochs.remove(cursor.sink)

    def _hand_off(self, cursor: _EpochCursor, tagged: Tagged) -> None:
        n = len(tagged.tags.indices)
        if self._session.recording():
            self._record(cursor, tagged, n)
        # the loop's view of the epoch moves on whether or not the batch was recorded (after a writer
        # failure with on_error="warn", log() and later epochs keep working, unrecorded)
        cursor.current = (cursor.rows, n)
        cursor.rows += n
        cursor.batches += 1

    def _record(self, cursor: _EpochCursor, tagged: Tagged, n: int) -> None:
        tags = tagged.tags
        where = f"stream {self._name!r} epoch {cursor.number} batch {cursor.batches}"
        structure, fields = flatten(tagged.batch, n if self._batched else None, row_lists=self._row_lists())
        for path, (_, rows) in fields.items():
            if len(rows) != n:
                raise SchemaError(f"{where}: collate_fn returned {len(rows)} rows in field {path!r} for {n} samples; "
                                  "snapstore records one row per fetched sample")
        infos = self._reconcile("structure", "fields", structure, fields, where)
        if tags.raw is not None:
            self._hand_off_raw(tags.raw)
        buffers = self._session.buffers
        for lo, hi in _slices(n, [rows for _, rows in fields.values()]):
            part = {p: rows if hi - lo == n else rows[lo:hi] for p, (_, rows) in fields.items()}
            held = sum(_nbytes(rows) for rows in part.values())
            if not self._session.reserve(held):
                return
            copies = {p: (infos[p], _copy(buffers, rows)) for p, rows in part.items()}
            base = None if tags.base is None else (tags.base[0][lo:hi], tags.base[1][lo:hi])
            self._session.submit(_put_rows, cursor, cursor.rows + lo,
                                 Tags(tags.indices[lo:hi], None, tags.worker, base), copies, buffers,
                                 n if hi == n else None, release=held)

    def _row_lists(self) -> frozenset[str] | None:
        """Fields that earlier batches showed to be lists of per-row tensors (None before the first batch)."""
        if self._manifest.structure is None:
            return None
        return frozenset(p for p, f in self._manifest.fields.items() if f.kind in ("tensor-list", "ndarray-list"))

    def _reconcile(self, structure_key: str, fields_key: str, structure: Any, fields: dict[str, Any],
                   where: str) -> dict[str, FieldInfo]:
        """The stream's fields after this batch (or raw block); records schema changes in the manifest."""
        infos = {p: info for p, (info, _) in fields.items()}
        old = getattr(self._manifest, fields_key)
        if getattr(self._manifest, structure_key) is None:
            self._update_manifest(**{structure_key: structure, fields_key: infos})
            return infos
        merged = reconcile(getattr(self._manifest, structure_key), old, structure, infos, where)
        if merged != old:
            self._update_manifest(**{fields_key: merged})
        return merged

    def _hand_off_raw(self, block: RawBlock) -> None:
        infos = self._reconcile("raw_structure", "raw_fields", block.structure, block.fields,
                                f"stream {self._name!r} raw sample {block.indices[0]}")
        if isinstance(self._recorded, set):
            new = []
            for k, i in enumerate(block.indices.tolist()):
                if i not in self._recorded:
                    self._recorded.add(i)
                    new.append(k)
            keep = np.array(new, dtype=np.int64)
        else:
            _, first = np.unique(block.indices, return_index=True)
            keep = np.sort(first[~self._recorded[block.indices[first]]])
            self._recorded[block.indices[keep]] = True
        if len(keep) == 0:
            return
        if len(keep) == len(block.indices):  # every sample is new: the block is already the recorder's own
            rows = {p: (infos[p], r) for p, (_, r) in block.fields.items()}
        else:
            rows = {p: (infos[p], r.take(keep) if isinstance(r, Ragged) else r[keep])
                    for p, (_, r) in block.fields.items()}
        held = sum(_nbytes(r) for _, r in rows.values())
        if self._session.reserve(held):
            self._session.submit(self._raw_sink.put, RawBlock(block.indices[keep], block.structure, rows), release=held)

    def _update_manifest(self, **changes: Any) -> None:
        self._manifest = dataclasses.replace(self._manifest, **changes)
        self._session.submit(storage.write_attr, self._group, layout.STREAM_ATTR, self._manifest.to_dict())

    def log(self, **outputs: Any) -> None:
        """Record per-row outputs of the batch just yielded (predictions, losses).

        Parameters
        ----------
        **outputs : torch.Tensor or numpy.ndarray
            Each with the current batch's size as its first dimension, e.g.
            ``loss=criterion(model(x), y)`` with ``reduction="none"``. Stored in
            ``ep.outputs[name]``, aligned with ``ep.order``.

        Raises
        ------
        UsageError
            Called outside an iteration, or with a name that is not usable.
        SchemaError
            A value whose first dimension is not the batch size, or whose
            dtype/shape differs from earlier batches.
        """
        cursor = self._epoch
        if cursor is None or cursor.current is None:
            raise UsageError(f"log() on stream {self._name!r} needs a current batch: "
                             "call it inside the loop over the stream")
        if not self._session.recording():  # on_error="warn" after a writer failure: training goes on
            return
        pos, n = cursor.current
        staged = {}
        for name, value in outputs.items():
            if not name.isidentifier():
                raise UsageError(f"output name {name!r} is not usable; use an identifier such as 'loss' or 'pred'")
            if isinstance(value, (list, tuple)):
                value = np.asarray(value)
            if not isinstance(value, (torch.Tensor, np.ndarray)):
                raise SchemaError(f"log({name}=...) got a {type(value).__name__}; "
                                  "pass a tensor or array with one value per row")
            _, fields = flatten(value, n if self._batched else None, name)
            info, rows = fields[name]
            info = FieldInfo("ndarray", info.dtype, info.shape)
            old = self._manifest.outputs.get(name)
            if old is None:
                self._update_manifest(outputs={**self._manifest.outputs, name: info})
            elif old != info:
                raise SchemaError(f"log({name}=...) got dtype {info.dtype} row shape {info.shape}; "
                                  f"earlier batches logged dtype {old.dtype} row shape {old.shape}")
            staged[name] = (info, _private(rows))
        self._session.submit(_put_outputs, cursor, pos, staged)


class _EpochCursor:
    """Training-thread view of the epoch being iterated."""

    __slots__ = ("number", "rows", "batches", "current", "sink")

    def __init__(self, number: int) -> None:
        self.number = number
        self.rows = 0
        self.batches = 0
        self.current: tuple[int, int] | None = None  # (first position, rows) of the batch just yielded
        self.sink: EpochSink  # set in the writer thread


def _unfinished(group: storage.Group, attr: str) -> bool:
    """Whether ``group`` is what a writer killed right after creating it leaves: no manifest ``attr``
    and nothing in it."""
    return attr not in group.attrs and not storage.members(group, group.path)


def _continuation(epochs: dict[int, tuple[storage.Group, str]], name: str) -> tuple[int, int]:
    """(epoch, piece) where a resumed run continues the stream's last epoch; UsageError if it is complete."""
    if not epochs:
        raise UsageError(f"resume_epoch=True, but stream {name!r} has no recorded epoch to continue")
    number = max(epochs)
    k, last, where = epoch_pieces(*epochs[number])[-1]
    if EpochManifest.from_dict(last.attrs.get(layout.EPOCH_ATTR), where=where).complete:
        raise UsageError(f"epoch {number} of stream {name!r} is complete; there is nothing to continue: "
                         "drop resume_epoch=True")
    return number, k + 1


def _put_rows(cursor: _EpochCursor, pos: int, tags: Tags, fields: dict, buffers: storage.Buffers,
              batch: int | None) -> None:
    cursor.sink.put_rows(pos, tags, fields, batch)  # copies the rows into the chunk staging buffers
    buffers.give_back(rows for _, rows in fields.values())


def _copy(buffers: storage.Buffers, rows: Any) -> Any:
    """A private copy of ``rows`` (see ``_private``); arrays go into recycled buffers (copying into
    pages used before runs ~3x faster than into fresh ones, and the copy is most of what recording
    costs the training thread)."""
    if not isinstance(rows, np.ndarray):
        return _private(rows)
    buf = buffers.take(rows.shape, rows.dtype)
    np.copyto(buf, rows)
    return buf


def _put_outputs(cursor: _EpochCursor, pos: int, outputs: dict) -> None:
    cursor.sink.put_outputs(pos, outputs)


def _slices(n: int, blocks: list[Any]) -> list[tuple[int, int]]:
    """Row ranges ``[lo, hi)`` a batch of ``n`` rows is handed over in: each at most
    ``config.HAND_OFF_BYTES`` of ``blocks`` (one range when a block is not a plain array)."""
    if not all(isinstance(b, np.ndarray) for b in blocks):
        return [(0, n)]
    row_bytes = sum(b.nbytes for b in blocks) // max(n, 1)
    step = max(1, config.HAND_OFF_BYTES // max(row_bytes, 1))
    return [(lo, min(n, lo + step)) for lo in range(0, n, step)] or [(0, 0)]


def _nbytes(rows: Any) -> int:
    """Bytes of host memory a row block holds (or will hold, for a device copy)."""
    if isinstance(rows, Ragged):
        return int(rows.values.nbytes + rows.shapes.nbytes)
    if isinstance(rows, np.ndarray):
        return int(rows.nbytes)
    return 0


def _private(rows: Any) -> Any:
    """Rows the training loop can no longer change: a copy of views into the batch.

    Packed ragged rows and device copies are already snapstore's own memory.
    """
    return rows if isinstance(rows, (Ragged, DeviceCopy)) else np.array(rows, copy=True)


def _class_name(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _rebuild(loader: DataLoader, dataset: Any, collate: CaptureCollate, iterable: bool) -> DataLoader:
    """A DataLoader with the loader's public settings around the capture wrappers."""
    kwargs: dict[str, Any] = {
        "num_workers": loader.num_workers,
        "collate_fn": collate,
        "pin_memory": loader.pin_memory,
        "timeout": loader.timeout,
        "worker_init_fn": loader.worker_init_fn,
        "multiprocessing_context": loader.multiprocessing_context,
        "generator": loader.generator,
        "persistent_workers": loader.persistent_workers,
        "in_order": getattr(loader, "in_order", True),
    }
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
    if loader.pin_memory_device:
        kwargs["pin_memory_device"] = loader.pin_memory_device
    if iterable:
        return DataLoader(dataset, batch_size=loader.batch_size, drop_last=loader.drop_last, **kwargs)
    if loader.batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=loader.batch_sampler, **kwargs)
    return DataLoader(dataset, batch_size=None, sampler=loader.sampler, **kwargs)
