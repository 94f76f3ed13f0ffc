"""Everything that touches Zarr: opening snapshots, creating arrays, writing
whole chunks, committing manifests, and reading chunks back through a cache.

This is the only module that imports ``zarr``.
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.errors
from zarr.codecs import BloscCodec, Crc32cCodec

from . import config, layout
from .errors import CorruptionError, NotASnapshotError, RecordingError, SnapshotNotFoundError, UsageError
from .layout import FieldInfo
from .schema import Ragged, numpy_dtype

Group = zarr.Group
Array = zarr.Array

COMPRESSORS = ("lz4", "zstd", "none")


def _is_url(path: str) -> bool:
    return "://" in path


#: What zarr and ``json`` raise for a ``zarr.json`` that is truncated, not JSON, or not valid
#: metadata (``JSONDecodeError``, ``UnicodeDecodeError`` and zarr's own errors are ``ValueError``s;
#: deeply nested junk is a ``RecursionError``).
METADATA_ERRORS = (ValueError, TypeError, KeyError, AttributeError, IndexError, RecursionError)


def _fsspec_error(path: str, e: Exception) -> UsageError:
    protocol = path.split("://", 1)[0]
    hint = "pip install 'snapstore[s3]'" if protocol in ("s3", "s3a") else "install the fsspec implementation it names"
    return UsageError(f"{path}: fsspec cannot open {protocol}:// URLs here ({e}); {hint}")


def _store(path: str, *, read_only: bool, storage_options: dict[str, Any] | None) -> Any:
    if _is_url(path):
        try:
            return zarr.storage.FsspecStore.from_url(path, storage_options=storage_options, read_only=read_only)
        except (ImportError, ValueError) as e:  # no s3fs (ImportError), an unknown protocol (ValueError)
            raise _fsspec_error(path, e) from e
    if storage_options:
        raise UsageError(f"storage_options apply to URLs like s3://bucket/run.snap, not to the local path {path!r}")
    return zarr.storage.LocalStore(path, read_only=read_only)


def has_data(path: str, storage_options: dict[str, Any] | None) -> bool:
    """Whether anything exists at ``path`` (a local directory with entries, or any key under a URL)."""
    if not _is_url(path):
        return os.path.exists(path) and (not os.path.isdir(path) or bool(os.listdir(path)))
    import fsspec  # a dependency of zarr's FsspecStore

    try:  # a fresh synchronous filesystem: no listings cached from earlier calls
        fs, root = fsspec.url_to_fs(path, skip_instance_cache=True, **(storage_options or {}))
    except (ImportError, ValueError) as e:
        raise _fsspec_error(path, e) from e
    return bool(fs.exists(root))


def open_group(path: str, *, mode: str, storage_options: dict[str, Any] | None = None, attributes: dict[str, Any] | None = None) -> Group:
    """Open the snapshot's root group: ``"r"`` read-only, ``"a"`` existing for writing, ``"w"`` new
    (with ``attributes``, written in the same key as the group).

    Opening a local snapshot for appending removes the temporary ``*.partial``
    files a killed writer can leave behind. Remote groups are opened as Zarr
    v3 without consolidated metadata, so nothing probes for v2 keys or trusts
    a stale consolidated listing.

    Raises ``SnapshotNotFoundError`` or ``NotASnapshotError`` for ``"r"``/``"a"``
    when no Zarr group is there, and ``CorruptionError`` when its root
    ``zarr.json`` is damaged.
    """
    store = _store(path, read_only=mode == "r", storage_options=storage_options)
    if mode == "w":
        return zarr.create_group(store, zarr_format=3, overwrite=True, attributes=attributes)
    if mode == "a" and not _is_url(path):
        for stray in Path(path).rglob("*.partial"):
            stray.unlink(missing_ok=True)
    try:
        return zarr.open_group(store, mode="r" if mode == "r" else "r+", zarr_format=3, use_consolidated=False)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError) as e:
        if has_data(path, storage_options):
            raise NotASnapshotError(
                f"{path} holds data but no Zarr v3 group; pass the path of a snapshot written by snapstore "
                "(if this was one, its root zarr.json is missing: restore it from a copy)"
            ) from e
        raise SnapshotNotFoundError(f"no snapshot at {path}; check the path, or record one with snapstore.Recorder") from e
    except zarr.errors.ContainsArrayError as e:
        raise NotASnapshotError(f"{path} is a Zarr array, not a snapshot; pass the path of a snapshot written by snapstore") from e
    except METADATA_ERRORS as e:
        raise CorruptionError(
            f"{path}/zarr.json (the snapshot's root metadata) is damaged: {type(e).__name__}: {e}; "
            "restore it from a copy of the snapshot"
        ) from e


def check_exists(root: Group, path: str) -> None:
    """Raise ``RecordingError`` if the snapshot's root metadata has vanished (deleted under the writer)."""
    try:
        zarr.open_group(root.store, mode="r", zarr_format=3, use_consolidated=False)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
        raise RecordingError(f"the snapshot at {path} vanished while recording (its root zarr.json is gone); "
                             "check what deleted it, then record again") from e


