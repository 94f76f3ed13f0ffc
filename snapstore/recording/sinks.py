"""Writer-thread state of a recording: an epoch's arrays and commit record, a stream's raw samples.

Runs in the background writer thread only; the training thread hands rows
over through ``loader.RecordingLoader``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .. import storage
from ..core import hashing, layout
from ..core.manifest import EpochManifest, FieldInfo, RawManifest
from ..core.rows import host_rows
from .capture import RawBlock, Tags
from .provenance import utc_now

_INT64 = FieldInfo("ndarray", "int64", ())

_INT32 = FieldInfo("ndarray", "int32", ())


class EpochSink:
    """Writer-thread state of one epoch: its group, field sinks and commit record."""

    def __init__(self, group: storage.Group, manifest: EpochManifest, capacity: int,
                 chunks: storage.ChunkWriter, *, seen: Any = "full") -> None:
        self.group = group
        self.manifest = manifest
        self.positions = storage.FieldSinks(group, "", capacity, chunks)  # order, worker, base_*
        self.batch_sizes = storage.FieldSinks(group, "", capacity, chunks)
        self.seen = storage.FieldSinks(group, layout.SEEN_GROUP, capacity, chunks)
        self.outputs = storage.FieldSinks(group, layout.OUTPUTS_GROUP, capacity, chunks)
        self.hashes = storage.FieldSinks(group, "", capacity, chunks)  # content hashes of seen and output rows
        self.chunks = chunks
        self.rows = 0
        self.batches = 0
        storage.write_attr(group, layout.EPOCH_ATTR, manifest.to_dict())

    def put_rows(self, pos: int, tags: Tags, fields: dict[str, tuple[FieldInfo, Any]], batch: int | None) -> None:
        """Stage rows ``pos ..`` of the epoch: a whole batch, or a slice of one. ``batch`` (the
        batch's row count) marks the slice that ends a batch; commits cover whole batches only."""
        n = len(tags.indices)
        self.positions.put(pos, layout.ORDER, _INT64, tags.indices)
        self.positions.put(pos, layout.WORKER, _INT32, np.full(n, tags.worker, dtype=np.int32))
        if tags.base is not None:
            self.positions.put(pos, layout.BASE_DATASET, _INT32, tags.base[0])
            self.positions.put(pos, layout.BASE_ORDER, _INT64, tags.base[1])
        for path, (info, rows) in fields.items():
            self.seen.put(pos, path, info, host_rows(rows))
        for path, (info, rows) in hashing.hash_fields(fields).items():
            self.hashes.put(pos, layout.seen_hashes_path(path), info, rows)
        if batch is not None:
            self.batch_sizes.put(self.batches, layout.BATCH_SIZES, _INT64, np.array([batch], dtype=np.int64))
            self.batches += 1
            self.rows = pos + n

    def put_outputs(self, pos: int, outputs: dict[str, tuple[FieldInfo, np.ndarray]]) -> None:
        for name, (info, rows) in outputs.items():
            self.outputs.put(pos, name, info, host_rows(rows))
        for name, (info, rows) in hashing.hash_fields(outputs).items():
            self.hashes.put(pos, layout.output_hashes_path(name), info, rows)

    def commit(self, *, complete: bool = False, final: bool = False, durable: bool | None = None) -> None:
        """Commit the rows staged so far: their chunks, then the manifest that covers them. A ``durable``
        commit (by default the ``final`` one, at the end of the epoch) is fsynced on a local disk before
        it returns."""
        durable = final if durable is None else durable
        for sinks in (self.positions, self.batch_sizes, self.seen, self.outputs, self.hashes):
            sinks.flush()
        self.manifest = dataclasses.replace(
            self.manifest,
            rows=self.rows,
            batches=self.batches,
            complete=complete,
            ended=utc_now() if final else None,
            ragged=list(self.seen.ragged),
        )
        if durable:  # the data first (durably), then the commit record that covers it
            self.chunks.sync()
        else:
            self.chunks.wait()
        storage.write_attr(self.group, layout.EPOCH_ATTR, self.manifest.to_dict())
        if durable:
            storage.sync_node(self.group)
        self.seen.after_commit()


class RawSink:
    """Writer-thread state of a stream's raw samples: appended in order of first capture."""

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

    def put(self, block: RawBlock) -> None:
        self.index.put(self.rows, layout.RAW_INDEX, _INT64, block.indices)
        for path, (info, rows) in block.fields.items():
            self.fields.put(self.rows, path, info, rows)
        for path, (info, rows) in hashing.hash_fields(block.fields).items():
            self.hashes.put(self.rows, layout.raw_hashes_path(path), info, rows)
        self.rows += len(block.indices)
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
            storage.write_attr(self.group, layout.RAW_ATTR, RawManifest(self.rows, list(self.fields.ragged)).to_dict())
            if durable:
                storage.sync_node(self.group)
            self.fields.after_commit()
            self.dirty = False
            self.unsynced = not durable
