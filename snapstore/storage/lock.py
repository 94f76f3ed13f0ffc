"""One writer per snapshot: the lock a ``Recorder`` holds for its life, on a local disk or an object store.

Local snapshots (``SnapshotLock``): ``flock(LOCK_EX)`` on the snapshot's
directory itself, not on a file in it: the snapshot holds nothing but Zarr
nodes (plain zarr lists no extra entry, ``snapstore audit`` sees nothing
new), and the lock goes with the process that holds it, so a killed writer
never leaves a stale lock.

Object stores (``ObjectLock``) have no lock that ends with a process: the
writer creates the object ``<snapshot>/.snapstore-lock`` with a conditional
write (S3 ``PutObject`` with ``If-None-Match: *``), which fails when it is
already there. It names its holder (host, pid, start) and is a lease: the
writer rewrites it at its flushes (``If-Match`` its own ETag), and a lock
older than its lease, by the store's own clock, is a dead writer's, which
the next writer takes over with one more conditional write (``If-Match`` the
old ETag: of two writers taking it over, one wins). Stores without
conditional writes (other protocols, or an S3 service that ignores the
header) get no lock, with one warning: one writer per snapshot is then the
rule (docs/OBJECT-STORAGE.md).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
import uuid
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

from .. import config
from ..errors import SnapshotLockedError
from .groups import LOCK_KEY, filesystem, translating

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, as on object stores
    fcntl = None  # type: ignore[assignment]

__all__ = ["ObjectLock", "SnapshotLock", "writer_lock"]

logger = logging.getLogger(__name__)


class SnapshotLock:
    """The writer's lock on the local snapshot directory ``path``, taken at construction.

    Parameters
    ----------
    path : str
        A local snapshot directory that exists (URLs: ``ObjectLock``).

    Raises
    ------
    SnapshotLockedError
        Another ``Recorder`` (in this process or another) holds the lock.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        if "://" in path or fcntl is None:
            return
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            _flock(fd)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise SnapshotLockedError(
                    f"{path} is being recorded by another Recorder (in this or another process), and a snapshot "
                    "has one writer at a time: close that Recorder first, or record into another path"
                ) from e
            logger.warning("no writer lock on %s: this filesystem refuses flock (%s)", path, e)
            return
        self._fd = fd

    def follow(self) -> None:
        """Lock the directory now at ``path`` if it is no longer the one locked (zarr replaces the
        directory when it creates a group with ``overwrite``); ``SnapshotLockedError`` if another
        writer took the new one first."""
        if self._fd is None:
            return
        locked, now = os.fstat(self._fd), os.stat(self.path)
        if (locked.st_dev, locked.st_ino) != (now.st_dev, now.st_ino):
            new = SnapshotLock(self.path)
            self.release()
            self._fd, new._fd = new._fd, None

    @property
    def held(self) -> bool:
        """Whether the lock is held (``False`` for URLs, after ``release``, or where flock is unsupported)."""
        return self._fd is not None

    def refresh(self) -> None:
        """Nothing to do: the lock lasts as long as its process."""

    def release(self) -> None:
        """Release the lock; idempotent. Unlocked explicitly: processes forked while it was held (the
        loader's workers, which may outlive the Recorder) share the descriptor, and closing ours alone
        would leave the snapshot locked until they exit."""
        fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __del__(self) -> None:
        self.release()


#: Seconds a lock held by another process is waited for: the writer process of a training process killed
#: a moment ago holds the lock until it notices (``recording.writer``: within 0.1 s and one operation).
_GRACE_SECONDS = 2.0


def _flock(fd: int) -> None:
    """``flock(LOCK_EX)`` on ``fd``, tried for up to ``_GRACE_SECONDS`` while another process holds it."""
    deadline = time.monotonic() + _GRACE_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def writer_lock(path: str, storage_options: dict[str, Any] | None) -> SnapshotLock | ObjectLock:
    """The writer's lock on the snapshot at ``path``: ``ObjectLock`` for a URL, ``SnapshotLock`` otherwise."""
    return ObjectLock(path, storage_options) if "://" in path else SnapshotLock(path)


