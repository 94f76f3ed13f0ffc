"""Writing rows into Zarr arrays: creating them (chunking rule, codec chain),
staging rows into whole chunks, and encoding and storing those chunks off
the training thread. Used by the recorder's writer process only.
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Sequence
from concurrent import futures
from concurrent.futures import Future
from pathlib import Path
from typing import Any, cast

import numpy as np
import zarr

from .. import config
from ..core import layout
from ..core.manifest import FieldInfo, numpy_dtype
from ..core.merkle import ABSENT, RAW_ROWS, ChunkHashes, chunk_hash, hex_hash, parse_chunks, record_hash
from ..core.rows import Ragged
from ..errors import UsageError
from . import _zarr
from .chunks import COMPRESSORS, chunk_codecs, chunk_path, create_rows_array, local_file, store_chunk
from .groups import Array, Group, child, children, require_group, reread, vanished, write_attr
from .pools import pool
from .readers import ChunkReader


def root_gone(root: Group) -> bool:
    """Whether ``root`` is a local snapshot whose root ``zarr.json`` is gone (deleted under the writer).

    One ``stat``; always ``False`` on other stores, where ``groups.check_exists`` reads the key instead.
    """
    store = root.store
    return isinstance(store, zarr.storage.LocalStore) and not (Path(store.root) / root.path / "zarr.json").exists()


def sync_node(node: Group | Array) -> None:
    """On a local disk, fsync the ``zarr.json`` of ``node`` (a commit record just written) and of each
    group above it, and their directories up to the snapshot root; nothing on object stores."""
    store = node.store
    if not isinstance(store, zarr.storage.LocalStore):
        return
    root = Path(store.root)
    parts = node.path.split("/") if node.path else []
    _fsync_all({root.joinpath(*parts[:k], "zarr.json") for k in range(len(parts) + 1)}, root)


def _fsync_all(files: set[Path], root: Path | None) -> None:
    """fsync ``files`` (those that still exist) and each directory holding one, up to ``root``; all at once
    from a few threads when there are several, so the file system commits them together (one by one, an
    epoch's end waited ~10 ms a directory on a busy disk: issue 17)."""
    paths: set[Path] = set(files)
    for path in files:
        for parent in path.parents:
            paths.add(parent)
            if parent == root or root is None:
                break
    if len(paths) < 3:
        for path in paths:
            _fsync(path)
        return
    list(pool("fsync", config.SYNC_THREADS).map(_fsync, paths))  # raises the first failure


def _fsync(path: Path, *, drop: bool = False) -> None:
    """fsync the file or folder ``path``; with ``drop``, then let the kernel drop the file's pages from the
    page cache (``POSIX_FADV_DONTNEED``: they are clean once fsynced; where the platform has it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:  # a fixed array replaced by its ragged copy, deleted after its commit
        return
    try:
        os.fsync(fd)
        if drop and hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def write_record(group: Group, key: str, record: dict[str, Any], writer: ChunkWriter) -> dict[str, Any]:
    """Write commit record ``record`` as attribute ``key`` of ``group``, with the hashes of the chunks of
    every array below it (``"chunks"``, see ``core.merkle``), after ``writer.wait()``; returns what was
    written.

    The hashes are those ``writer`` computed when it stored each chunk; chunks
    stored by an earlier recording (a resumed raw group) keep the hashes of the
    record already there.
    """
    ours = writer.entries(group.path)
    earlier = parse_chunks(group.attrs.get(key), group.path) or {}
    starts = writer.starts(group.path)
    for rel, old in earlier.items():
        if f"{group.path}/{rel}" in writer.deleted:
            continue
        mine = ours.get(rel)
        if mine is None:
            ours[rel] = old
            continue
        if old.chunk != mine.chunk:
            continue
        keep = min(starts.get(rel, 0) // old.chunk, len(old.hashes))  # whole chunks stored by the earlier run
        hashes = mine.hashes.copy()
        hashes[:keep] = np.where(hashes[:keep] == ABSENT, old.hashes[:keep], hashes[:keep])
        ours[rel] = ChunkHashes(mine.chunk, mine.rows, hashes)
    record = {**record, layout.CHUNKS: {rel: e.to_dict() for rel, e in sorted(ours.items())}}
    write_attr(group, key, record)
    return record


def _pieces(piece: Group) -> tuple[Group, str]:
    """The ``epochs/`` group of the stream epoch piece ``piece`` belongs to (``epochs/<e>`` or
    ``epochs/<e>/continued/<k>``), read afresh, and the piece's path inside it."""
    parts = piece.path.split("/")
    top = len(parts) - (4 if len(parts) >= 4 and parts[-2] == layout.CONTINUED_GROUP else 2)
    path = "/".join(parts[: top + 1])
    return zarr.open_group(piece.store, path=path, mode="r+", zarr_format=3, use_consolidated=False), \
        "/".join(parts[top + 1 :])


def _raw_of(epochs: Group) -> Group | None:
    """The raw group beside a stream's ``epochs/`` group, read afresh; ``None`` if there is none."""
    stream = epochs.path.rpartition("/")[0]
    try:
        return zarr.open_group(epochs.store, path=f"{stream}/{layout.RAW_GROUP}" if stream else layout.RAW_GROUP,
                               mode="r", zarr_format=3, use_consolidated=False)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        return None


def _recorded_before(epochs: Group) -> dict[str, Any]:
    """The pieces of a stream recorded without a list of epochs (format version 1, appended to with
    ``mode="a"``), each named as not sealed."""
    out: dict[str, Any] = {}
    for name, node in children(epochs)[0]:
        if isinstance(node, Group) and layout.EPOCH_ATTR in node.attrs:
            out[name] = None
            continued = child(node, layout.CONTINUED_GROUP)
            for k, part in children(continued)[0] if continued is not None else []:
                if isinstance(part, Group) and layout.EPOCH_ATTR in part.attrs:
                    out[f"{name}/{layout.CONTINUED_GROUP}/{k}"] = None
    return out


def name_piece(piece: Group, *, seal: bool = False, durable: bool = False) -> None:
    """Name epoch piece ``piece`` in its stream's list of pieces (``layout.PIECES_ATTR`` of ``epochs/``): as
    being recorded (before its first commit record), or, with ``seal``, with the hash of its final record
    as stored (after it). ``durable``: fsync the list on a local disk before returning."""
    epochs, key = _pieces(piece)
    value = hex_hash(record_hash(cast(dict[str, Any], reread(piece).attrs[layout.EPOCH_ATTR]))) if seal else None
    listed = epochs.attrs.get(layout.PIECES_ATTR)
    pieces = dict(cast(dict[str, Any], listed)) if listed is not None else _recorded_before(epochs)
    pieces[key] = value
    raw = _raw_of(epochs) if seal else None
    if raw is not None:  # the raw samples its rows refer to, committed before it
        pieces[RAW_ROWS] = int(cast(dict[str, Any], raw.attrs.get(layout.RAW_ATTR, {})).get("rows", 0))
    write_attr(epochs, layout.PIECES_ATTR, pieces)
    if durable:
        sync_node(epochs)


class Buffers:
    """Recycled host buffers: the chunk staging buffers of a ``ChunkWriter`` (in the recorder's writer process).

    Writing into pages used before runs ~3x faster than into fresh ones (9.5
    vs 2.8 GB/s measured here, PERF-NOTES). ``take`` returns a free buffer of
    the shape and dtype asked for, or a new one; ``give_back`` returns buffers
    nothing references any more. Numeric buffers of at least ``MIN_BYTES`` are
    kept, at most ``keep`` per (shape, dtype) and ``max_bytes`` in all, which
    is what recycling adds to the recorder's memory bound. Thread-safe.
    """

    MIN_BYTES = 64 * 1024

    def __init__(self, *, keep: int, max_bytes: int) -> None:
        self._keep = keep
        self._max_bytes = max_bytes
        self._free_bytes = 0
        self._lock = threading.Lock()
        self._free: dict[tuple[Any, ...], collections.deque] = collections.defaultdict(collections.deque)

    def take(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """An uninitialised buffer: a recycled one when one of that shape and dtype is free."""
        with self._lock:
            free = self._free.get((shape, np.dtype(dtype).str))
            if free:
                buf = free.pop()
                self._free_bytes -= buf.nbytes
                return buf
        return np.empty(shape, dtype)

    def give_back(self, blocks: Any) -> None:
        """``blocks`` (from ``take``, or any arrays) are free again; those worth keeping are kept."""
        for rows in blocks:
            if not (isinstance(rows, np.ndarray) and rows.dtype.kind in "biufc" and rows.nbytes >= self.MIN_BYTES):
                continue
            with self._lock:
                free = self._free[(rows.shape, rows.dtype.str)]
                if len(free) < self._keep and self._free_bytes + rows.nbytes <= self._max_bytes:
                    free.append(rows)
                    self._free_bytes += rows.nbytes


class ChunkWriter:
    """Encodes and stores whole chunks on the process's encoder threads (``pools``), one per CPU.

    ``write`` hands a chunk over: one pool thread encodes it with its array's
    own codecs (each in turn, CRC32C last: the bytes
    ``array[lo:hi] = block`` would store) and stores the key with one call.
    Blosc releases the GIL, so chunks encode on every core while the
    recorder's writer stages the next ones. ``block`` belongs to the writer
    from then on and goes back to ``buffers`` once encoded, unless it is
    ``borrowed`` (rows in the writer process's ring): the caller's again once
    ``release`` returns. A chunk
    written again (a flushed, partly filled chunk that later fills) waits for
    its earlier write, so the last version written is the one stored. At most
    ``in_flight`` chunks wait (back-pressure); ``wait`` returns once every
    chunk handed over is stored, and must precede any commit record that
    covers them. A failed write is raised by the next ``write`` or ``wait``.

    Going around ``Array.__setitem__`` also skips zarr's per-call machinery
    (selection, event-loop tasks, a copy into a fresh chunk), which cost the
    recorder more CPU than the encoding itself (PERF-NOTES.md).
    """

    def __init__(self, compressor: str, *, in_flight: int = config.CHUNKS_IN_FLIGHT) -> None:
        if compressor not in COMPRESSORS:
            raise UsageError(f"compressor={compressor!r} is not one of {COMPRESSORS}")
        self.compressor = compressor
        self._in_flight = in_flight
        self._pending: collections.deque[tuple[str, Future[None]]] = collections.deque()
        self._borrowed: collections.deque[Future[None]] = collections.deque()  # jobs reading a caller's rows
        self._pool = pool("encode", min(config.MAX_CODEC_THREADS, os.cpu_count() or 1))  # kept for the process
        self.buffers = Buffers(keep=2, max_bytes=config.DEFAULT_QUEUE_BYTES)  # chunk staging buffers
        self._unsynced: set[Path] = set()  # zarr.json of the arrays written to since the last sync
        # array path -> (rows per chunk, {chunk: (rows hashed, hash)}, row the table starts at): what the
        # commit records covering the array name (``entries``)
        self._hashes: dict[str, tuple[int, dict[int, tuple[int, int]], int]] = {}
        self.deleted: set[str] = set()  # arrays deleted (a fixed field moved to ragged arrays)
        self._root: Path | None = None  # the local store's root, once a chunk was written there

    def write(self, array: Array, c: int, block: np.ndarray, rows: int | None = None, *,
              borrowed: bool = False) -> None:
        """Hand over ``block``, shape ``array.chunks``, to be stored as row-chunk ``c`` of ``array``; its first
        ``rows`` rows (all by default) hold data, and their hash (``merkle.chunk_hash``) is what the next commit
        record names for the chunk. ``borrowed``: ``block`` stays the caller's (rows in the writer process's
        ring, stored without staging them): never recycled, and read until ``release`` returns."""
        where = chunk_path(array, c)
        for key, done in self._pending:
            if key == where.path:
                done.result()
        while len(self._pending) >= self._in_flight:
            self._pending.popleft()[1].result()
        n = len(block) if rows is None else rows
        table = self._table(array)
        job = self._pool.submit(self._encode_and_store, where, chunk_codecs(array, c), block, table, c, n,
                                not borrowed)
        self._pending.append((where.path, job))
        if borrowed:
            self._borrowed.append(job)
        path = local_file(where)
        if path is not None:  # to fsync at the next durable commit: its array's metadata and folders (the
            self._root = Path(where.store.root)  # chunk file itself is fsynced by the job that stores it)
            self._unsynced.add(self._root / array.path / "zarr.json")

    def _encode_and_store(self, where: Any, codecs: list[tuple[Any, Any]], block: np.ndarray,
                          table: dict[int, tuple[int, int]], c: int, n: int, recycle: bool) -> None:
        table[c] = (n, chunk_hash(block[:n]))  # the rows as they are stored, hashed once, here
        data = _zarr.encode(codecs, block)
        if recycle:
            self.buffers.give_back([block])  # the encoded bytes never alias it (always checksummed)
        path = local_file(where)
        if path is not None and not (Path(where.store.root) / "zarr.json").exists():
            raise vanished(where.store.root)  # storing would recreate its folders around a stray chunk
        store_chunk(where, data)
        if path is not None:  # written back now, on this thread, while the loop runs: sync() only waits for it
            # Its pages then leave the page cache: nothing reads a chunk file while recording, and a cache
            # that grew by every byte recorded took fresh memory for each one (on a VM that backs it on
            # first touch, 2.6-2.9 s a GB: later loader-bound epochs 0.45-0.50 of bare, 0.62-0.66 with the
            # pages dropped; issue 17).
            _fsync(path, drop=True)

    def _table(self, array: Array) -> dict[int, tuple[int, int]]:
        entry = self._hashes.get(array.path)
        if entry is None or entry[0] != array.chunks[0]:
            entry = self._hashes[array.path] = (array.chunks[0], {}, 0)
        return entry[1]

    def resume(self, array: Array, rows: int, partial: np.ndarray | None) -> None:
        """``array`` holds ``rows`` committed rows written by an earlier recording, whose commit record names
        the hashes of its chunks; ``partial``: the rows of its last chunk, if not whole, which the next
        record names afresh (``write_record`` keeps the earlier record's hashes below them)."""
        table = self._table(array)
        self._hashes[array.path] = (array.chunks[0], table, rows)
        if partial is not None:
            table[rows // array.chunks[0]] = (len(partial), chunk_hash(partial))

    def forget(self, path: str) -> None:
        """The array at store path ``path`` was deleted: no record names it any more."""
        self._hashes.pop(path, None)
        self.deleted.add(path)

    def entries(self, base: str) -> dict[str, ChunkHashes]:
        """What a commit record of the group at store path ``base`` names of the arrays below it written
        since this writer started (not those of continuations, which have records of their own), by path
        inside the group; call after ``wait``."""
        out = {}
        for path, (chunk, table, start) in list(self._hashes.items()):
            if not path.startswith(base + "/"):
                continue
            rel = path[len(base) + 1 :]
            if rel.startswith(layout.CONTINUED_GROUP + "/"):
                continue
            done = dict(table)
            rows = max([start, *(c * chunk + n for c, (n, _) in done.items())])
            hashes = np.full(-(-rows // chunk), ABSENT, dtype=np.uint64)
            for c, (_, h) in done.items():
                hashes[c] = h
            out[rel] = ChunkHashes(chunk, rows, hashes)
        return out

    def starts(self, base: str) -> dict[str, int]:
        """Row at which this writer's hashes of each array below ``base`` begin (0, or where it resumed)."""
        return {path[len(base) + 1 :]: start for path, (_, _, start) in self._hashes.items()
                if path.startswith(base + "/")}

    def release(self) -> None:
        """Return once no chunk handed over ``borrowed`` is read any more (each is encoded and stored); raise
        the first failure."""
        while self._borrowed:
            self._borrowed.popleft().result()

    def wait(self) -> None:
        """Return once every chunk handed over so far is stored (none borrowed is read any more); raise the
        first failure."""
        while self._pending:
            self._pending.popleft()[1].result()
        self._borrowed.clear()

    def sync(self) -> None:
        """Make every chunk handed over so far durable: ``wait`` (the job that stores a chunk file on a local
        disk fsyncs it), then fsync the ``zarr.json`` (shape) of each array written to since the last ``sync``
        and every directory from theirs up to the snapshot root (new entries); nothing to do on object
        stores (a PUT that returned is stored). A commit record that must survive power loss follows this,
        then ``sync_node``. (fsyncing each chunk file again here cost ~2 ms a file at each epoch's end,
        in the training loop's wait: issue 17.)"""
        self.wait()
        files, self._unsynced = self._unsynced, set()
        _fsync_all(files, self._root)

    def close(self) -> None:
        """Return once the queued writes are done (their failures are not raised: see ``wait``)."""
        futures.wait([job for _, job in self._pending])
        self._pending.clear()
        self._borrowed.clear()


class RowSink:
    """Stages rows of one array and writes each chunk whole, once it is full.

    Rows that hold a whole chunk, contiguous and of the array's dtype, are
    not staged: the chunk is stored from them, borrowed (``ChunkWriter.write``),
    and the caller keeps them unchanged until ``ChunkWriter.release`` returns.
    Rows arrive at increasing positions (gaps keep the fill value). ``flush``
    writes the partly filled current chunk so a commit can cover it; the chunk
    is written again, whole, when it fills. The array grows (never shrinks)
    when a position passes its preallocated length.
    """

    def __init__(self, array: Array, writer: ChunkWriter, *, resume_at: int = 0) -> None:
        self.array = array
        self.writer = writer
        self.rows = array.chunks[0]
        self._chunk = -1
        self._buf = np.empty(0)
        self._staged = 0  # rows of the current chunk that hold data or the fill value
        self._data = 0  # rows of the current chunk that hold data (or the fill value of rows skipped)
        self._stored = 0  # rows of data the current chunk held when it was last handed over
        self._dirty = False
        if resume_at % self.rows:  # keep the committed rows of a partly written chunk
            self._start_chunk(resume_at // self.rows)
            lo = self._chunk * self.rows
            self._buf[: resume_at - lo] = ChunkReader(array, rows=resume_at).read(lo, resume_at)
            self._staged = self._data = self._stored = resume_at - lo
        if resume_at:
            writer.resume(array, resume_at, self._buf[: self._data] if resume_at % self.rows else None)

    def put(self, start: int, rows: np.ndarray) -> None:
        stop = start + len(rows)
        if stop > self.array.shape[0]:
            self.array.resize((max(stop, 2 * self.array.shape[0]), *self.array.shape[1:]))
        lendable = rows.dtype == self.array.dtype and rows.flags.c_contiguous
        done = 0
        while done < len(rows):
            pos = start + done
            chunk = pos // self.rows
            if chunk != self._chunk:
                if self._chunk >= 0 and self._stored < self.rows:
                    self._dirty = True  # rows skipped at its end are final: store it whole, hashed whole
                self._write(whole=True)
                if pos % self.rows == 0 and len(rows) - done >= self.rows and lendable:
                    self._lend(chunk, rows[done : done + self.rows])
                    done += self.rows
                    continue
                self._start_chunk(chunk)
            lo = pos - chunk * self.rows
            n = min(len(rows) - done, self.rows - lo)
            self._fill(lo)
            self._buf[lo : lo + n] = rows[done : done + n]
            self._staged = max(self._staged, lo + n)
            self._data = max(self._data, lo + n)
            done += n
            self._dirty = True

    def _lend(self, chunk: int, block: np.ndarray) -> None:
        # stored from the caller's rows, not staged: a copy less of every row (issue 17)
        self.writer.write(self.array, chunk, block, borrowed=True)
        self._chunk, self._buf = chunk, np.empty(0)
        self._staged = self._data = self._stored = self.rows
        self._dirty = False

    def _start_chunk(self, chunk: int) -> None:
        self._chunk = chunk
        self._buf = self.writer.buffers.take((self.rows, *self.array.shape[1:]), self.array.dtype)
        self._staged = self._data = self._stored = 0

    def _fill(self, stop: int) -> None:
        # Rows no batch wrote (a gap, the tail of a partly filled chunk) get the fill value, once,
        # when it is known they are skipped: filling whole buffers up front was a memset of every chunk.
        if self._staged < stop:
            self._buf[self._staged : stop] = self.array.fill_value
            self._staged = stop

    def _write(self, *, whole: bool) -> None:
        # Always the whole chunk (rows past the staged ones hold the fill value or resumed
        # rows): a partial-chunk write makes zarr read, decode and merge the old chunk first.
        if not self._dirty:
            return
        self._fill(self.rows)
        self._stored = self.rows if whole else self._data
        if whole:  # the buffer goes to the writer; _start_chunk takes another
            self.writer.write(self.array, self._chunk, self._buf, self._stored)
        else:  # rows keep arriving in this chunk: hand over a copy
            block = self.writer.buffers.take(self._buf.shape, self._buf.dtype)
            block[...] = self._buf
            self.writer.write(self.array, self._chunk, block, self._stored)
        self._dirty = not whole

    def flush(self) -> None:
        """Write the current chunk with the rows staged so far (a whole-chunk write, again when it fills)."""
        self._write(whole=False)
        self._dirty = False


class RaggedSink:
    """Writes a ragged field as ``values`` (1-D), ``offsets`` and ``shapes`` arrays in ``group``.

    Rows arrive at increasing positions; their elements are appended to
    ``values``. ``rows`` gives where a resumed field continues; ``sample``, its
    first rows, what ``values``' codecs are chosen on (``chunks.create_rows_array``).
    """

    def __init__(self, group: Group, info: FieldInfo, capacity: int, writer: ChunkWriter, *, rows: int = 0,
                 sample: np.ndarray | Ragged | None = None) -> None:
        def sink(name: str, part: FieldInfo, cap: int, **kw: Any) -> RowSink:
            array = child(group, name)
            if array is None:
                array = create_rows_array(group, name, part, cap, writer.compressor, **kw)
            return RowSink(array, writer, resume_at=rows if name != layout.VALUES else self.next)

        self.next = 0
        self.offsets = sink(layout.OFFSETS, FieldInfo("ndarray", "int64", ()), capacity)
        self.shapes = sink(layout.SHAPES, FieldInfo("ndarray", "int64", (len(info.shape),)), capacity)
        if rows:
            last_offset = ChunkReader(self.offsets.array, rows=rows).read(rows - 1, rows)[0]
            last_shape = ChunkReader(self.shapes.array, rows=rows).read(rows - 1, rows)[0]
            self.next = int(last_offset + np.prod(last_shape))
        elements = max(1, config.DEFAULT_CHUNK_BYTES // numpy_dtype(info.dtype).itemsize)
        packed = sample if sample is None or isinstance(sample, Ragged) else Ragged.from_block(sample)
        self.values = sink(layout.VALUES, FieldInfo(info.kind, info.dtype, ()), elements, chunk=elements,
                           sample=None if packed is None else packed.values)

    def put(self, pos: int, rows: np.ndarray | Ragged) -> None:
        packed = rows if isinstance(rows, Ragged) else Ragged.from_block(rows)
        counts = packed.counts()
        self.offsets.put(pos, self.next + np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64))
        self.shapes.put(pos, packed.shapes)
        self.values.put(self.next, packed.values)
        self.next += int(counts.sum())

    def flush(self) -> None:
        for sink in (self.values, self.offsets, self.shapes):
            sink.flush()


class FieldSinks:
    """Writes the fields of a group of rows: an epoch's seen rows, or a stream's raw samples.

    Fixed-shape fields go to ``<prefix>/<path>`` arrays; ragged ones to
    ``ragged/<path>/``. A fixed field that turns ragged is copied, chunk by
    chunk, into its ragged arrays; the fixed array is deleted only after the
    next commit names the field ragged, so a crash leaves the committed rows
    readable either way.
    """

    def __init__(self, group: Group, prefix: str, capacity: int, writer: ChunkWriter, *, rows: int = 0,
                 ragged: Sequence[str] = ()) -> None:
        self.group = group
        self.prefix = prefix
        self.capacity = capacity
        self.writer = writer
        self.resume = rows
        self.ragged = list(ragged)
        self.sinks: dict[str, RowSink | RaggedSink] = {}
        self._replaced: list[str] = []

    def put(self, pos: int, path: str, info: FieldInfo, rows: np.ndarray | Ragged) -> None:
        sink = self.sinks.get(path)
        if sink is None or (info.ragged and isinstance(sink, RowSink)):
            sink = self.sinks[path] = self._open(path, info, sink, pos, rows)
        if isinstance(sink, RowSink):  # a field with one row shape: rows is one block
            sink.put(pos, cast(np.ndarray, rows))
        else:
            sink.put(pos, rows)

    def _open(self, path: str, info: FieldInfo, fixed: RowSink | None, pos: int,
              rows: np.ndarray | Ragged) -> RowSink | RaggedSink:
        """The sink of field ``path``, its arrays made (their codecs chosen on ``rows``, its first rows) unless
        a resumed recording made them."""
        name = f"{self.prefix}/{path}" if self.prefix else path
        if not info.ragged:
            array = child(self.group, name)
            if array is None:
                array = create_rows_array(self.group, name, info, self.capacity, self.writer.compressor,
                                          sample=cast(np.ndarray, rows))
            return RowSink(array, self.writer, resume_at=self.resume)
        ragged_group = require_group(self.group, f"{layout.RAGGED_GROUP}/{path}")
        resumed = self.resume if path in self.ragged else 0
        sink = RaggedSink(ragged_group, info, self.capacity, self.writer, rows=resumed, sample=rows)
        if path not in self.ragged:
            old = fixed.array if fixed is not None else child(self.group, name)
            if fixed is not None:
                fixed.flush()
                self.writer.wait()  # its chunks are read back just below
            if old is not None:  # rows written before the field turned ragged
                before = ChunkReader(old, rows=pos)
                for lo in range(0, pos, old.chunks[0]):
                    sink.put(lo, before.read(lo, min(pos, lo + old.chunks[0])))
                self._replaced.append(name)
            self.ragged.append(path)
        return sink

    def flush(self) -> None:
        for sink in self.sinks.values():
            sink.flush()

    def after_commit(self) -> None:
        """Delete fixed arrays whose rows now live in ragged arrays named by the committed manifest."""
        for name in self._replaced:
            self.writer.forget(f"{self.group.path}/{name}")
            del self.group[name]
        self._replaced.clear()
