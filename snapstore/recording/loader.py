"""``RecordingLoader``: the training-thread side of recording one stream.

It iterates the user's loader itself (its own class and ``__iter__``), takes
the tags ``capture.CaptureCollate`` put on each batch (indices, worker, raw
samples), checks the seen rows against the stream's schema, copies them into
shared memory and sends them to the recorder's writer process (``writer``);
``log`` does the same for outputs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from .. import config, storage
from ..core import layout
from ..core.datasets import Untransformed, bases, is_wrapped, raw_source
from ..core.manifest import EpochManifest, FieldInfo, RawManifest, StreamManifest
from ..core.rows import Ragged, host_rows
from ..core.schema import flatten, reconcile
from ..core.seen import SeenPolicy
from ..errors import SchemaError, UsageError
from ..storage.tree import epoch_groups, epoch_pieces
from .capture import CaptureCollate, RawBlock, Tagged, TeeLog, install_tees, remove_tees
from .provenance import epoch_provenance, utc_now
from .session import WriteSession
from .sinks import unfinished


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
    """The user's loader, recorded as it runs; returned by ``Recorder.wrap``.

    Iterating it once is one epoch: it iterates the loader itself (its class,
    ``__iter__``, workers, sampler and hooks) and yields exactly the loader's
    batches (the same objects), reading indices, workers and raw samples from
    the tags ``capture.CaptureCollate`` puts on them (docs/INTEGRATIONS.md).
    ``len()`` and every attribute it does not define (``sampler``,
    ``dataset``, ``state_dict`` ...) are the loader's, for reading and
    setting, so ``stream.sampler.set_epoch(e)`` keeps working.
    """

    def __init__(self, session: WriteSession, loader: DataLoader, name: str, path: str, raw: Any,
                 resume_epoch: bool, *, seen: Any = "full") -> None:
        self._session = session
        self._seen = SeenPolicy.parse(seen)
        self._paused = False
        self._loader = loader
        self._name = name
        iterable = isinstance(loader.dataset, IterableDataset)
        batched = loader.batch_size is not None if iterable else loader.batch_sampler is not None
        dataset_len = None if iterable else len(loader.dataset)  # type: ignore[arg-type]
        fetch_raw, record_raw = raw_source(raw, loader.dataset)

        root = session.root
        group = storage.child(root, path)
        if group is not None and unfinished(group, layout.STREAM_ATTR):
            # a writer killed between creating the stream's group and writing its manifest: readers skip
            # the empty group (storage.tree.manifested); the stream starts afresh in it
            storage.write_attr(group, layout.STREAM_ATTR,
                               StreamManifest(name, iterable, batched, dataset_len, seen=self._seen).to_dict())
        if group is None:
            group = storage.create_group(root, path)
            self._manifest = StreamManifest(name, iterable, batched, dataset_len, seen=self._seen)
            storage.write_attr(group, layout.STREAM_ATTR, self._manifest.to_dict())
        else:
            self._manifest = StreamManifest.from_dict(group.attrs.get(layout.STREAM_ATTR),
                                                      where=f"{session.path}/{path}")
            if self._manifest.dataset_len != dataset_len:
                raise UsageError(
                    f"stream {name!r} in {session.path} was recorded from a dataset of {self._manifest.dataset_len} "
                    f"samples; this loader's dataset has {dataset_len}: record it under another name"
                )
            if self._manifest.iterable != iterable or (batched and not self._manifest.batched):
                raise UsageError(
                    f"stream {name!r} in {session.path} was recorded from a loader with "
                    f"iterable={self._manifest.iterable}, batched={self._manifest.batched}; "
                    f"this loader has iterable={iterable}, batched={batched}: record it under another name"
                )
            if self._manifest.seen != self._seen:  # the manifest names the policy the stream is recorded under now
                self._manifest = dataclasses.replace(self._manifest, seen=self._seen)
                storage.write_attr(group, layout.STREAM_ATTR, self._manifest.to_dict())
        self._path = path
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
            shared = _shared_zeros(dataset_len, torch.bool)
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
        session.send("open_stream", path, raw_rows, committed.ragged, capacity)
        if is_wrapped(loader.dataset) and not self._manifest.base_datasets:
            self._update_manifest(base_datasets=[_class_name(b) for b in bases(loader.dataset)])

        self._batched = self._manifest.batched
        self._switch = _shared_zeros(1, torch.int32)
        raw_plan: Any = None
        if record_raw:
            raw_plan = "tee" if isinstance(fetch_raw, Untransformed) else fetch_raw or "items"
        self._tees = TeeLog(self._switch) if raw_plan == "tee" else None
        self._raw_plan, self._recorded_shared = raw_plan, shared
        self._epoch: _EpochCursor | None = None

    # -- transparency -----------------------------------------------------
    def __len__(self) -> int:
        return len(self._loader)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._loader, name)

    def __setattr__(self, name: str, value: Any) -> None:
        """Public attributes are the loader's (a framework setting ``worker_init_fn`` sets the loader's)."""
        if name.startswith("_") or hasattr(type(self), name):
            object.__setattr__(self, name, value)
        else:
            setattr(self._loader, name, value)

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

    def replace_loader(self, loader: DataLoader) -> None:
        """Record ``loader`` in place of the wrapped one from the next epoch on.

        For frameworks that rebuild a loader around the same dataset after it
        was wrapped (``snapstore.integrations.accelerate.prepare`` uses it for
        ``Accelerator.prepare``). The stream, its epochs and raw samples go on.

        Raises
        ------
        UsageError
            ``loader`` is not a DataLoader, serves a dataset of another length
            or kind, or an epoch is being iterated.
        """
        if not isinstance(loader, DataLoader):
            raise UsageError(f"replace_loader() takes a torch.utils.data.DataLoader, got {type(loader).__name__}")
        if self._epoch is not None:
            raise UsageError(f"stream {self._name!r}: replace the loader between epochs, not during one")
        iterable = isinstance(loader.dataset, IterableDataset)
        dataset_len = None if iterable else len(loader.dataset)  # type: ignore[arg-type]
        if iterable != self._manifest.iterable or dataset_len != self._manifest.dataset_len:
            raise UsageError(f"stream {self._name!r} records a dataset of {self._manifest.dataset_len} samples "
                             f"(iterable={self._manifest.iterable}); the new loader serves {dataset_len} "
                             f"(iterable={iterable}): wrap it as another stream")
        self._loader = loader

    # -- one epoch --------------------------------------------------------
    def __iter__(self) -> Any:
        """Start an epoch: the loader's own iterator, its batches handed over as they are consumed (while
        ``paused``: the loader's iterator itself, nothing recorded)."""
        self._session.check_open()
        if self._paused:
            self.end_epoch()
            return iter(self._loader)
        return _EpochIterator(self)  # ends an epoch abandoned mid-way when it starts its own

    @property
    def position(self) -> tuple[int, int] | None:
        """``(epoch, batches yielded so far)`` of the epoch being iterated; ``None`` between epochs."""
        cursor = self._epoch
        return None if cursor is None else (cursor.number, cursor.batches)

    @property
    def paused(self) -> bool:
        """While ``True``, iterating runs the loader unrecorded and ``log`` does nothing (e.g. Lightning's
        validation sanity check, which is not a validation epoch)."""
        return self._paused

    @paused.setter
    def paused(self, value: bool) -> None:
        self._paused = bool(value)

    def _begin_epoch(self) -> _EpochCursor:
        if self._continue is not None:
            (number, part), self._continue = self._continue, None
        else:
            number, part = self._next_epoch, 0
            self._next_epoch += 1
        manifest = EpochManifest(number, 0, 0, False, utc_now(), None, epoch_provenance(self._loader), part=part)
        capacity = _expected_rows(self._loader) or config.DEFAULT_UNKNOWN_ROWS
        try:
            expected = len(self._loader)
        except TypeError:
            expected = None
        cursor = _EpochCursor(number, expected, self._session.new_key())
        self._epoch = cursor
        self._session.send("open_epoch", cursor.key, self._path, manifest, capacity, self._seen,
                           self._raw_plan is not None)
        return cursor

    def end_epoch(self) -> None:
        """End the epoch being iterated, if any: commit it durably and return once that is done (after a
        writer failure there is nothing to commit: ``RecordingError``, or nothing with ``on_error="warn"``).

        The epoch is complete if the loader ran to its end, or ``len(loader)``
        batches were consumed, with no batch raising on the way.
        """
        cursor, self._epoch = self._epoch, None
        if cursor is None:
            return
        cursor.current = None
        if cursor.iterator is not None:
            cursor.iterator.stop()
        if not self._session.failed:
            complete = not cursor.failed and (cursor.ended or (cursor.expected is not None
                                                               and cursor.batches >= cursor.expected))
            self._session.send("close_epoch", cursor.key, complete)
            self._session.drain()

    def _tees_wanted(self) -> TeeLog | None:
        """The log to tee this epoch's transform inputs into: where raw samples come from them and some index
        has none recorded yet (once every one has, a tee per transform call is time lost for nothing)."""
        if isinstance(self._recorded, np.ndarray) and self._recorded.all():
            return None
        return self._tees

    def _hand_off(self, cursor: _EpochCursor, tagged: Tagged) -> None:
        n = len(tagged.tags.indices)
        if self._session.recording():
            self._record(cursor, tagged, n)
        # the loop's view of the epoch moves on whether or not the batch was recorded (after a writer
        # failure with on_error="warn", log() and later epochs keep working, unrecorded)
        cursor.current = (cursor.rows, n)
        cursor.starts.append(cursor.rows)
        cursor.rows += n
        cursor.batches += 1

    def _record(self, cursor: _EpochCursor, tagged: Tagged, n: int) -> None:
        tags = tagged.tags
        if tags.listed and not self._batched:  # batch_size=None, a sampler of index lists: batches have rows
            self._batched = True
            self._update_manifest(batched=True)
        where = f"stream {self._name!r} epoch {cursor.number} batch {cursor.batches}"
        structure, fields = flatten(tagged.batch, n if self._batched else None, row_lists=self._row_lists())
        for path, (_, rows) in fields.items():
            if len(rows) != n:
                raise SchemaError(f"{where}: collate_fn returned {len(rows)} rows in field {path!r} for {n} samples; "
                                  "snapstore records one row per fetched sample")
        infos = self._reconcile("structure", "fields", structure, fields, where)
        if tags.raw is not None:
            self._hand_off_raw(tags.raw)
        host = {p: host_rows(rows) for p, (_, rows) in fields.items()}  # a device copy waited for
        for lo, hi in _slices(n, list(host.values())):
            base = None if tags.base is None else (tags.base[0][lo:hi], tags.base[1][lo:hi])
            part = {p: (infos[p], rows if hi - lo == n else rows[lo:hi]) for p, rows in host.items()}
            self._session.send("put_rows", cursor.key, cursor.rows + lo, tags.indices[lo:hi], tags.worker, base,
                               part, n if hi == n else None)

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
        every = len(keep) == len(block.indices)
        rows = {p: (infos[p], r if every else r.take(keep) if isinstance(r, Ragged) else r[keep])
                for p, (_, r) in block.fields.items()}
        self._session.send("put_raw", self._path, block.indices[keep], rows)

    def _update_manifest(self, **changes: Any) -> None:
        self._manifest = dataclasses.replace(self._manifest, **changes)
        self._session.send("write_attr", self._path, layout.STREAM_ATTR, self._manifest.to_dict())

    def log(self, *, batch_index: int | None = None, **outputs: Any) -> None:
        """Record per-row outputs of the batch just yielded (predictions, losses).

        Parameters
        ----------
        batch_index : int, optional
            The batch of the current epoch the outputs belong to (0-based), for
            a consumer that fetches ahead of the step that computes them
            (Lightning's data fetcher yields batch k after fetching k + 1).
            Default: the batch yielded last.
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
        if self._paused:
            return
        if cursor is None or cursor.current is None:
            raise UsageError(f"log() on stream {self._name!r} needs a current batch: "
                             "call it inside the loop over the stream")
        if not self._session.recording():  # on_error="warn" after a writer failure: training goes on
            return
        pos, n = cursor.current
        if batch_index is not None:
            if not 0 <= batch_index < len(cursor.starts):
                raise UsageError(f"log(batch_index={batch_index}) on stream {self._name!r}: epoch "
                                 f"{cursor.number} has yielded batches 0..{len(cursor.starts) - 1} so far")
            pos = cursor.starts[batch_index]
            n = (cursor.starts[batch_index + 1] if batch_index + 1 < len(cursor.starts) else cursor.rows) - pos
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
            staged[name] = (info, host_rows(rows))
        self._session.send("put_outputs", cursor.key, pos, staged)


class _EpochCursor:
    """Training-thread view of the epoch being iterated."""

    __slots__ = ("number", "expected", "key", "rows", "batches", "current", "starts", "ended", "failed", "iterator")

    def __init__(self, number: int, expected: int | None, key: int) -> None:
        self.number = number
        self.key = key  # names the epoch in the operations sent to the writer process
        self.expected = expected  # len(loader): batches that make the epoch complete, when it has a len
        self.rows = 0
        self.batches = 0
        self.current: tuple[int, int] | None = None  # (first position, rows) of the batch just yielded
        self.starts: list[int] = []  # first position of each batch yielded
        self.ended = False  # the loader's iterator ran to its end
        self.failed = False  # a batch raised instead of arriving
        self.iterator: _EpochIterator | None = None


class _EpochIterator:
    """One epoch of a ``RecordingLoader``: the user's loader's iterator, with each batch's tags taken off.

    Nothing happens until the first ``next()`` (or ``len()``): an iterator
    made and dropped (Lightning checks that a loader is iterable this way)
    starts no workers, draws no seed and records no epoch. From then on, the
    loader's datasets carry ``TransformTee``s (raw capture) and recording is
    switched on; the loader's ``collate_fn`` is the ``CaptureCollate`` only
    until the loader's own iterator has started (its workers and fetchers hold
    it from then on), so the loader's attributes are the user's again from the
    first batch. Like torch's iterator it goes on after a batch that raised.
    """

    def __init__(self, stream: RecordingLoader) -> None:
        self._stream = stream
        self._cursor: _EpochCursor | None = None
        self._it: Any = None
        self._tees: list[tuple[Any, str, Any]] = []
        self._collate: Any = None
        self._collating: Any = None
        self._running = False

    def _start(self) -> _EpochCursor:
        stream = self._stream
        stream.end_epoch()  # another iterator's epoch, abandoned
        cursor = stream._begin_epoch()
        cursor.iterator = self
        self._cursor = cursor
        loader = self._collating = _collating(stream.loader)
        tees = stream._tees_wanted()
        self._tees = install_tees(loader.dataset, tees) if tees is not None else []
        self._collate = loader.collate_fn
        loader.collate_fn = CaptureCollate(loader.collate_fn, loader.dataset, stream._switch, stream._recorded_shared,
                                           stream._raw_plan, stream._tees)
        stream._switch.numpy()[0] = 1  # through NumPy: no autograd or inference-mode rule applies
        self._running = True
        try:
            self._it = iter(stream.loader)
        except BaseException:
            self.stop()
            raise
        return cursor

    def __iter__(self) -> _EpochIterator:
        return self

    def __len__(self) -> int:
        if self._cursor is None:
            self._start()
        return len(self._it)

    def __next__(self) -> Any:
        cursor = self._cursor if self._cursor is not None else self._start()
        if not self._running:
            raise StopIteration
        try:
            item = next(self._it)
        except StopIteration:
            cursor.ended = True
            if self._stream._epoch is cursor:
                self._stream.end_epoch()
            raise
        except BaseException:
            cursor.failed = True
            raise
        finally:
            self._give_back_collate()
        if not isinstance(item, Tagged):
            raise UsageError(
                f"stream {self._stream.name!r}: the loader yielded a {type(item).__name__} without snapstore's "
                "tags: its workers were started before wrap() (persistent_workers=True) or its __iter__ "
                "rebuilds batches; wrap the loader before iterating it, or wrap the loader that yields them"
            )
        self._stream._hand_off(cursor, item)
        return item.batch

    def _give_back_collate(self) -> None:
        if self._collate is not None:
            self._collating.collate_fn, self._collate = self._collate, None

    def stop(self) -> None:
        """Recording of this epoch is over: the loader's attributes are the user's again."""
        if self._running:
            self._running = False
            self._stream._switch.numpy()[0] = 0
            self._give_back_collate()
            remove_tees(self._tees)


def _shared_zeros(n: int, dtype: torch.dtype) -> torch.Tensor:
    """Zeros in shared memory (the loader's workers see the training process's writes), a normal tensor
    even when the loader is wrapped under ``torch.inference_mode`` (Lightning's ``validate``)."""
    with torch.inference_mode(False):
        return torch.zeros(n, dtype=dtype).share_memory_()


def _collating(loader: Any) -> Any:
    """The DataLoader whose ``collate_fn`` its iterator calls: ``loader`` itself, or the one an adapter
    delegates to (Accelerate's prepared loaders keep theirs in ``base_dataloader``)."""
    while "base_dataloader" in vars(loader):
        loader = vars(loader)["base_dataloader"]
    return loader


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


def _slices(n: int, blocks: list[Any]) -> list[tuple[int, int]]:
    """Row ranges ``[lo, hi)`` a batch of ``n`` rows is handed over in: each at most
    ``config.HAND_OFF_BYTES`` of ``blocks`` (one range when a block is not a plain array), a power of two
    rows long, so that slices split no chunk (``storage.chunk_rows``) the writer could store from the ring."""
    if not all(isinstance(b, np.ndarray) for b in blocks):
        return [(0, n)]
    row_bytes = sum(b.nbytes for b in blocks) // max(n, 1)
    step = 1 << (max(1, config.HAND_OFF_BYTES // max(row_bytes, 1)).bit_length() - 1)
    return [(lo, min(n, lo + step)) for lo in range(0, n, step)] or [(0, 0)]


def _class_name(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"
