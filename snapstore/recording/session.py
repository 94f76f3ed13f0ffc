"""The write session of a recording: the background writer, its error policy and what it keeps open.

A ``Recorder`` holds one ``WriteSession``; every ``RecordingLoader`` it
makes hands its work to the session: ``reserve`` the bytes it is about to
copy (back-pressure), ``submit`` the job that writes them. The jobs run in
the background writer thread (``background.BackgroundWriter``), which
commits every open epoch and the raw samples (``sinks``) every
``config.DEFAULT_FLUSH_INTERVAL`` seconds and at close. When the writer fails, ``on_error``
decides: ``"raise"`` raises ``RecordingError`` in the training loop,
``"warn"`` warns once and lets training go on unrecorded.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, Literal

from .. import config, storage
from ..errors import RecordingError, SnapstoreWarning, UsageError
from ..storage.lock import ObjectLock, SnapshotLock
from .background import BackgroundWriter
from .sinks import EpochSink, RawSink

__all__ = ["WriteSession"]

OnError = Literal["raise", "warn"]


class WriteSession:
    """The writer side of one ``Recorder``: chunk writer, recycled buffers, background writer, open sinks.

    Parameters
    ----------
    root : zarr.Group
        The snapshot's root group, open for writing.
    path : str
        The snapshot's path, for messages.
    compressor : str
        One of ``storage.COMPRESSORS``.
    on_error : {"raise", "warn"}
        What a writer failure does to the training loop (see ``Recorder``).
    lock : SnapshotLock or ObjectLock, optional
        The writer's lock, refreshed at each flush (an object store's lease); a lock lost to another
        writer fails the writer like any write error.
    """

    def __init__(self, root: storage.Group, path: str, compressor: str, on_error: OnError, *,
                 lock: SnapshotLock | ObjectLock | None = None) -> None:
        self.root = root
        self.lock = lock
        self.path = path
        self.on_error = on_error
        self.chunks = storage.ChunkWriter(compressor)  # raises UsageError for an unknown compressor
        self.buffers = storage.Buffers(keep=2, max_bytes=config.DEFAULT_QUEUE_BYTES)  # hand-off copies
        self.epochs: list[EpochSink] = []  # open epochs, writer thread only
        self.raws: list[RawSink] = []
        self.closed = False
        self._stopped = False  # recording failed and on_error="warn": the loop goes on unrecorded
        self._reported = False  # a writer failure was raised in the loop
        self._writer = BackgroundWriter(self._flush, maxsize=config.DEFAULT_QUEUE_BATCHES,
                                        interval=config.DEFAULT_FLUSH_INTERVAL, max_bytes=config.DEFAULT_QUEUE_BYTES,
                                        final=functools.partial(self._flush, durable=True))

    @property
    def failed(self) -> bool:
        """Whether the background writer has failed."""
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
            if self.on_error == "raise":
                self._reported = True
                self._writer.check()
            self._stopped = True
            warnings.warn(
                f"recording into {self.path} stopped: {self._writer.error!r}; training goes on unrecorded and "
                "everything committed before the failure is readable",
                SnapstoreWarning,
                stacklevel=4,
            )
            return False
        return True

    def submit(self, fn: Callable[..., Any], *args: Any, release: int = 0) -> None:
        """Queue ``fn(*args)`` for the writer thread; ``release``: bytes ``reserve`` counted for it."""
        if self.recording():
            try:
                self._writer.submit(functools.partial(self._run, fn, *args), release=release)
            except RecordingError:
                if self.recording():  # the writer failed while we waited: raise or warn now
                    raise

    def reserve(self, nbytes: int) -> bool:
        """Block while the rows waiting for the writer exceed the byte budget (back-pressure, before
        the copy); False once recording has stopped (``on_error="warn"``)."""
        if not self.recording():
            return False
        try:
            self._writer.reserve(nbytes)
        except RecordingError:
            if self.recording():  # the writer failed while we waited: raise or warn now
                raise
            return False
        return True

    def _run(self, fn: Callable[..., Any], *args: Any) -> None:  # writer thread
        # Every job may create files (a group, a manifest, a chunk): none once the snapshot is gone, or
        # zarr would recreate its folders around them (one stat on a local disk; object stores rely on
        # the flush's check).
        if storage.root_gone(self.root):
            storage.check_exists(self.root, self.path)
        fn(*args)

    def drain(self) -> None:
        """Return once every job submitted so far has run (the training thread waits for a durable commit);
        raises or warns as ``submit`` does after a writer failure."""
        if self.recording():
            try:
                self._writer.drain()
            except RecordingError:
                if self.recording():  # the writer failed while we waited: raise or warn now
                    raise

    def _flush(self, *, durable: bool = False) -> None:  # writer thread
        storage.check_exists(self.root, self.path)
        if self.lock is not None:  # still this writer's, before its commits
            self.lock.refresh()
        for raw in self.raws:  # the raw samples first: an epoch's rows refer to them
            raw.commit(durable=durable)
        for epoch in self.epochs:
            epoch.commit(durable=durable)

    def close(self) -> None:
        """Run the queued jobs, commit, stop the writer; raise its failure unless already raised or warned."""
        if self.closed:
            return
        self.closed = True
        try:
            try:
                self._writer.close()
            finally:
                self.chunks.close()
        except RecordingError as e:
            if self.on_error == "raise" and not self._reported:  # not yet raised in the loop
                raise
            if self.on_error == "warn" and not self._stopped:  # the failure came after the last batch
                self._stopped = True
                warnings.warn(f"recording into {self.path} failed at close: {e.__cause__!r}; everything "
                              "committed before the failure is readable", SnapstoreWarning, stacklevel=3)
