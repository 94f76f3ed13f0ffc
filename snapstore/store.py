"""Everything that touches Zarr but writing rows: opening snapshots, groups,
attributes (commit records), checking arrays and reading chunks back through
a cache.

This and ``_sinks.py`` (creating arrays, writing rows as whole chunks) are the
only modules that import ``zarr``.
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.errors
from zarr.codecs import BloscCodec, Crc32cCodec
from zarr.core.array_spec import ArrayConfig
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage._local import _get as _local_get

from . import config, layout
from .errors import CorruptionError, NotASnapshotError, RecordingError, SnapshotNotFoundError, UsageError
from .layout import FieldInfo
from .schema import numpy_dtype

Group = zarr.Group
Array = zarr.Array

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


def groups_with(group: Group, attr: str) -> dict[str, Group]:
    """Child groups of ``group`` that carry attribute ``attr`` (streams, epochs), by name.

    A child whose metadata a writer has not finished creating (a directory
    without its ``zarr.json`` yet) is not listed; one whose ``zarr.json`` is
    damaged raises ``CorruptionError``.
    """
    return {name: g for name, g in groups(group) if attr in g.attrs}


def child(group: Group, name: str) -> Any:
    """``group[name]``, or ``None`` when there is no such node.

    Raises ``CorruptionError`` when the node's ``zarr.json`` cannot be parsed.
    """
    try:
        return group[name]
    except KeyError:
        return None
    except (ValueError, TypeError) as e:
        raise _damaged(group, name, e) from e


def _damaged(group: Group, name: str, e: Exception) -> CorruptionError:
    path = f"{group.path}/{name}" if group.path else name
    return CorruptionError(
        f"the metadata (zarr.json) of {path!r} cannot be read: {e}; the snapshot is damaged: restore the "
        "file from a copy, or run `snapstore audit` to list every damaged node"
    )


def _ignorable(name: str) -> bool:
    """Entries that are not nodes and not damage: hidden files, temp files of interrupted writes."""
    base = name.rsplit("/", 1)[-1]
    return base.startswith(".") or base.endswith(".partial")


def members(group: Group, where: str, *, recursive: bool = False, exclude: tuple[str, ...] = ()) -> dict[str, Group | Array]:
    """The nodes under ``group`` by path relative to it (children only, or the whole subtree
    without descending into the children named in ``exclude``).

    For readers: where zarr would skip an entry with a warning (a folder whose
    ``zarr.json`` was deleted) or fail on unreadable metadata, this raises
    ``CorruptionError`` naming the place, so damage never hides a node.
    """
    out: dict[str, Group | Array] = {}
    todo: list[tuple[str, Group]] = [("", group)]
    while todo:
        prefix, parent = todo.pop()
        for name, node in _children(parent, f"{where}/{prefix}" if prefix else where).items():
            key = f"{prefix}/{name}" if prefix else name
            out[key] = node
            if recursive and isinstance(node, zarr.Group) and key not in exclude:
                todo.append((key, node))
    return out


def _children(group: Group, where: str) -> dict[str, Group | Array]:
    def damaged(what: str) -> CorruptionError:
        found = _find_damage(group)
        return CorruptionError(
            f"{where}: {found or 'the zarr.json of one of its nodes'} is damaged ({what}); "
            "restore the snapshot from a copy, or run `snapstore audit` to list what else is damaged"
        )

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            nodes = dict(group.members())
        except METADATA_ERRORS as e:
            raise damaged(f"{type(e).__name__}: {e}") from e
    for w in caught:
        message = str(w.message)
        if issubclass(w.category, zarr.errors.ZarrUserWarning) and "not recognized" in message:
            # zarr skips a child whose zarr.json is missing, or lacks a required key, with this warning
            name = message.removeprefix("Object at ").split(" is not recognized", 1)[0]
            if not _ignorable(name) and not _being_written(group, name):
                raise damaged(f"zarr cannot read {name!r} as a group or an array")
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return nodes


def _being_written(group: Group, name: str) -> bool:
    """Whether the local folder ``name`` of ``group`` holds nothing but temp files of a write in
    progress (or of a writer killed in it): a node being created, not a damaged one."""
    if not isinstance(group.store, zarr.storage.LocalStore):
        return False
    folder = Path(group.store.root) / group.path / name.rsplit("/", 1)[-1]
    if not folder.is_dir():  # gone since zarr listed it (a replaced array being deleted)
        return True
    return all(p.is_dir() or _ignorable(p.name) for p in folder.rglob("*"))


def _find_damage(group: Group) -> str | None:
    """On a local disk, which child of ``group`` has a missing or unreadable ``zarr.json``."""
    if not isinstance(group.store, zarr.storage.LocalStore):
        return None
    root = Path(group.store.root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for child in sorted((root / group.path).iterdir()):
            if not child.is_dir() or _ignorable(child.name):
                continue
            if not (child / "zarr.json").exists():
                return f"{child.relative_to(root)} (its zarr.json is missing)"
            try:
                group[child.name]
            except (*METADATA_ERRORS, OSError):
                return str((child / "zarr.json").relative_to(root))
    return None


def reread(group: Group) -> Group:
    """``group`` read again from its store: its attributes as they are now, not as when it was opened."""
    return zarr.open_group(group.store, path=group.path, mode="r", zarr_format=3, use_consolidated=False)


def require_group(group: Group, name: str) -> Group:
    """The group at path ``name`` (``a/b/c``) under ``group``, creating what is missing.

    Groups are created one level at a time, parent before child: zarr writes a
    node's ``zarr.json`` and those of its missing parents concurrently, so a
    writer killed in between could leave a node under a folder with no
    ``zarr.json``, which readers rightly take for damage.
    """
    for part in name.split("/"):
        node = child(group, part)
        group = node if node is not None else group.create_group(part)
    return group


def create_group(group: Group, name: str, attributes: dict[str, Any] | None = None) -> Group:
    """A new group at path ``name`` under ``group``; missing parents are created first (see ``require_group``)."""
    parent, _, base = name.rpartition("/")
    return (require_group(group, parent) if parent else group).create_group(base, attributes=attributes)


def write_attr(node: Group | Array, key: str, value: dict[str, Any]) -> None:
    """Replace one attribute; a single-key rewrite (atomic on local disk and object stores)."""
    node.attrs.update({key: value})


_SERIALIZERS = (zarr.codecs.BytesCodec, zarr.codecs.VLenUTF8Codec)
_BYTES_CODECS = (BloscCodec, zarr.codecs.ZstdCodec, zarr.codecs.GzipCodec)


def check_array(array: Array, where: str, *, dtype: np.dtype | None = None, row_shape: tuple[int, ...] | None = None,
                rows: int = 0) -> None:
    """Refuse an array whose metadata snapstore did not write, before it decodes a byte of it.

    The metadata is not checksummed, so it is checked against what the
    manifests say: rows chunked along axis 0 only, ``dtype`` and ``row_shape``
    as recorded, at least ``rows`` rows, and the codec chain snapstore writes
    (little-endian bytes or vlen-utf8, then an optional blosc/zstd/gzip,
    then crc32c last). Anything else, a transpose, a missing checksum, a
    codec outside the Zarr spec, could turn stored bytes into wrong values
    without an error, so it raises ``CorruptionError``.
    """
    def bad(what: str) -> CorruptionError:
        return CorruptionError(f"array {array.path!r} of {where}: {what}; the snapshot's metadata was altered: restore it from a copy")

    md = array.metadata
    if md.zarr_format != 3 or array.ndim < 1:
        raise bad(f"expected a Zarr v3 array of rows, found zarr_format {md.zarr_format} with {array.ndim} dimensions")
    if tuple(array.chunks[1:]) != tuple(array.shape[1:]):
        raise bad(f"chunks {array.chunks} split rows of shape {array.shape[1:]}; snapstore chunks along rows only")
    if array.shape[0] < rows:
        raise bad(f"{array.shape[0]} rows, fewer than the {rows} the manifest says were committed")
    if dtype is not None and array.dtype != dtype:
        raise bad(f"dtype {array.dtype}, but the manifest records {dtype}")
    if row_shape is not None and tuple(array.shape[1:]) != tuple(row_shape):
        raise bad(f"rows of shape {tuple(array.shape[1:])}, but the manifest records {tuple(row_shape)}")
    codecs = list(md.codecs)
    ok = (
        len(codecs) >= 2
        and isinstance(codecs[0], _SERIALIZERS)
        and getattr(codecs[0], "endian", None) in (None, zarr.codecs.Endian.little)
        and all(isinstance(c, _BYTES_CODECS) for c in codecs[1:-1])
        and isinstance(codecs[-1], Crc32cCodec)
    )
    if not ok:
        raise bad(f"codecs {[type(c).__name__ for c in codecs]} are not the chain snapstore writes (bytes or vlen-utf8, "
                  "an optional compressor, crc32c)")


class RaggedReader:
    """Reads rows of a ragged field: a list of arrays per read, through the values' chunk cache.

    ``nodes`` maps ``values``/``offsets``/``shapes`` to their arrays.
    """

    def __init__(self, nodes: dict[str, Any], rows: int, info: FieldInfo, where: str) -> None:
        def array(name: str) -> Array:
            node = nodes.get(name)
            if not isinstance(node, zarr.Array):
                raise CorruptionError(f"{where}: array {name!r} of a ragged field is missing; the snapshot is damaged: restore it from a copy")
            return node

        int64 = np.dtype("int64")
        self._where = where
        self.offsets = ChunkReader(array(layout.OFFSETS), where, rows=rows, dtype=int64, row_shape=()).read(0, rows)
        self.shapes = ChunkReader(array(layout.SHAPES), where, rows=rows, dtype=int64, row_shape=(len(info.shape),)).read(0, rows)
        counts = np.prod(self.shapes, axis=1, dtype=np.int64)
        ends = self.offsets + counts
        if rows and (self.offsets[0] < 0 or (self.shapes < 0).any() or (self.offsets[1:] != ends[:-1]).any()):
            raise CorruptionError(f"{where}: the offsets and shapes of a ragged field disagree; the snapshot is damaged: restore it from a copy")
        total = int(ends[-1]) if rows else 0
        self._values = ChunkReader(array(layout.VALUES), where, rows=total, dtype=numpy_dtype(info.dtype), row_shape=())

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


_CHUNK_CONFIG = ArrayConfig(order="C", write_empty_chunks=True)


def _coords(array: Array, c: int) -> tuple[int, ...]:
    """Grid coordinates of row-chunk ``c`` (every chunk spans the whole row shape)."""
    return (c,) + (0,) * (array.ndim - 1)


def chunk_path(array: Array, c: int) -> Any:
    """Where row-chunk ``c`` of ``array`` is stored: a ``StorePath`` (store and key)."""
    return array.store_path / array.metadata.encode_chunk_key(_coords(array, c))


def local_file(where: Any) -> Path | None:
    """The file behind a ``StorePath`` on a local disk; ``None`` on any other store."""
    return Path(where.store.root) / where.path if isinstance(where.store, zarr.storage.LocalStore) else None


def chunk_codecs(array: Array, c: int) -> list[tuple[Any, Any]]:
    """``(codec, spec of its input)`` for each of ``array``'s codecs on row-chunk ``c``, in encoding
    order: what snapstore needs to encode (``_sinks.ChunkWriter``) or decode (``read_chunk``) a
    whole chunk itself, as zarr's codec pipeline does."""
    spec = array.metadata.get_chunk_spec(_coords(array, c), _CHUNK_CONFIG, default_buffer_prototype())
    out = []
    for codec in array.metadata.codecs:
        out.append((codec, spec))
        spec = codec.resolve_metadata(spec)
    return out