#: What s3fs raises for a conditional write whose condition does not hold (HTTP 412 but for a failed
#: ``If-None-Match``, which is ``FileExistsError``) and for a request the store does not implement.
_PRECONDITION, _NOT_IMPLEMENTED = errno.EINVAL, errno.ENOSYS


class ObjectLock:
    """The writer's lock on the snapshot at URL ``url``: the object ``<url>/.snapstore-lock`` (see the
    module docstring), taken at construction.

    Parameters
    ----------
    url : str
        The snapshot's URL (it need not exist yet).
    storage_options : dict, optional
        As for ``open_group``.

    Raises
    ------
    SnapshotLockedError
        Another writer holds the lock and its lease has not run out; the message names it (host, pid,
        since when) and when its lock will be taken over.
    StoreAccessError
        The store cannot be reached or refuses access.
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None) -> None:
        self.path = url
        self._storage_options = storage_options
        self._pid = os.getpid()
        self._fs, root = filesystem(url, storage_options)
        self._key = f"{root}/{LOCK_KEY}"
        self._etag: str | None = None
        self._refreshed = 0.0  # time.monotonic() of the last write of the lock
        self._lease = config.WRITER_LEASE_SECONDS
        self._since = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._token = uuid.uuid4().hex  # makes every body, hence every ETag, this writer's own
        if not hasattr(self._fs, "call_s3"):  # If-Match on writes is S3's: no conditional writes elsewhere
            logger.warning("no writer lock on %s: snapstore takes conditional writes on s3:// only; keep to one "
                           "writer per snapshot (docs/OBJECT-STORAGE.md)", url)
            return
        with translating(url):
            self._take()

    def _body(self) -> bytes:
        return json.dumps({"host": socket.gethostname(), "pid": self._pid, "since": self._since,
                           "refreshed": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                           "lease_s": self._lease, "token": self._token}).encode()

    def _take(self) -> None:
        body = self._body()
        try:
            etag = self._fs.pipe_file(self._key, body, mode="create")["ETag"]
        except FileExistsError:
            etag = self._take_over()
        except (NotImplementedError, OSError) as e:
            if isinstance(e, OSError) and e.errno not in (_PRECONDITION, _NOT_IMPLEMENTED):
                raise
            logger.warning("no writer lock on %s: the store refuses conditional writes (%s); keep to one writer per "
                           "snapshot (docs/OBJECT-STORAGE.md)", self.path, e)
            return
        try:  # the same create again must fail: a store that ignores If-None-Match would let two writers in
            self._fs.pipe_file(self._key, body, mode="create")
        except FileExistsError:
            self._etag, self._refreshed = etag, time.monotonic()
            return
        self._fs.rm_file(self._key)
        logger.warning("no writer lock on %s: the store ignores conditional writes (If-None-Match); keep to one "
                       "writer per snapshot (docs/OBJECT-STORAGE.md)", self.path)

    def _head(self) -> tuple[str, float, dict[str, Any]]:
        """``(etag, age in seconds by the store's clock, holder)`` of the lock object as it is now."""
        bucket, key, _ = self._fs.split_path(self._key)
        head = self._fs.call_s3("head_object", Bucket=bucket, Key=key)
        now = parsedate_to_datetime(head["ResponseMetadata"]["HTTPHeaders"]["date"])
        age = (now - head["LastModified"]).total_seconds()
        try:
            holder = json.loads(self._fs.cat_file(self._key))
        except (ValueError, FileNotFoundError):
            holder = None
        return head["ETag"], age, holder if isinstance(holder, dict) else {}

    def _take_over(self) -> str:
        """The ETag of the lock taken over from a writer whose lease ran out; ``SnapshotLockedError`` otherwise."""
        etag, age, holder = self._head()
        lease = holder.get("lease_s")
        lease = float(lease) if isinstance(lease, (int, float)) and lease > 0 else config.WRITER_LEASE_SECONDS
        if age <= lease:
            raise SnapshotLockedError(self._held_by(holder, age, lease))
        try:
            out = self._fs.pipe_file(self._key, self._body(), IfMatch=etag)
        except (FileNotFoundError, OSError) as e:  # another writer took it over (or removed it) first
            if isinstance(e, OSError) and not isinstance(e, FileNotFoundError) and e.errno != _PRECONDITION:
                raise
            raise SnapshotLockedError(f"{self.path}: another Recorder took over the stale writer lock first; a "
                                      "snapshot has one writer at a time") from e
        logger.warning("%s: took over the writer lock of %s pid %s, not refreshed for %.0f s (lease %.0f s)",
                       self.path, holder.get("host"), holder.get("pid"), age, lease)
        return str(out["ETag"])

    def _held_by(self, holder: dict[str, Any], age: float, lease: float) -> str:
        return (f"{self.path} is being recorded by another Recorder (host {holder.get('host')!r}, pid "
                f"{holder.get('pid')}, since {holder.get('since')}; its lock was last refreshed {age:.0f} s ago), and "
                "a snapshot has one writer at a time: close that Recorder first, or record into another path. If "
                f"that writer is dead, its lock {self.path}/{LOCK_KEY} is taken over by the next Recorder once it "
                f"is {lease:.0f} s old (in {max(lease - age, 0) + 1:.0f} s), or delete that object yourself once "
                "you are sure no writer runs")

    @property
    def held(self) -> bool:
        """Whether the lock is held (``False`` where the store has no conditional writes, or after ``release``)."""
        return self._etag is not None

    def after_fork(self) -> None:
        """In the recorder's writer process, forked from the lock's holder: a client of its own (an object
        store's client does not survive a fork), through which it refreshes the lock from now on."""
        self._fs, _ = filesystem(self.path, self._storage_options)

    def lease(self) -> tuple[str | None, float]:
        """The lock's ETag and when it was last written (``time.monotonic()``): what the writer process hands
        back to the training process when it ends, for ``adopt``."""
        return self._etag, self._refreshed

    def adopt(self, lease: tuple[str | None, float]) -> None:
        """Take over the lease the writer process refreshed (``lease``), so that ``release`` finds it ours."""
        self._etag, self._refreshed = lease

    def follow(self) -> None:
        """Write the lock again if it is gone (zarr deletes everything under the snapshot when it creates the
        root group with ``overwrite``); ``SnapshotLockedError`` if another writer took it first."""
        if self._etag is None:
            return
        with translating(self.path):
            try:
                self._etag = self._fs.pipe_file(self._key, self._body(), mode="create")["ETag"]
            except FileExistsError:
                etag, age, holder = self._head()
                if etag != self._etag:
                    self._etag = None
                    raise SnapshotLockedError(self._held_by(holder, age, self._lease)) from None
        self._refreshed = time.monotonic()

    def refresh(self) -> None:
        """Renew the lease once a quarter of it has passed (called at the writer's flushes).

        Raises ``SnapshotLockedError`` when the lock is no longer this writer's: it was taken over after
        this process stalled for longer than the lease, or deleted. The writer must stop writing.
        """
        if self._etag is None or time.monotonic() - self._refreshed < self._lease / 4:
            return
        with translating(self.path):
            try:
                self._etag = self._fs.pipe_file(self._key, self._body(), IfMatch=self._etag)["ETag"]
            except (FileNotFoundError, OSError) as e:
                if isinstance(e, OSError) and not isinstance(e, FileNotFoundError) and e.errno != _PRECONDITION:
                    raise
                self._etag = None
                raise SnapshotLockedError(
                    f"{self.path}: this Recorder's writer lock was taken over by another writer or deleted (its lease "
                    f"of {self._lease:.0f} s ran out before it was refreshed); recording stopped so that the two do "
                    "not interleave") from e
        self._refreshed = time.monotonic()

    def release(self) -> None:
        """Delete the lock if it is still this writer's (its ETag unchanged); idempotent, never raises (a
        lock left behind is taken over once its lease has run out)."""
        etag, self._etag = self._etag, None
        if etag is None:
            return
        try:
            if self._head()[0] == etag:
                self._fs.rm_file(self._key)
        except Exception as e:  # noqa: BLE001 - close() must not fail on it; the lease ends the lock
            logger.warning("%s: the writer lock could not be removed (%s); the next Recorder takes it over once "
                           "its lease of %.0f s has run out", self.path, e, self._lease)
