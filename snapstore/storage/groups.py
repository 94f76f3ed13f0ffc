"""Snapshots as Zarr groups: opening stores, listing nodes, attributes (commit records).

With ``chunks.py``, ``readers.py``, ``writers.py`` and ``tree.py``, the only
code that touches ``zarr``; zarr's private APIs are confined to ``_zarr.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import zarr

from .. import config
from ..errors import (
    CorruptionError,
    NotASnapshotError,
    RecordingError,
    SnapshotNotFoundError,
    SnapstoreError,
    StoreAccessError,
    UsageError,
)
from . import _zarr, files

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


#: Options snapstore gives fsspec for every URL (the caller's ``storage_options`` win): no cached
#: directory listings, so that each open and each listing a reader makes (``Stream.epochs`` read again)
#: sees what is committed now, also when another process committed it. (The filesystem itself may be
#: the one fsspec caches for these options: it keeps its connections, not its listings.)
FRESH_LISTINGS = {"use_listings_cache": False}

#: A key absent (zarr reads it as such) or already there: answers from the store, never an access failure.
_ANSWERS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, FileExistsError)


@functools.cache
def _access_errors() -> tuple[type[BaseException], ...]:
    """What a store raises when it cannot be reached or refuses access: connection failures and timeouts
    (``OSError``, aiohttp's and botocore's own), credentials missing or refused (s3fs raises
    ``PermissionError`` for a 403), and a ``TypeError`` for options the filesystem does not take."""
    errors: tuple[type[BaseException], ...] = (OSError, TypeError)
    try:
        import botocore.exceptions

        errors += (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)
    except ImportError:  # pragma: no cover - no s3fs
        pass
    try:
        import aiohttp

        errors += (aiohttp.ClientError,)
    except ImportError:  # pragma: no cover - no s3fs
        pass
    return errors


def access_error(url: str, e: BaseException) -> SnapstoreError:
    """The ``SnapstoreError`` for store ``url`` being unreachable or refusing access (``StoreAccessError``), or
    not taking the ``storage_options`` given (``UsageError``); the caller chains the cause
    (``raise access_error(url, e) from e``)."""
    if isinstance(e, PermissionError):
        what = "refused access: check the credentials (key, secret, token) in storage_options or the environment"
    elif "credential" in type(e).__name__.lower():  # botocore's NoCredentialsError, PartialCredentialsError
        what = "was given no usable credentials: pass key and secret in storage_options or set them in the environment"
    elif isinstance(e, TypeError):
        return UsageError(f"{url}: the object store cannot be opened with these storage_options: check their names "
                          f"({type(e).__name__}: {e})")
    else:
        what = "cannot be reached: check endpoint_url in storage_options and that the server is up"
    return StoreAccessError(f"{url}: the object store {what} ({type(e).__name__}: {e})")


@contextlib.contextmanager
def _translating(url: str, errors: tuple[type[BaseException], ...]) -> Iterator[None]:
    """Turn ``errors`` raised inside into ``access_error(url, ...)``, except ``_ANSWERS`` and ``SnapstoreError``s."""
    try:
        yield
    except (*_ANSWERS, SnapstoreError):
        raise
    except errors as e:
        raise access_error(url, e) from e


class RemoteStore(zarr.storage.WrapperStore[Any]):
    """zarr's ``FsspecStore`` for ``url``, with every failure to reach the store or to be let in raised as
    ``access_error`` naming the URL (the cause chained), so that no reader mistakes it for a missing key
    or for damage."""

    def __init__(self, store: Any, url: str = "") -> None:
        super().__init__(store)
        self.url = url
        self._errors = _access_errors()

    def _with_store(self, store: Any) -> RemoteStore:
        return type(self)(store, self.url)

    def _guard(self) -> Any:
        return _translating(self.url, self._errors)

    async def _open(self) -> None:
        with self._guard():
            await self._store._open()

    async def _ensure_open(self) -> None:
        with self._guard():
            await self._store._ensure_open()

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        with self._guard():
            return await self._store.get(key, prototype, byte_range)

    async def get_partial_values(self, prototype: Any, key_ranges: Any) -> Any:
        with self._guard():
            return await self._store.get_partial_values(prototype, key_ranges)

    async def exists(self, key: str) -> bool:
        with self._guard():
            return bool(await self._store.exists(key))

    async def is_empty(self, prefix: str) -> bool:
        with self._guard():
            return bool(await self._store.is_empty(prefix))

    async def set(self, key: str, value: Any) -> None:
        with self._guard():
            await self._store.set(key, value)

    async def set_if_not_exists(self, key: str, value: Any) -> None:
        with self._guard():
            await self._store.set_if_not_exists(key, value)

    async def delete(self, key: str) -> None:
        with self._guard():
            await self._store.delete(key)

    async def delete_dir(self, prefix: str) -> None:
        with self._guard():
            await self._store.delete_dir(prefix)

    async def clear(self) -> None:
        with self._guard():
            await self._store.clear()

    async def getsize(self, key: str) -> int:
        with self._guard():
            return int(await self._store.getsize(key))

    async def list(self) -> Any:
        with self._guard():
            async for key in self._store.list():
                yield key

    async def list_prefix(self, prefix: str) -> Any:
        with self._guard():
            async for key in self._store.list_prefix(prefix):
                yield key

    async def list_dir(self, prefix: str) -> Any:
        with self._guard():
            async for key in self._store.list_dir(prefix):
                yield key


class SnapshotStore(zarr.storage.LocalStore):
    """zarr's ``LocalStore`` for a snapshot on a local disk, reading every key through ``files.read_local``
    (regular files inside the snapshot only) and checking each ``zarr.json`` with ``files.check_metadata``
    before zarr parses it: a hostile file is a ``CorruptionError`` naming it, never a hang or a read that
    does not end. Chunks are read by ``chunks.read_chunk`` the same way, with their own size limit."""

    async def get(self, key: str, prototype: Any = None, byte_range: Any = None) -> Any:
        if not self._is_open:
            await self._open()
        data = await asyncio.to_thread(self.read, key)
        if data is None:
            return None
        if byte_range is not None:  # zarr asks for ranges of sharded chunks only, which snapstore refuses
            raise CorruptionError.damaged(f"{self.root / key}: zarr asked for a byte range of it; snapstore "
                                          "reads whole keys only")
        return _zarr.as_buffer(data, prototype)

    async def get_partial_values(self, prototype: Any, key_ranges: Any) -> list[Any]:
        return [await self.get(key, prototype, byte_range) for key, byte_range in key_ranges]

    async def list_prefix(self, prefix: str) -> Any:
        """Every key under ``prefix`` that is not a folder (zarr lists regular files only): a named pipe or a
        symlink where a chunk belongs is found, and ``read`` says what it is. Symlinked folders are not entered.
        zarr's ``*.partial`` temporary files are no keys: a writer renames them away (while a reader sizes
        the keys listed, in ``Array.nbytes_stored``), or a killed one left them."""
        for folder, _, names in os.walk(self.root / prefix.rstrip("/")):
            for name in names:
                if not _temporary(name):
                    yield Path(folder, name).relative_to(self.root).as_posix()

    def read(self, key: str) -> bytes | None:
        """The bytes of ``key``; a ``zarr.json`` checked for size and depth, any other key at most 2 GiB
        (Blosc's largest buffer; ``read_chunk`` holds chunks to their own, smaller, limit)."""
        path = self.root / key
        if key.rsplit("/", 1)[-1] != "zarr.json":
            return files.read_local(self.root, path, _LARGEST_KEY)
        data = files.read_local(self.root, path, config.MAX_METADATA_BYTES)
        if data is not None:
            files.check_metadata(data, str(path))
        return data


#: Most bytes ``SnapshotStore`` reads of a key other than a ``zarr.json``.
_LARGEST_KEY = 2**31


def _store(path: str, *, read_only: bool, storage_options: dict[str, Any] | None) -> Any:
    if _is_url(path):
        options = {**FRESH_LISTINGS, **(storage_options or {})}
        try:
            store = zarr.storage.FsspecStore.from_url(path, storage_options=options, read_only=read_only)
        except (ImportError, ValueError) as e:  # no s3fs (ImportError), an unknown protocol (ValueError)
            raise _fsspec_error(path, e) from e
        except _access_errors() as e:
            raise access_error(path, e) from e
        return RemoteStore(store, path)
    if storage_options:
        raise UsageError(f"storage_options apply to URLs like s3://bucket/run.snap, not to the local path {path!r}")
    return SnapshotStore(path, read_only=read_only)


#: The object that holds a writer's lock in a snapshot on an object store (``lock.ObjectLock``): a hidden
#: name, so readers, the audit and plain zarr skip it as no node and no damage.
LOCK_KEY = ".snapstore-lock"


def filesystem(url: str, storage_options: dict[str, Any] | None) -> tuple[Any, str]:
    """``(fs, path)``: a fresh synchronous fsspec filesystem for ``url`` (no listings cached from earlier
    calls) and the path of ``url`` in it; ``UsageError`` or ``StoreAccessError`` as for ``open_group``."""
    import fsspec  # a dependency of zarr's FsspecStore

    try:
        fs, root = fsspec.url_to_fs(url, **{"skip_instance_cache": True, **FRESH_LISTINGS, **(storage_options or {})})
    except (ImportError, ValueError) as e:
        raise _fsspec_error(url, e) from e
    except _access_errors() as e:
        raise access_error(url, e) from e
    return fs, root.rstrip("/")


def translating(url: str) -> contextlib.AbstractContextManager[None]:
    """A context in which a store's connection and access failures are raised as ``access_error(url, ...)``."""
    return _translating(url, _access_errors())


def has_data(path: str, storage_options: dict[str, Any] | None) -> bool:
    """Whether anything exists at ``path`` (a local directory with entries but zarr's temporary ``*.partial``
    files, as while a recorder writes the root ``zarr.json``; or any key under a URL but a writer's lock,
    ``LOCK_KEY``)."""
    if not _is_url(path):
        try:
            return not all(_temporary(name) for name in os.listdir(path))
        except NotADirectoryError:
            return True
        except FileNotFoundError:  # nothing, or a new snapshot's folder replaced by zarr as it is created
            return False
    fs, root = filesystem(path, storage_options)
    with translating(path):
        try:
            found = fs.ls(root, detail=False)
        except FileNotFoundError:
            return False
    return any(str(name).rstrip("/").rsplit("/", 1)[-1] != LOCK_KEY for name in found)


def open_group(path: str, *, mode: str, storage_options: dict[str, Any] | None = None,
               attributes: dict[str, Any] | None = None) -> Group:
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

    def open_root() -> Group:
        return zarr.open_group(store, mode="r" if mode == "r" else "r+", zarr_format=3, use_consolidated=False)

    try:
        return open_root()
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError) as e:
        if has_data(path, storage_options):
            with contextlib.suppress(FileNotFoundError, zarr.errors.GroupNotFoundError):
                return open_root()  # its zarr.json written since it was looked for: a recorder creating it
            raise NotASnapshotError(
                f"{path} holds data but no Zarr v3 group; pass the path of a snapshot written by snapstore "
                "(if this was one, its root zarr.json is missing: restore it from a copy)"
            ) from e
        raise SnapshotNotFoundError(f"no snapshot at {path}; check the path, or record one with "
                                    "snapstore.Recorder") from e
    except SnapstoreError:  # the store cannot be reached or refuses access (``RemoteStore``)
        raise
    except zarr.errors.ContainsArrayError as e:
        raise NotASnapshotError(f"{path} is a Zarr array, not a snapshot; pass the path of a snapshot written "
                                "by snapstore") from e
    except METADATA_ERRORS as e:
        raise CorruptionError.damaged(
            f"{path}/zarr.json (the snapshot's root metadata) cannot be read: {type(e).__name__}: {e}") from e