def read_chunk(array: Array, c: int, committed_in: str | None = None) -> np.ndarray:
    """Rows of row-chunk ``c`` of ``array`` (the last chunk may be shorter), decoded and checksum-verified;
    possibly read-only (copy before changing them).

    One store read (a plain file read on a local disk) and the array's codecs
    in reverse (``_decode_sync``): what ``array[lo:lo + rows]`` returns, without
    zarr's per-call machinery. A chunk missing from the store reads as the fill
    value, as in zarr, unless ``committed_in`` names what the manifest committing
    its rows belongs to (``"epoch 3 of stream 'train'"``).

    Raises
    ------
    CorruptionError
        The chunk fails to decode or its CRC32C does not match, or it is
        missing although ``committed_in`` says its rows were committed; the
        message names the array, the chunk and its rows.
    """
    rows = array.chunks[0]
    lo = c * rows
    n = min(rows, array.shape[0] - lo)
    try:
        data = _get_chunk(chunk_path(array, c))
        if data is not None:
            for codec, spec in reversed(chunk_codecs(array, c)):
                data = codec._decode_sync(data, spec)
            return data.as_numpy_array()[:n]
    except (ValueError, RuntimeError, OSError, TypeError, IndexError) as e:
        raise CorruptionError(
            f"chunk {c} (rows {lo}-{lo + rows - 1}) of array {array.path!r} cannot be read: {e}; "
            "the file is damaged: restore it from a copy, or run `snapstore audit` to list every damaged chunk"
        ) from e
    if committed_in is not None:
        raise CorruptionError(_missing(array, c, committed_in))
    return np.full((n, *array.shape[1:]), array.fill_value, dtype=array.dtype)