def reopen(group: Group) -> Group:
    """``group`` read again from the store (a Group caches its metadata and attributes)."""
    return zarr.open_group(group.store, path=group.path, mode="r", zarr_format=3, use_consolidated=False)


def child(group: Group, name: str) -> Any:
    """``group[name]``, or ``None`` when there is no such node."""
    try:
        return group[name]
    except KeyError:
        return None


def require_group(group: Group, name: str) -> Group:
    node = child(group, name)
    return node if node is not None else group.create_group(name)


def write_attr(node: Group | Array, key: str, value: dict[str, Any]) -> None:
    """Replace one attribute; a single-key rewrite (atomic on local disk and object stores)."""
    node.attrs.update({key: value})


def chunk_rows(info: FieldInfo) -> int:
    """Rows per chunk: the power of two nearest below ``DEFAULT_CHUNK_BYTES / row bytes``,
    between 1 and ``MAX_CHUNK_ROWS`` (strings count 16 bytes a row)."""
    itemsize = 16 if info.dtype == "str" else numpy_dtype(info.dtype).itemsize
    rows = config.DEFAULT_CHUNK_BYTES // max(1, int(np.prod(info.shape, dtype=np.int64)) * itemsize)
    return min(config.MAX_CHUNK_ROWS, 1 << max(0, int(rows).bit_length() - 1))


def _codecs(dtype: np.dtype, compressor: str) -> list[Any]:
    if compressor not in COMPRESSORS:
        raise UsageError(f"compressor={compressor!r} is not one of {COMPRESSORS}")
    if compressor == "none":
        return [Crc32cCodec()]
    shuffle = "shuffle" if dtype.kind in "iu" and dtype.itemsize > 1 else "noshuffle"
    return [BloscCodec(cname=compressor, clevel=5 if compressor == "lz4" else 1, shuffle=shuffle), Crc32cCodec()]


def create_rows_array(group: Group, name: str, info: FieldInfo, capacity: int, compressor: str, *, chunk: int | None = None) -> Array:
    """A preallocated ``(capacity, *info.shape)`` array chunked along rows, compressed and checksummed.

    Floats are filled with NaN so unwritten rows are visible; committed row
    counts live in the manifests, never in the fill value.
    """
    dtype = numpy_dtype(info.dtype)
    fill = np.nan if dtype.kind in "fc" else None
    return group.create_array(
        name,
        shape=(capacity, *info.shape),
        dtype=str if info.dtype == "str" else dtype,
        chunks=(chunk or chunk_rows(info), *info.shape),
        compressors=_codecs(dtype, compressor),
        fill_value=fill,
        dimension_names=("row", *(f"dim_{i}" for i in range(1, len(info.shape) + 1))),
        attributes={"field": info.to_dict()},
        config={"write_empty_chunks": True},
    )