def check_exists(root: Group, path: str) -> None:
    """Raise ``RecordingError`` if the snapshot's root metadata has vanished (deleted under the writer)."""
    try:
        zarr.open_group(root.store, mode="r", zarr_format=3, use_consolidated=False)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
        raise vanished(path) from e


def vanished(path: Any) -> RecordingError:
    """The error for the snapshot at ``path`` deleted under the writer (its root ``zarr.json`` gone)."""
    return RecordingError(f"the snapshot at {path} vanished while recording (its root zarr.json is gone); "
                          "check what deleted it, then record again")


def child(group: Group, name: str) -> Any:
    """``group[name]``, or ``None`` when there is no such node.

    Raises ``CorruptionError`` when the node's ``zarr.json`` cannot be parsed.
    """
    try:
        return group[name]
    except KeyError:
        return None
    except SnapstoreError:  # the store cannot be reached or refuses access: no damage
        raise
    except (ValueError, TypeError) as e:
        raise _damaged(group, name, e) from e


def _damaged(group: Group, name: str, e: Exception) -> CorruptionError:
    path = f"{group.path}/{name}" if group.path else name
    return CorruptionError.damaged(f"the metadata (zarr.json) of {path!r} cannot be read: {e}")


def _temporary(name: str) -> bool:
    """Whether file ``name`` is a temporary file of zarr's local writes (renamed to its key once written)."""
    return name.endswith(".partial")


