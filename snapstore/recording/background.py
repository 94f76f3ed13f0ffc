"""The background writer: one thread, a bounded queue, errors raised where the user is.

The training thread submits jobs (callables); the writer thread runs them in
order and, whenever ``interval`` seconds pass, calls ``flush`` so rows handed
over are committed within seconds even when no chunk filled. A job that fails
stops the thread; the failure is re-raised, chained, at the next ``submit``
and at ``close``.

Back-pressure is counted in bytes as well as jobs: the training thread
``reserve``s the bytes it is about to copy *before* copying them, and the
writer releases them when the job that holds them returns. So the rows
waiting for the writer never exceed ``max_bytes`` (or one job's rows when a
single batch is larger), whatever the batch or dataset size.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

from ..errors import RecordingError

_STOP = object()


class BackgroundWriter:
    """Runs submitted jobs in one daemon thread with back-pressure.

    Parameters
    ----------
    flush : callable
        Called in the writer thread every ``interval`` seconds (and at close, unless ``final`` is given).
    maxsize : int
        Jobs that may wait; ``submit`` blocks beyond that.
    interval : float
        Seconds between flushes.
    max_bytes : int, optional
        Byte budget of the rows waiting for the writer (see ``reserve``).
    final : callable, optional
        Called in the writer thread at close instead of ``flush`` (the durable commit).
    """

    def __init__(self, flush: Callable[[], None], *, maxsize: int, interval: float,
                 max_bytes: int | None = None, final: Callable[[], None] | None = None) -> None:
        self._flush = flush
        self._final = final or flush
        self._interval = interval
        self._queue: queue.Queue = queue.Queue(maxsize)
        self._max_bytes = max_bytes
        self._pending = 0  # bytes reserved and not yet released by a finished job
        self._budget = threading.Condition()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="snapstore-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = time.monotonic()
        try:
            while True:
                try:
                    job = self._queue.get(timeout=max(0.0, last + self._interval - time.monotonic()))
                except queue.Empty:
                    job = None
                if job is _STOP:
                    self._final()
                    return
                if job is not None:
                    job, release = job
                    job()
                    if release:
                        with self._budget:
                            self._pending -= release
                            self._budget.notify_all()
                if time.monotonic() - last >= self._interval:
                    self._flush()
                    last = time.monotonic()
        except BaseException as e:  # handed back to the training thread by check()
            self._error = e

    @property
    def failed(self) -> bool:
        """Whether a job or a flush has failed."""
        return self._error is not None

    @property
    def error(self) -> BaseException | None:
        """The failure of a job or a flush, if any."""
        return self._error

    def check(self) -> None:
        """Raise ``RecordingError`` if the writer thread has failed."""
        if self._error is not None:
            raise RecordingError(
                f"recording failed in the background writer: {self._error!r}; everything committed before "
                "the failure is readable with snapstore.open"
            ) from self._error

    def reserve(self, nbytes: int) -> None:
        """Block until ``nbytes`` more fit the byte budget (always when nothing is pending), then count them.

        Pass the same number as ``release`` to the ``submit`` of the job that holds them.
        """
        if not self._max_bytes or nbytes <= 0:
            return
        with self._budget:
            while self._pending and self._pending + nbytes > self._max_bytes:
                self.check()
                if not self._thread.is_alive():
                    raise RecordingError("the background writer stopped unexpectedly")
                self._budget.wait(0.1)
            self._pending += nbytes

    def drain(self) -> None:
        """Return once every job submitted so far has run; raise ``RecordingError`` if the writer failed."""
        done = threading.Event()
        self.submit(done.set)
        while not done.wait(0.1):
            self.check()
            if not self._thread.is_alive():
                raise RecordingError("the background writer stopped unexpectedly")

    def submit(self, job: Callable[[], None], *, release: int = 0) -> None:
        """Queue ``job``; blocks while the queue is full. Raises ``RecordingError`` after a failure.

        ``release``: bytes given back to the budget once ``job`` has returned (see ``reserve``).
        """
        self._put((job, release))

    def _put(self, item: object) -> None:
        while True:
            self.check()
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                if not self._thread.is_alive():
                    self.check()
                    raise RecordingError("the background writer stopped unexpectedly")

    def close(self) -> None:
        """Run the remaining jobs, flush, stop the thread; re-raise its failure if any."""
        if self._thread.is_alive():
            self._put(_STOP)
            self._thread.join()
        self.check()