def _missing(array: Array, c: int, where: str) -> str:
    rows = array.chunks[0]
    return (f"chunk {c} (rows {c * rows}-{(c + 1) * rows - 1}) of array {array.path!r} of {where} is missing from "
            "the store although the manifest says its rows were committed; restore the file from a copy")


def _get_chunk(where: Any) -> Any:
    """The bytes of one key (a ``StorePath``), ``None`` if absent: a plain file read on a local disk
    (zarr's own ``_get``, minus the hops through its event loop and a thread), else zarr's get."""
    path = local_file(where)
    if path is None:
        return sync(where.get(default_buffer_prototype()))
    try:
        return _local_get(path, default_buffer_prototype(), None)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


async def _list(store: Any, prefix: str) -> list[str]:
    return [key async for key in store.list_prefix(prefix)]


async def _list_dir(store: Any, prefix: str) -> list[str]:
    return [key async for key in store.list_dir(prefix)]


def children(group: Group) -> tuple[list[tuple[str, Group | Array]], list[tuple[str, Exception]]]:
    """The nodes directly in ``group``, sorted by name, opened one by one.

    Returns ``(nodes, errors)``: a child whose ``zarr.json`` cannot be read
    or parsed lands in ``errors`` with its exception instead of failing the
    whole listing (as ``Group.members()`` does).
    """
    names = sorted(sync(_list_dir(group.store_path.store, group.store_path.path)))
    nodes: list[tuple[str, Group | Array]] = []
    errors: list[tuple[str, Exception]] = []
    for name in names:
        if name == "zarr.json":
            continue
        try:
            nodes.append((name, group[name]))
        except KeyError:  # a directory that is no node (chunk keys of an array live in arrays, not groups)
            continue
        except (ValueError, TypeError, OSError) as e:
            errors.append((name, e))
    return nodes, errors