def _ignorable(name: str) -> bool:
    """Entries that are not nodes and not damage: hidden files, temp files of interrupted writes."""
    base = name.rsplit("/", 1)[-1]
    return base.startswith(".") or _temporary(base)


def members(group: Group, where: str, *, recursive: bool = False,
            exclude: tuple[str, ...] = ()) -> dict[str, Group | Array]:
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
        return CorruptionError.damaged(f"{where}: {found or 'the zarr.json of one of its nodes'} "
                                       f"cannot be read ({what})")

    # zarr's warnings are all recorded (one per skipped child, even where filters would show it once); any
    # other keeps the caller's filters where it is raised: an "error" filter re-raised here would turn a
    # warning from a finalizer that ran during the listing (an unclosed aiohttp session, collected in the
    # writer process) into a failure of the listing
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", zarr.errors.ZarrUserWarning)
        try:
            nodes = dict(group.members())
        except SnapstoreError:  # the store cannot be reached or refuses access: no damage
            raise
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
    base = name.rsplit("/", 1)[-1]
    folder = Path(group.store.root) / group.path / base
    if not (folder / "zarr.json").is_file() and all(p.is_dir() or _ignorable(p.name) for p in folder.rglob("*")):
        return True  # nothing but temp files, or gone since zarr listed it (a replaced array being deleted)
    # its zarr.json written since zarr listed the folder (perhaps while it was looked through), or damage
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            group[base]
        except (*METADATA_ERRORS, OSError):
            return False
    return True


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



