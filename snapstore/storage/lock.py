"""One writer per snapshot: an advisory lock a ``Recorder`` holds for its life on a local snapshot.

The lock is ``flock(LOCK_EX)`` on the snapshot's directory itself, not on a
file in it: the snapshot holds nothing but Zarr nodes (plain zarr lists no
extra entry, ``snapstore audit`` sees nothing new), and the lock goes with
the process that holds it, so a killed writer never leaves a stale lock.
Object stores have no such lock: a single writer per snapshot is the rule
there (docs/OBJECT-STORAGE.md).
"""

from __future__ import annotations

import errno
import logging
import os

from ..errors import SnapshotLockedError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, as on object stores
    fcntl = None  # type: ignore[assignment]

__all__ = ["SnapshotLock"]

logger = logging.getLogger(__name__)


class SnapshotLock:
    """The writer's lock on the local snapshot directory ``path``, taken at construction.

    Parameters
    ----------
    path : str
        A local snapshot directory that exists. URLs are not locked (see the module docstring).

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
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
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