def groups(group: Group) -> list[tuple[str, Group]]:
    """The groups directly in ``group``, sorted by name, like ``Group.groups()``.

    Raises ``CorruptionError`` naming the first child whose ``zarr.json``
    cannot be parsed (``Group.groups()`` raises a bare ``JSONDecodeError``).
    """
    nodes, errors = children(group)
    if errors:
        name, e = errors[0]
        raise _damaged(group, name, e) from e
    return [(name, node) for name, node in nodes if isinstance(node, Group)]


def walk_arrays(group: Group, errors: list[tuple[str, Exception]] | None = None) -> Iterator[tuple[str, Array]]:
    """Every array below ``group`` as ``(path relative to group, array)``, depth first by name.

    Nodes whose metadata cannot be read are skipped and, when ``errors`` is
    given, appended to it as ``(path relative to group, exception)``.
    """
    nodes, bad = children(group)
    if errors is not None:
        errors.extend(bad)
    for name, node in nodes:
        if isinstance(node, Array):
            yield name, node
        else:
            sub: list[tuple[str, Exception]] | None = [] if errors is not None else None
            for rel, arr in walk_arrays(node, sub):
                yield f"{name}/{rel}", arr
            if errors is not None and sub:
                errors.extend((f"{name}/{rel}", e) for rel, e in sub)


def stored_chunks(array: Array) -> set[int]:
    """Row-chunk numbers of ``array`` that have a key (a file, an object) in the store."""
    base = array.store_path.path
    prefix = f"{base}/" if base else ""
    keys = set(sync(_list(array.store_path.store, prefix)))
    encode = array.metadata.chunk_key_encoding.encode_chunk_key  # type: ignore[union-attr]  # always v3 here
    return {c for c in range(array.cdata_shape[0]) if prefix + encode(_coords(array, c)) in keys}