def children(group: Group) -> tuple[list[tuple[str, Group | Array]], list[tuple[str, Exception]]]:
    """The nodes directly in ``group``, sorted by name, opened one by one.

    Returns ``(nodes, errors)``: a child whose ``zarr.json`` cannot be read
    or parsed lands in ``errors`` with its exception instead of failing the
    whole listing (as ``Group.members()`` does).
    """
    names = sorted(_zarr.list_dir(group.store_path.store, group.store_path.path))
    nodes: list[tuple[str, Group | Array]] = []
    errors: list[tuple[str, Exception]] = []
    for name in names:
        if name == "zarr.json":
            continue
        try:
            nodes.append((name, group[name]))
        except KeyError:  # a directory that is no node (chunk keys of an array live in arrays, not groups)
            continue
        except SnapstoreError:  # the store cannot be reached or refuses access: no node's fault
            raise
        except (ValueError, TypeError, OSError) as e:
            errors.append((name, e))
    return nodes, errors


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


def array_nbytes_stored(group: Group, where: str = "the snapshot") -> int:
    """Bytes the group's arrays occupy in the store (compressed, all chunks)."""
    try:
        return sum(int(a.nbytes_stored()) for a in members(group, where, recursive=True).values()
                   if isinstance(a, zarr.Array))
    except SnapstoreError:
        raise
    except OSError as e:
        raise CorruptionError(f"{where}: the stored size cannot be read: {e}") from e
