"""The write session of a recording: its writer process, its error policy and what it keeps open.

A ``Recorder`` holds one ``WriteSession``; every ``RecordingLoader`` it
makes hands its work to the session: ``send`` the operation that writes the
rows it hands over (copied into shared memory, blocking while the writer is
behind: back-pressure). The operations run
in the writer process (``writer.WriterProcess``) on its ``sinks.Sinks``,
which commit every open epoch and the raw samples every
``config.DEFAULT_FLUSH_INTERVAL`` seconds and at close. When the writer
fails, ``on_error`` decides: ``"raise"`` raises ``RecordingError`` in the
training loop, ``"warn"`` warns once and lets training go on unrecorded.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Literal

from .. import config, storage
from ..errors import RecordingError, SnapstoreWarning, UsageError
from ..storage.lock import ObjectLock, SnapshotLock
from .sinks import Sinks
from .writer import WriterProcess

__all__ = ["WriteSession"]

OnError = Literal["raise", "warn"]


class WriteSession:
    """The training-process side of one ``Recorder``'s writing: its writer process and error policy.

    Parameters
    ----------
    root : zarr.Group
        The snapshot's root group, open for writing.
    path : str
        The snapshot's path, for messages.
    storage_options : dict, optional
        For a URL: what the writer process reopens the store with.
    compressor : str
        One of ``storage.COMPRESSORS`` (checked by ``Recorder``).
    on_error : {"raise", "warn"}
        What a writer failure does to the training loop (see ``Recorder``).
    lock : SnapshotLock or ObjectLock, optional
        The writer's lock, refreshed by the writer process at each flush (an object store's lease); a lock
        lost to another writer fails the writer like any write error.
    """

    def __init__(self, root: storage.Group, path: str, storage_options: dict[str, Any] | None, compressor: str,
                 on_error: OnError, *, lock: SnapshotLock | ObjectLock | None = None) -> None:
        self.root = root
        self.lock = lock
        self.path = path
        self.on_error = on_error
        self.closed = False
        self._keys = 0  # the last key given to an epoch
        self._stopped = False  # recording failed and on_error="warn": the loop goes on unrecorded
        self._reported = False  # a writer failure was raised in the loop
        self._writer = WriterProcess(functools.partial(Sinks, root, path, storage_options, compressor, lock),
                                     interval=config.DEFAULT_FLUSH_INTERVAL, ring_bytes=config.DEFAULT_QUEUE_BYTES)

    @property
    def writer_pid(self) -> int:
        """The writer process's id."""
        return self._writer.pid

    def new_key(self) -> int:
        """A key no other epoch of this session has, naming it in the operations sent."""
        self._keys += 1
        return self._keys

    @property
    def failed(self) -> bool:
        """Whether the writer process has failed."""
        return self._writer.failed

    def check_open(self) -> None:
        """``UsageError`` once the session is closed."""
        if self.closed:
            raise UsageError(f"the Recorder for {self.path} is closed; open a new one with mode='a' to record more")

    def recording(self) -> bool:
        """Whether batches should still be recorded; raises or warns once after a writer failure."""
        if self._stopped:
            return False
        if self._writer.failed:
            try:
                self._writer.check()
            except RecordingError as e:
                if self.on_error == "raise":
                    self._reported = True
                    raise
                self._stopped = True
                warnings.warn(
                    f"recording into {self.path} stopped: {e.__cause__!r}; training goes on unrecorded and "
                    "everything committed before the failure is readable",
                    SnapstoreWarning,
                    stacklevel=4,
                )
            return False
        return True

    def send(self, name: str, *args: Any) -> None:
        """Queue operation ``name(*args)`` of ``sinks.Sinks`` for the writer process (nothing once recording
        has stopped). Its arrays are copied before it returns (``WriterProcess.send``): the loop may change
        the batch in place afterwards. Blocks while the rows waiting for the writer fill
        ``config.DEFAULT_QUEUE_BYTES``."""
        if self.recording():
            try:
                self._writer.send(name, *args)
            except RecordingError:
                if self.recording():  # the writer failed, maybe while we waited: raise or warn now
                    raise

    def drain(self) -> None:
        """Return once every operation sent so far has run (the training thread waits for a durable commit);
        raises or warns as ``send`` does after a writer failure."""
        if self.recording():
            try:
                self._writer.drain()
            except RecordingError:
                if self.recording():  # the writer failed while we waited: raise or warn now
                    raise

    def close(self) -> None:
        """Run the queued operations, commit, stop the writer; raise its failure unless already raised or
        warned."""
        if self.closed:
            return
        self.closed = True
        try:
            lease = self._writer.close()
            if lease is not None and isinstance(self.lock, ObjectLock):  # refreshed by the writer process
                self.lock.adopt(lease)
        except RecordingError as e:
            if self.on_error == "raise" and not self._reported:  # not yet raised in the loop
                raise
            if self.on_error == "warn" and not self._stopped:  # the failure came after the last batch
                self._stopped = True
                warnings.warn(f"recording into {self.path} failed at close: {e.__cause__!r}; everything "
                              "committed before the failure is readable", SnapstoreWarning, stacklevel=3)