class ChunkReader:
    """Reads rows of one array chunk by chunk, keeping a few decoded chunks.

    Sequential reads decode each chunk once; a random read of a recently read
    chunk costs a slice. The array's metadata is checked first (``check_array``).
    Decode and checksum failures become ``CorruptionError`` naming the array
    and the chunk, and so does a chunk missing from the store for rows the
    manifest says were committed (zarr would read it as the fill value), unless
    ``sparse`` (outputs, whose rows may never have been logged).
    """

    def __init__(self, array: Array, where: str = "the snapshot", *, rows: int | None = None, dtype: np.dtype | None = None,
                 row_shape: tuple[int, ...] | None = None, sparse: bool = False,
                 cached_chunks: int = config.DEFAULT_CACHED_CHUNKS) -> None:
        check_array(array, where, dtype=dtype, row_shape=row_shape, rows=rows or 0)
        self.array = array
        self.rows = array.chunks[0]
        self._where = where
        self._committed = array.shape[0] if rows is None else rows
        self._sparse = sparse
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cached_chunks = cached_chunks

    def chunk(self, c: int) -> np.ndarray:
        block = self._cache.get(c)
        if block is not None:
            self._cache.move_to_end(c)
            return block
        committed = not self._sparse and c * self.rows < self._committed
        block = read_chunk(self.array, c, self._where if committed else None)
        self._cache[c] = block
        if len(self._cache) > self._cached_chunks:
            self._cache.popitem(last=False)
        return block

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as a new array."""
        if stop - start == 0:
            return np.empty((0, *self.array.shape[1:]), dtype=self.array.dtype)
        first, last = start // self.rows, (stop - 1) // self.rows
        if first == last:  # one chunk: the common case of a batch or a single row
            lo = first * self.rows
            return self.chunk(first)[start - lo : stop - lo].copy()
        parts = [
            self.chunk(c)[max(start - c * self.rows, 0) : stop - c * self.rows]
            for c in range(first, last + 1)
        ]
        return np.concatenate(parts)

    def gather(self, positions: np.ndarray) -> np.ndarray:
        """Rows at ``positions`` (any order) as a new array, each chunk decoded once."""
        out = np.empty((len(positions), *self.array.shape[1:]), dtype=self.array.dtype)
        chunks = positions // self.rows
        for c in np.unique(chunks):
            sel = np.nonzero(chunks == c)[0]
            out[sel] = self.chunk(int(c))[positions[sel] - c * self.rows]
        return out


def check_rows_stored(array: Array, start: int, block: np.ndarray, where: str = "the snapshot") -> None:
    """Raise ``CorruptionError`` if a chunk under ``block`` (rows ``start:`` of ``array``, read
    through ``Array.__getitem__``, which reads a missing chunk as fill values) is missing from the
    store, i.e. reads as nothing but the fill value and has no key. For committed rows only."""
    if len(block) == 0 or block.shape[1:] != array.shape[1:]:
        return
    rows = array.chunks[0]
    fill = np.asarray(array.fill_value)
    for c in range(start // rows, (start + len(block) - 1) // rows + 1):
        part = block[max(0, c * rows - start) : (c + 1) * rows - start]
        same = np.isnan(part) if part.dtype.kind in "fc" and np.isnan(fill) else part == fill
        if np.all(same) and not _chunk_stored(array, c):
            raise CorruptionError(_missing(array, c, where))


def _chunk_stored(array: Array, c: int) -> bool:
    """Whether row chunk ``c`` of ``array`` exists as a key in its store."""
    where = chunk_path(array, c)
    path = local_file(where)
    if path is not None:
        return path.exists()
    store = array.store
    if isinstance(store, zarr.storage.FsspecStore):
        fs = getattr(store.fs, "sync_fs", None)  # a synchronous filesystem zarr wrapped
        if fs is None:  # an async one (s3fs): a synchronous twin with the same options
            fs = type(store.fs)(**{**store.fs.storage_options, "asynchronous": False, "skip_instance_cache": True})
        return bool(fs.exists(f"{store.path}/{where.path}"))
    return True  # snapstore opens only the two stores above; any other cannot be asked cheaply


def array_nbytes_stored(group: Group, where: str = "the snapshot") -> int:
    """Bytes the group's arrays occupy in the store (compressed, all chunks)."""
    try:
        return sum(int(a.nbytes_stored()) for a in members(group, where, recursive=True).values() if isinstance(a, zarr.Array))
    except OSError as e:
        raise CorruptionError(f"{where}: the stored size cannot be read: {e}") from e