class RowSink:
    """Stages rows of one array and writes each chunk whole, once it is full.

    Rows arrive at increasing positions (gaps keep the fill value). ``flush``
    writes the partly filled current chunk so a commit can cover it; the chunk
    is written again, whole, when it fills. The array grows (never shrinks)
    when a position passes its preallocated length.
    """

    def __init__(self, array: Array, *, resume_at: int = 0) -> None:
        self.array = array
        self.rows = array.chunks[0]
        self._chunk = -1
        self._buf = np.empty(0)
        self._end = resume_at  # one past the highest staged position
        self._dirty = False
        if resume_at % self.rows:  # keep the committed rows of a partly written chunk
            self._start_chunk(resume_at // self.rows)
            lo = self._chunk * self.rows
            self._buf[: resume_at - lo] = array[lo:resume_at]

    def put(self, start: int, rows: np.ndarray) -> None:
        stop = start + len(rows)
        if stop > self.array.shape[0]:
            self.array.resize((max(stop, 2 * self.array.shape[0]), *self.array.shape[1:]))
        done = 0
        while done < len(rows):
            pos = start + done
            chunk = pos // self.rows
            if chunk != self._chunk:
                self._write(whole=True)
                self._start_chunk(chunk)
            lo = pos - chunk * self.rows
            n = min(len(rows) - done, self.rows - lo)
            self._buf[lo : lo + n] = rows[done : done + n]
            done += n
            self._end = max(self._end, pos + n)
            self._dirty = True

    def _start_chunk(self, chunk: int) -> None:
        self._chunk = chunk
        self._buf = np.empty((self.rows, *self.array.shape[1:]), dtype=self.array.dtype)
        self._buf[...] = self.array.fill_value

    def _write(self, *, whole: bool) -> None:
        if not self._dirty:
            return
        lo = self._chunk * self.rows
        hi = min(lo + self.rows, self.array.shape[0]) if whole else self._end
        self.array[lo:hi] = self._buf[: hi - lo]
        self._dirty = not whole

    def flush(self) -> None:
        """Write the staged rows of the current chunk (a partial chunk write)."""
        self._write(whole=False)
        self._dirty = False

    def close(self) -> None:
        """Write the current chunk up to the last staged row."""
        self.flush()


class RaggedSink:
    """Writes a ragged field as ``values`` (1-D), ``offsets`` and ``shapes`` arrays in ``group``.

    Rows arrive at increasing positions; their elements are appended to
    ``values``. ``rows`` and ``values`` give where a resumed field continues.
    """

    def __init__(self, group: Group, info: FieldInfo, capacity: int, compressor: str, *, rows: int = 0) -> None:
        def sink(name: str, part: FieldInfo, cap: int, **kw: Any) -> RowSink:
            array = child(group, name)
            if array is None:
                array = create_rows_array(group, name, part, cap, compressor, **kw)
            return RowSink(array, resume_at=rows if name != layout.VALUES else self.next)

        self.next = 0
        self.offsets = sink(layout.OFFSETS, FieldInfo("ndarray", "int64", ()), capacity)
        self.shapes = sink(layout.SHAPES, FieldInfo("ndarray", "int64", (len(info.shape),)), capacity)
        if rows:
            last = self.offsets.array[rows - 1 : rows]
            self.next = int(last[0] + np.prod(self.shapes.array[rows - 1]))
        elements = max(1, config.DEFAULT_CHUNK_BYTES // numpy_dtype(info.dtype).itemsize)
        self.values = sink(layout.VALUES, FieldInfo(info.kind, info.dtype, ()), elements, chunk=elements)

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

    def __init__(self, group: Group, prefix: str, capacity: int, compressor: str, *, rows: int = 0, ragged: list[str] = ()) -> None:
        self.group = group
        self.prefix = prefix
        self.capacity = capacity
        self.compressor = compressor
        self.resume = rows
        self.ragged = list(ragged)
        self.sinks: dict[str, RowSink | RaggedSink] = {}
        self._replaced: list[str] = []

    def put(self, pos: int, path: str, info: FieldInfo, rows: np.ndarray | Ragged) -> None:
        sink = self.sinks.get(path)
        if sink is None or (info.ragged and isinstance(sink, RowSink)):
            sink = self.sinks[path] = self._open(path, info, sink, pos)
        sink.put(pos, rows)

    def _open(self, path: str, info: FieldInfo, fixed: RowSink | None, pos: int) -> RowSink | RaggedSink:
        name = f"{self.prefix}/{path}" if self.prefix else path
        if not info.ragged:
            array = child(self.group, name)
            if array is None:
                array = create_rows_array(self.group, name, info, self.capacity, self.compressor)
            return RowSink(array, resume_at=self.resume)
        ragged_group = require_group(self.group, f"{layout.RAGGED_GROUP}/{path}")
        resumed = self.resume if path in self.ragged else 0
        sink = RaggedSink(ragged_group, info, self.capacity, self.compressor, rows=resumed)
        if path not in self.ragged:
            old = fixed.array if fixed is not None else child(self.group, name)
            if fixed is not None:
                fixed.flush()
            if old is not None:  # rows written before the field turned ragged
                for lo in range(0, pos, old.chunks[0]):
                    sink.put(lo, old[lo : min(pos, lo + old.chunks[0])])
                self._replaced.append(name)
            self.ragged.append(path)
        return sink

    def flush(self) -> None:
        for sink in self.sinks.values():
            sink.flush()

    def after_commit(self) -> None:
        """Delete fixed arrays whose rows now live in ragged arrays named by the committed manifest."""
        for name in self._replaced:
            del self.group[name]
        self._replaced.clear()


class RaggedReader:
    """Reads rows of a ragged field: a list of arrays per read, through the values' chunk cache."""

    def __init__(self, group: Group, rows: int) -> None:
        self._values = ChunkReader(group[layout.VALUES])
        self.offsets = ChunkReader(group[layout.OFFSETS]).read(0, rows)
        self.shapes = ChunkReader(group[layout.SHAPES]).read(0, rows)

    def read(self, start: int, stop: int) -> list[np.ndarray]:
        if stop <= start:
            return []
        counts = np.prod(self.shapes[start:stop], axis=1, dtype=np.int64)
        lo = int(self.offsets[start])
        flat = self._values.read(lo, int(self.offsets[stop - 1] + counts[-1]))
        starts = (self.offsets[start:stop] - lo).tolist()
        return [flat[a : a + c].reshape(sh) for a, c, sh in zip(starts, counts.tolist(), self.shapes[start:stop].tolist())]

    def gather(self, positions: np.ndarray) -> list[np.ndarray]:
        return [self.read(int(p), int(p) + 1)[0] for p in positions]


class ChunkReader:
    """Reads rows of one array chunk by chunk, keeping a few decoded chunks.

    Sequential reads decode each chunk once; a random read of a recently read
    chunk costs a slice. Decode and checksum failures become ``CorruptionError``
    naming the array and the chunk.
    """

    def __init__(self, array: Array, *, cached_chunks: int = config.DEFAULT_CACHED_CHUNKS) -> None:
        self.array = array
        self.rows = array.chunks[0]
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cached_chunks = cached_chunks

    def chunk(self, c: int) -> np.ndarray:
        block = self._cache.get(c)
        if block is not None:
            self._cache.move_to_end(c)
            return block
        lo = c * self.rows
        try:
            block = self.array[lo : lo + self.rows]
        except (ValueError, RuntimeError, OSError) as e:
            raise CorruptionError(
                f"chunk {c} (rows {lo}-{lo + self.rows - 1}) of array {self.array.path!r} cannot be read: {e}; "
                "the file is damaged: restore it from a copy, or run `snapstore audit` to list every damaged chunk"
            ) from e
        self._cache[c] = block
        if len(self._cache) > self._cached_chunks:
            self._cache.popitem(last=False)
        return block

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as a new array."""
        if stop - start == 0:
            return np.empty((0, *self.array.shape[1:]), dtype=self.array.dtype)
        first, last = start // self.rows, (stop - 1) // self.rows
        parts = [
            self.chunk(c)[max(start - c * self.rows, 0) : stop - c * self.rows]
            for c in range(first, last + 1)
        ]
        return parts[0].copy() if len(parts) == 1 else np.concatenate(parts)

    def gather(self, positions: np.ndarray) -> np.ndarray:
        """Rows at ``positions`` (any order) as a new array, each chunk decoded once."""
        out = np.empty((len(positions), *self.array.shape[1:]), dtype=self.array.dtype)
        chunks = positions // self.rows
        for c in np.unique(chunks):
            sel = np.nonzero(chunks == c)[0]
            out[sel] = self.chunk(int(c))[positions[sel] - c * self.rows]
        return out


def array_nbytes_stored(group: Group) -> int:
    """Bytes the group's arrays occupy in the store (compressed, all chunks)."""
    return sum(int(a.nbytes_stored()) for _, a in group.arrays()) + sum(
        array_nbytes_stored(g) for _, g in group.groups()
    )
