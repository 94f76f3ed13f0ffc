"""Writer-process state of a recording: its open streams and epochs, an epoch's arrays and commit record, a
stream's raw samples.

Runs in the writer process only (``writer.WriterProcess``): ``Sinks``' methods are the operations the
training process sends it through ``loader.RecordingLoader``. Rows arrive in host memory, as arrays or
``Ragged`` (the training process waits for a device copy before it sends one).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .. import storage
from ..core import hashing, layout
from ..core.manifest import EpochManifest, FieldInfo, RawManifest
from ..core.rows import Ragged
from ..core.seen import SeenPolicy
from ..storage.lock import ObjectLock, SnapshotLock
from .provenance import utc_now

_INT64 = FieldInfo("ndarray", "int64", ())

_INT32 = FieldInfo("ndarray", "int32", ())

_UINT8 = FieldInfo("ndarray", "uint8", ())

#: Rows per chunk of an epoch's inverse index (``where/offsets``, ``where/positions``: int64, 32 KiB a
#: chunk): ``Stream.where`` decodes a chunk or two of each per epoch, so small chunks keep a lookup fast.
WHERE_CHUNK_ROWS = 4096


class EpochSink:
    """Writer-thread state of one epoch: its group, field sinks and commit record.

    ``seen`` (a ``SeenPolicy`` or what ``Recorder.wrap(seen=...)`` takes) says which seen rows are
    stored in full; order, workers, batch sizes and content hashes are stored for every row. The
    epoch's order is kept in memory (8 bytes a row) to write its inverse index (``where/``) at the
    end of the epoch.
    """

    def __init__(self, group: storage.Group, manifest: EpochManifest, capacity: int,
                 chunks: storage.ChunkWriter, *, seen: Any = "full", raw: RawSink | None = None) -> None:
        self.group = group
        self.policy = SeenPolicy.parse(seen)
        self.manifest = dataclasses.replace(manifest, seen=self.policy)
        self.positions = storage.FieldSinks(group, "", capacity, chunks)  # order, worker, base_*
        self.batch_sizes = storage.FieldSinks(group, "", capacity, chunks)
        self.seen = storage.FieldSinks(group, layout.SEEN_GROUP, capacity, chunks)
        self.outputs = storage.FieldSinks(group, layout.OUTPUTS_GROUP, capacity, chunks)
        self.hashes = storage.FieldSinks(group, "", capacity, chunks)  # content hashes of seen and output rows
        self.chunks = chunks
        self.rows = 0
        self.batches = 0
        self.order: list[np.ndarray] = []  # the order, block by block, for the inverse index
        # the stream's raw samples, when it records them: rows equal to them are stored as references
        self.raw = raw if self.policy.mode != "hash" else None
        storage.name_piece(group)  # named in its stream's list of epochs before its first record
        storage.write_record(group, layout.EPOCH_ATTR, self.manifest.to_dict(), chunks)
        # the inverse index's arrays, made now: made at the end, they were half of the wait for its durable
        # commit (~30 ms an epoch: issue 17); their length is what its record names, not their shape
        self.where = {} if self.manifest.where else {
            name: storage.create_rows_array(group, name, _INT64, max(1, rows), chunks.compressor,
                                            chunk=WHERE_CHUNK_ROWS)
            for name, rows in ((layout.WHERE_OFFSETS, capacity + 1), (layout.WHERE_POSITIONS, capacity))}

    def put_rows(self, pos: int, indices: np.ndarray, worker: int, base: tuple[np.ndarray, np.ndarray] | None,
                 fields: dict[str, tuple[FieldInfo, Any]], batch: int | None) -> None:
        """Stage rows ``pos ..`` of the epoch: a whole batch, or a slice of one, of dataset ``indices``
        (int64, (n,)) fetched by ``worker`` (-1: the training process), with ``base`` (base dataset and base
        index of each row, int32 and int64, (n,)) when the dataset wraps others. ``batch`` (the batch's row
        count) marks the slice that ends a batch; commits cover whole batches only."""
        n = len(indices)
        self.positions.put(pos, layout.ORDER, _INT64, indices)
        self.positions.put(pos, layout.WORKER, _INT32, np.full(n, worker, dtype=np.int32))
        if base is not None:
            self.positions.put(pos, layout.BASE_DATASET, _INT32, base[0])
            self.positions.put(pos, layout.BASE_ORDER, _INT64, base[1])
        self.order.append(np.array(indices, dtype=np.int64))
        full = self.policy.full_rows(self.manifest.number, self.batches, indices)
        if self.policy.mode == "sampled":
            self.positions.put(pos, layout.FULL, _UINT8, full.astype(np.uint8))
        hashes = hashing.hash_fields(fields)
        if self.raw is not None:  # rows bitwise equal to their raw sample are stored there only
            same = self.raw.same_rows(indices, fields, hashes) & full
            self.positions.put(pos, layout.SEEN_RAW, _UINT8, same.astype(np.uint8))
            full = full & ~same
        if full.any():
            for path, (info, rows) in fields.items():
                self._put_seen(pos, path, info, rows, full)
        for path, (info, rows) in hashes.items():
            self.hashes.put(pos, layout.seen_hashes_path(path), info, rows)
        if batch is not None:
            self.batch_sizes.put(self.batches, layout.BATCH_SIZES, _INT64, np.array([batch], dtype=np.int64))
            self.batches += 1
            self.rows = pos + n

    def _put_seen(self, pos: int, path: str, info: FieldInfo, rows: Any, full: np.ndarray) -> None:
        """Stage the rows of one field that ``full`` selects; the others keep the fill value (a ragged
        field stores them as empty rows)."""
        if full.all():
            self.seen.put(pos, path, info, rows)
        elif info.ragged:
            packed = rows if isinstance(rows, Ragged) else Ragged.from_block(np.asarray(rows))
            kept = [r.reshape(-1) for r, keep in zip(packed.rows(), full) if keep]
            shapes = np.where(full[:, None], packed.shapes, 0)
            self.seen.put(pos, path, info, Ragged(np.concatenate(kept), shapes))
        else:
            edges = np.flatnonzero(np.diff(np.concatenate([[0], full.astype(np.int8), [0]])))
            for lo, hi in zip(edges[::2].tolist(), edges[1::2].tolist()):
                self.seen.put(pos + lo, path, info, rows[lo:hi])

    def _write_where(self) -> None:
        """The inverse index of the committed order: ``where/positions`` (positions sorted by dataset
        index) and ``where/offsets`` (where each index's positions start), in small chunks so that one
        lookup reads a chunk or two of each."""
        order = np.concatenate(self.order)[: self.rows] if self.order else np.empty(0, np.int64)
        offsets = np.zeros(int(order.max(initial=-1)) + 2, dtype=np.int64)
        np.cumsum(np.bincount(order), out=offsets[1:])
        positions = np.argsort(order, kind="stable").astype(np.int64)
        for name, values in ((layout.WHERE_OFFSETS, offsets), (layout.WHERE_POSITIONS, positions)):
            sink = storage.RowSink(self.where[name], self.chunks)
            sink.put(0, values)
            sink.flush()

    def put_outputs(self, pos: int, outputs: dict[str, tuple[FieldInfo, np.ndarray]]) -> None:
        for name, (info, rows) in outputs.items():
            self.outputs.put(pos, name, info, rows)
        for name, (info, rows) in hashing.hash_fields(outputs).items():
            self.hashes.put(pos, layout.output_hashes_path(name), info, rows)

    def commit(self, *, complete: bool = False, final: bool = False, durable: bool | None = None) -> None:
        """Commit the rows staged so far: their chunks, then the manifest that covers them. A ``durable``
        commit (by default the ``final`` one, at the end of the epoch) is fsynced on a local disk before
        it returns."""
        durable = final if durable is None else durable
        for sinks in (self.positions, self.batch_sizes, self.seen, self.outputs, self.hashes):
            sinks.flush()
        if final and not self.manifest.where:
            self._write_where()
        self.manifest = dataclasses.replace(
            self.manifest,
            rows=self.rows,
            batches=self.batches,
            complete=complete,
            ended=utc_now() if final else None,
            ragged=list(self.seen.ragged),
            where=final or self.manifest.where,
        )
        if durable:  # the data first (durably), then the commit record that covers it
            self.chunks.sync()
        else:
            self.chunks.wait()
        storage.write_record(self.group, layout.EPOCH_ATTR, self.manifest.to_dict(), self.chunks)
        if durable:
            storage.sync_node(self.group)
        if final:  # its stream's list of epochs names the hash of this last record
            storage.name_piece(self.group, seal=True, durable=durable)
        self.seen.after_commit()


class RawSink:
    """Writer-thread state of a stream's raw samples: appended in order of first capture.

    It keeps, per raw field with one row shape, the dtype, row shape and content hash of the raw sample of
    each dataset index (8 bytes an index; read back from the committed raw rows when a recording resumes),
    so that its stream's epochs can tell which seen rows are bitwise their raw sample (``same_rows``).
    """

    def __init__(self, group: storage.Group, rows: int, ragged: list[str], capacity: int,
                 chunks: storage.ChunkWriter, *, seen: Any = "full") -> None:
        self.group = group
        self.rows = rows
        self.index = storage.FieldSinks(group, "", capacity, chunks, rows=rows)
        self.fields = storage.FieldSinks(group, layout.RAW_FIELDS, capacity, chunks, rows=rows, ragged=ragged)
        self.hashes = storage.FieldSinks(group, "", capacity, chunks, rows=rows)
        self.chunks = chunks
        self.dirty = False
        self.unsynced = False  # a commit since the last durable one
        # field path -> (dtype, row shape, hash of each dataset index's raw row; 0: none); None: not comparable
        self.known: dict[str, tuple[np.dtype, tuple[int, ...], np.ndarray] | None] = {}
        if rows:
            self._read_known(rows, set(ragged))

    def _read_known(self, rows: int, ragged: set[str]) -> None:
        """``known`` from the ``rows`` committed raw rows (a resumed recording)."""
        nodes = storage.members(self.group, self.group.path, recursive=True)
        index_array = nodes.get(layout.RAW_INDEX)
        if not isinstance(index_array, storage.Array):
            return
        index = storage.ChunkReader(index_array, rows=rows).read(0, rows)
        prefix = f"{layout.RAW_FIELDS}/"
        for name, node in nodes.items():
            path = name[len(prefix):]
            hashes = nodes.get(layout.raw_hashes_path(path))
            if (not name.startswith(prefix) or path in ragged or not isinstance(node, storage.Array)
                    or not isinstance(hashes, storage.Array)):
                continue
            values = storage.ChunkReader(hashes, rows=rows).read(0, rows)
            self._learn(path, node.dtype, tuple(node.shape[1:]), index, values)

    def _learn(self, path: str, dtype: np.dtype, shape: tuple[int, ...], indices: np.ndarray,
               hashes: np.ndarray | None) -> None:
        if path in self.known and self.known[path] is None:
            return
        entry = self.known.get(path)
        if hashes is None or (entry is not None and (entry[0] != dtype or entry[1] != shape)):
            self.known[path] = None  # not hashed, or changed dtype or shape: never referenced
            return
        table = entry[2] if entry is not None else np.zeros(0, dtype=np.uint64)
        top = int(indices.max(initial=-1)) + 1
        if top > len(table):
            table = np.concatenate([table, np.zeros(max(top, 2 * len(table)) - len(table), dtype=np.uint64)])
        table[indices] = np.where(table[indices] == 0, hashes, table[indices])  # the first recording of an index
        self.known[path] = (dtype, shape, table)

    def same_rows(self, indices: np.ndarray, fields: dict[str, tuple[FieldInfo, Any]],
                  hashes: dict[str, tuple[FieldInfo, np.ndarray]]) -> np.ndarray:
        """Which seen rows (dataset ``indices``, int64 (n,); ``fields`` as host rows, their ``hashes``) are, in
        every field, bitwise the raw sample of their index: same field path, dtype and row shape, and the
        same xxh3-64 content hash (bool, (n,))."""
        same = np.ones(len(indices), dtype=bool)
        for path, (_, rows) in fields.items():
            entry = self.known.get(path)
            if entry is None or path not in hashes or not isinstance(rows, np.ndarray):
                return np.zeros(len(indices), dtype=bool)
            dtype, shape, table = entry
            if rows.dtype != dtype or rows.shape[1:] != shape:
                return np.zeros(len(indices), dtype=bool)
            inside = indices < len(table)
            same &= inside & (table[np.where(inside, indices, 0)] == hashes[path][1])
        return same & bool(fields)

    def put(self, indices: np.ndarray, fields: dict[str, tuple[FieldInfo, Any]]) -> None:
        """Stage the raw samples of dataset ``indices`` (int64, (n,)), first seen now: ``fields``, path ->
        (field, rows)."""
        self.index.put(self.rows, layout.RAW_INDEX, _INT64, indices)
        for path, (info, rows) in fields.items():
            self.fields.put(self.rows, path, info, rows)
        hashes = hashing.hash_fields(fields)
        for path, (info, rows) in hashes.items():
            self.hashes.put(self.rows, layout.raw_hashes_path(path), info, rows)
        for path, (info, rows) in fields.items():
            if info.ragged or not isinstance(rows, np.ndarray):
                self.known[path] = None
            else:
                self._learn(path, rows.dtype, tuple(rows.shape[1:]), np.asarray(indices),
                            hashes[path][1] if path in hashes else None)
        self.rows += len(indices)
        self.dirty = True

    def commit(self, *, durable: bool = False) -> None:
        """Commit the raw samples staged so far (fsynced before it returns when ``durable``)."""
        if durable and not self.dirty and self.unsynced:  # committed, not yet durably
            self.chunks.sync()
            storage.sync_node(self.group)
            self.unsynced = False
        if self.dirty:
            self.index.flush()
            self.fields.flush()
            self.hashes.flush()
            if durable:
                self.chunks.sync()
            else:
                self.chunks.wait()
            record = RawManifest(self.rows, list(self.fields.ragged)).to_dict()
            storage.write_record(self.group, layout.RAW_ATTR, record, self.chunks)
            if durable:
                storage.sync_node(self.group)
            self.fields.after_commit()
            self.dirty = False
            self.unsynced = not durable


class Sinks:
    """The writer process's state of one recording: its chunk writer, open streams (raw samples) and epochs.

    Made in the writer process (``writer.WriterProcess``), whose operations are ``run`` by name, in the
    order the training process sent them: ``open_stream``, ``write_attr``, ``open_epoch``, ``put_rows``,
    ``put_raw``, ``put_outputs``, ``close_epoch``. ``flush`` commits every open epoch and the raw
    samples (every ``config.DEFAULT_FLUSH_INTERVAL`` seconds, and durably at the end).

    Parameters
    ----------
    root : zarr.Group
        The snapshot's root group as the training process opened it (reopened here on object storage,
        whose clients do not survive a fork).
    path, storage_options : the snapshot's location, for messages and reopening.
    compressor : str
        One of ``storage.COMPRESSORS``.
    lock : SnapshotLock or ObjectLock, optional
        The writer's lock, refreshed at each flush (an object store's lease); a lock lost to another
        writer fails the writer like any write error.
    """

    def __init__(self, root: storage.Group, path: str, storage_options: dict[str, Any] | None, compressor: str,
                 lock: SnapshotLock | ObjectLock | None = None) -> None:
        if "://" in path:
            root = storage.open_group(path, mode="a", storage_options=storage_options)
        if isinstance(lock, ObjectLock):
            lock.after_fork()
        self.root = root
        self.path = path
        self.lock = lock
        self.chunks = storage.ChunkWriter(compressor)
        self.streams: dict[str, tuple[storage.Group, RawSink]] = {}  # by the stream group's path
        self.epochs: dict[int, EpochSink] = {}  # open epochs, by the key the training process gave them

    def run(self, name: str, args: tuple[Any, ...]) -> None:
        """Run operation ``name(*args)``; once it returns, no chunk is read from the rows the operation was
        handed (``storage.ChunkWriter.release``), and the ring may take others. Every operation may create
        files (a group, a manifest, a chunk): none once the snapshot is gone, or zarr would recreate its
        folders around them (one stat on a local disk; object stores rely on the flush's check). An operation
        that fails because the snapshot vanished while it ran raises what ``storage.check_exists`` raises:
        that it vanished."""
        try:
            if storage.root_gone(self.root):
                storage.check_exists(self.root, self.path)
            getattr(self, name)(*args)
            self.chunks.release()
        except Exception:
            if storage.root_gone(self.root):
                storage.check_exists(self.root, self.path)
            raise

    def open_stream(self, path: str, raw_rows: int, ragged: list[str], capacity: int) -> None:
        """Stream group ``path`` (made by the training process) records raw samples; ``raw_rows`` of them were
        committed by earlier recordings, with fields ``ragged`` stored ragged."""
        group = storage.child(self.root, path)
        raw_group = storage.child(group, layout.RAW_GROUP)
        self.streams[path] = (group, RawSink(raw_group, raw_rows, ragged, capacity, self.chunks))

    def write_attr(self, path: str, key: str, value: dict[str, Any]) -> None:
        """Attribute ``key`` of stream ``path`` (its manifest) is ``value`` now."""
        storage.write_attr(self.streams[path][0], key, value)

    def open_epoch(self, key: int, path: str, manifest: EpochManifest, capacity: int, seen: SeenPolicy,
                   raw: bool) -> None:
        """Epoch ``key`` of stream ``path`` starts (its ``manifest``, ``capacity`` rows expected); ``raw``: its
        rows may refer to the stream's raw samples."""
        name = layout.epoch_name(manifest.number)
        if manifest.part:
            name = f"{name}/{layout.CONTINUED_GROUP}/{manifest.part}"
        group, raw_sink = self.streams[path]
        epochs = storage.child(group, layout.EPOCHS_GROUP)
        epoch = storage.child(epochs, name)
        if epoch is None or not unfinished(epoch, layout.EPOCH_ATTR):  # (an unfinished one is taken over)
            epoch = storage.create_group(epochs, name)
        self.epochs[key] = EpochSink(epoch, manifest, capacity, self.chunks, seen=seen, raw=raw_sink if raw else None)

    def put_rows(self, key: int, *args: Any) -> None:
        self.epochs[key].put_rows(*args)

    def put_raw(self, path: str, indices: np.ndarray, fields: dict[str, tuple[FieldInfo, Any]]) -> None:
        self.streams[path][1].put(indices, fields)

    def put_outputs(self, key: int, pos: int, outputs: dict[str, tuple[FieldInfo, np.ndarray]]) -> None:
        self.epochs[key].put_outputs(pos, outputs)

    def close_epoch(self, key: int, complete: bool) -> None:
        """Commit epoch ``key`` durably, after the raw samples its rows refer to."""
        for _, raw in self.streams.values():
            raw.commit(durable=True)
        self.epochs.pop(key).commit(complete=complete, final=True)

    def flush(self, *, durable: bool = False) -> None:
        storage.check_exists(self.root, self.path)
        if self.lock is not None:  # still this writer's, before its commits
            self.lock.refresh()
        for _, raw in self.streams.values():  # the raw samples first: an epoch's rows refer to them
            raw.commit(durable=durable)
        for epoch in self.epochs.values():
            epoch.commit(durable=durable)

    def close(self) -> tuple[str | None, float] | None:
        """Return once the chunks handed over are written; the object lock's lease, which the training
        process takes back (``ObjectLock.adopt``), if this process refreshed it."""
        self.chunks.close()
        return self.lock.lease() if isinstance(self.lock, ObjectLock) else None


def unfinished(group: storage.Group, attr: str) -> bool:
    """Whether ``group`` is what a writer killed right after creating it leaves: no manifest ``attr``
    and nothing in it."""
    return attr not in group.attrs and not storage.members(group, group.path)
