"""The writer process: a child forked for each recording, fed through a shared-memory ring.

The training process only captures and hands off. Each ``send`` queues one
operation, ``(name, args)``, through a pipe: it copies the operation's numeric
arrays into a ring of shared memory (an anonymous ``MAP_SHARED`` mapping made
before the fork, so the child sees it at once) and sends references to them,
and pickles everything else. The child runs the operations in order on its
``sinks.Sinks`` (staging, hashing, encoding and storing rows, and committing
every ``interval`` seconds), and after each one moves the ring's tail past the
rows that operation was handed, in the ring's header, which the training
process reads without a system call, and writes a byte to a pipe that wakes
the training process if it is waiting for room.

Why a process: in a thread of the training process, the writer's Python
(staging rows, hashing them, encoding chunks through zarr's codecs) took the
GIL from the training thread after each call that released it. The same
writer work fed from a thread ran the loader-bound loop at 0.43-0.69 of bare,
fed from a process at 0.75-0.90 (``benchmarks/RESULTS.md``, issue 17).

A fork, not a fresh interpreter: the child starts in milliseconds with the
recorder's state (its open store, its flock lock, which the child then holds
too, so a snapshot stays locked until the last writer of it is gone), and
imports nothing. The child runs no torch and no code of the user's (it
ignores the signals the training process handles: ``_SIGNALS``). It leaves
when the training process closes the recording, when an operation fails (the
failure is sent back and raised by the next ``check``), and within
``_WATCH_SECONDS`` and one operation of the training process's death,
without committing more.

Back-pressure: ``send`` blocks while the ring has no room for an array, so
rows waiting for the writer never exceed the ring (``config.DEFAULT_QUEUE_BYTES``).
An array that cannot fit even once the child has run every operation sent
(larger than what the operation's arrays before it leave of the ring) goes
through the pipe by value: an operation never waits for room its own rows hold.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import select
import signal
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from typing import Any, NamedTuple, NoReturn

import numpy as np

from ..errors import RecordingError

#: The ring's header: the tail (bytes the child is done with, counted from the start) and the failure flag.
_HEADER = 64
#: Every block starts on a cache line.
_ALIGN = 64
#: Signals the child ignores: Ctrl-C and a job scheduler's notices (SLURM sends SIGTERM or SIGUSR1 to every
#: process of a job before preempting it) reach the whole process group, and the training process's
#: handlers, inherited through the fork, are not the child's to run.
_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2")
#: glibc's ``mallopt`` parameter ``M_MMAP_THRESHOLD``, and its largest value on 64-bit platforms.
_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX = -3, 32 * 1024 * 1024
#: How often the child checks that the training process is alive, and the training process that the
#: child is, while waiting for it (seconds).
_WATCH_SECONDS = 0.1


class Shared(NamedTuple):
    """A block of rows in the ring: ``offset`` bytes past the header, ``shape``, ``dtype`` (its ``str``)."""

    offset: int
    shape: tuple[int, ...]
    dtype: str


class WriterProcess:
    """The training process's handle on its writer process.

    Parameters
    ----------
    target : callable
        Called in the child once, after the fork: returns the object that runs the operations
        (``sinks.Sinks``): its ``run(name, args)``, ``flush(durable=False)`` (every ``interval`` seconds
        and, durable, at ``close``) and ``close()``.
    interval : float
        Seconds between the child's flushes.
    ring_bytes : int
        Bytes of shared memory rows wait in.
    """

    def __init__(self, target: Callable[[], Any], *, interval: float, ring_bytes: int) -> None:
        self._ring = mmap.mmap(-1, _HEADER + ring_bytes)  # MAP_SHARED | MAP_ANONYMOUS: the child sees it
        self._header = np.frombuffer(self._ring, dtype=np.int64, count=2)  # tail, failed
        self._size = ring_bytes
        self._head = 0  # bytes handed to the ring so far, counted from the start (the child's tail follows)
        self._sent = 0  # the head when the last operation was sent: how far the child's tail can move
        self._error: BaseException | None = None
        self._lock = threading.Lock()  # one operation at a time: the child frees the ring up to where it was sent
        self._conn, child = Pipe()
        self._room, room = os.pipe()  # the child writes a byte to it each time it moves the tail
        os.set_blocking(room, False)  # bytes nobody waited for fill it up, then are dropped
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: never returns into the caller's frames
            code = 1
            try:
                self._conn.close()
                os.close(self._room)
                code = _serve(child, target, self._ring, self._header, room, parent, interval)
            finally:
                os._exit(code)
        child.close()
        os.close(room)  # once the child is gone, the pipe reads as closed
        self._waiting = select.poll()  # not select(): it refuses descriptors past 1023, which a large job has
        self._waiting.register(self._room, select.POLLIN)
        self.pid = pid
        self._exit: int | None = None

    # -- handing over ----------------------------------------------------------
    def send(self, name: str, *args: Any) -> None:
        """Queue operation ``name(*args)`` for the child; ``RecordingError`` if it has failed. Thread-safe.

        The numeric arrays in ``args`` (and in its tuples and dict values) are copied into the ring, blocking
        while it is full; everything else is pickled now. Either way the caller may change them once this
        returns."""
        with self._lock:
            self.check()
            self._post(name, _shared(args, self._share))

    def _post(self, name: str, args: Any) -> None:
        """Send operation ``name`` with ``args`` (arrays already in the ring) and the head: the child moves the
        ring's tail there once it has run the operation."""
        self._sent = self._head
        try:
            self._conn.send((name, args, self._head))
        except OSError as e:  # the child is gone: its failure, if it sent one, says why
            self._stopped(e)

    def _share(self, rows: np.ndarray) -> Shared | np.ndarray:
        """Copy ``rows`` into the ring and return the reference the child reads them through; blocks while
        the ring is full. Rows that would not fit even once the child has read every operation sent so far
        (larger than the ring, or than what the rows shared for this operation leave of it) are returned as
        they are, to be pickled.

        Where the child has read every row sent so far and the rows fit before the current offset, the ring
        starts over (``"restart"``): in a loop its writer keeps up with (a step-bound one) the same few pages,
        mapped and cached, then take every batch, instead of each page of the ring in turn (CIFAR-like, a 10
        or 30 ms step: peak memory 30-50 MB lower; issue 17)."""
        n = -(-rows.nbytes // _ALIGN) * _ALIGN
        offset = self._head % self._size
        if 0 < n <= offset and int(self._header[0]) == self._head:
            self._head += self._size - offset
            self._post("restart", ())  # the child's tail follows at once: the rest of the ring stays free
            offset = 0
        skip = self._size - offset if offset + n > self._size else 0  # no room before the ring's end: its start
        if n == 0 or self._head + skip + n - self._sent > self._size:
            return rows
        self._head += skip
        offset = (offset + skip) % self._size
        while self._head + n - int(self._header[0]) > self._size:
            self._wait()
        np.copyto(np.ndarray(rows.shape, rows.dtype, self._ring, _HEADER + offset), rows)
        self._head += n
        return Shared(offset, tuple(rows.shape), rows.dtype.str)

    def drain(self) -> None:
        """Return once the child has run every operation sent so far and freed their rows in the ring;
        ``RecordingError`` if it failed."""
        self.send("drain")
        self._reply("drained")

    def close(self) -> Any:
        """Run the remaining operations, flush durably, let the child exit and return what its ``close()``
        returned; re-raise its failure if any."""
        result = None
        if not self._conn.closed:
            try:
                if not self.failed:
                    self.send("stop")
                    result = self._reply("stopped")
            except RecordingError:
                pass
            finally:
                if self._exit is None:
                    self._exit = os.waitpid(self.pid, 0)[1]
                self._conn.close()
                with self._lock:  # not while a send waits on it (sends wait under the lock)
                    os.close(self._room)
        self.check()
        return result

    # -- failures --------------------------------------------------------------
    @property
    def failed(self) -> bool:
        """Whether the child has failed (or died)."""
        return self._error is not None or bool(self._header[1])

    def check(self) -> None:
        """Raise ``RecordingError``, chained to the child's failure, if it has failed."""
        if self._error is None and self._header[1]:
            self._error = self._failure()
        if self._error is not None:
            self._raise()

    def _raise(self) -> NoReturn:
        raise RecordingError(
            f"recording failed in the writer process: {self._error!r}; everything committed before "
            "the failure is readable with snapstore.open"
        ) from self._error

    def _failure(self) -> BaseException:
        """The failure the child sent before it exited."""
        try:
            while True:
                message = self._conn.recv()
                if message[0] == "failed":
                    return message[1]
        except (EOFError, OSError):
            return RecordingError("the writer process stopped unexpectedly")
        except Exception as e:  # noqa: BLE001 - sent, but it cannot be rebuilt here
            return RecordingError(f"the writer process failed; its error cannot be read here: {e!r}")

    def _stopped(self, cause: BaseException | None = None) -> NoReturn:
        """Raise the child's failure: the one it sent, or that it stopped (``cause``: what showed it)."""
        if self._error is None:
            self._error = self._failure() if self._header[1] else RecordingError(
                f"the writer process stopped unexpectedly ({cause!r})" if cause else
                "the writer process stopped unexpectedly")
        self._raise()

    def _alive(self) -> bool:
        """Whether the child is running (reaping it once it has exited)."""
        if self._exit is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid == 0:
                return True
            self._exit = status
        return False

    def _wait(self) -> None:
        """Wait until the child has moved the ring's tail since the last wait (or ``_WATCH_SECONDS``); raise if it
        failed or died. Asleep until then: polling the tail every 0.2 ms woke the training thread 2,600-7,100
        times an epoch of the ImageNet-like loop (which waits 1.3-3.1 s for room) onto CPUs the writer's threads
        were using; woken by the writer instead, the loader-bound loops spent 1-8 % fewer CPU-seconds per GB
        recorded, at the same speed or higher (CIFAR- and ImageNet-like, alternating rounds in both orders:
        issue 17)."""
        self.check()
        if not self._alive():
            self._stopped()
        if self._waiting.poll(_WATCH_SECONDS * 1000):
            os.read(self._room, 65536)  # the bytes of every move so far: the caller reads the tail afresh

    def _reply(self, expected: str) -> Any:
        """The payload of the child's next ``expected`` message."""
        while True:
            self.check()
            if self._conn.poll(_WATCH_SECONDS):
                try:
                    message = self._conn.recv()
                except (EOFError, OSError) as e:
                    self._stopped(e)
                if message[0] == expected:
                    return message[1] if len(message) > 1 else None
                if message[0] == "failed":
                    self._error = message[1]
                    self.check()
            elif not self._alive():
                self._stopped()


def _serve(conn: Connection, target: Callable[[], Any], ring: mmap.mmap, header: np.ndarray, room: int, parent: int,
           interval: float) -> int:
    """The child's loop: run operations in order, flush every ``interval`` seconds; 0 once stopped, 1 after a
    failure (sent to the training process first) or the training process's death. After each operation it
    moves the ring's tail and writes a byte to ``room`` (non-blocking) for a training thread waiting on it."""
    for name in _SIGNALS:  # the training process's to handle (it closes us); not its handlers' to run here
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    _no_wakeup_preemption()
    _reuse_freed_blocks()
    try:
        state = target()
        last = time.monotonic()
        while True:
            ready = conn.poll(max(0.0, min(_WATCH_SECONDS, last + interval - time.monotonic())))
            if os.getppid() != parent:  # the training process died: commit nothing more
                return 1
            if ready:
                name, args, mark = conn.recv()
                if name == "stop":
                    state.flush(durable=True)
                    conn.send(("stopped", state.close()))
                    return 0
                if name not in ("drain", "restart"):  # those only move the tail
                    state.run(name, _resolve(args, ring))
                header[0] = mark  # the rows this operation was handed are free again
                with contextlib.suppress(BlockingIOError):  # full: a byte there already wakes the waiter
                    os.write(room, b"\0")
                if name == "drain":  # once the tail has moved: a drained ring is read to its head
                    conn.send(("drained",))
            if time.monotonic() - last >= interval:
                state.flush()
                last = time.monotonic()
    except BaseException as e:  # handed to the training process, raised by its next check()
        e.add_note("in snapstore's writer process:\n" + "".join(traceback.format_exception(e)).rstrip())
        try:
            conn.send(("failed", e))
        except Exception:  # noqa: BLE001 - an exception that cannot be sent is sent as its repr
            conn.send(("failed", RecordingError(repr(e))))
        header[1] = 1
        return 1


def _no_wakeup_preemption() -> None:
    """Run this process, and the threads it starts, at ``SCHED_BATCH`` (Linux): the same share of the CPUs as
    before, but an operation's arrival no longer wakes the writer onto the CPU of the training thread that
    sent it, ahead of it. At ``SCHED_OTHER`` each send took ~1.1 ms of the training thread's time a batch
    (a 30 ms step, num_workers=0), ~0.2 ms at ``SCHED_BATCH`` (issue 17). Unlike ``SCHED_IDLE`` or a
    nice value, it never starves the writer on a busy machine. Where the policy is not available or
    refused, the writer runs as it is."""
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except (AttributeError, OSError):
        pass


def _reuse_freed_blocks() -> None:
    """Serve this process's chunk-sized blocks (rows staged, chunks encoded: a few MiB each, made and freed on
    several threads) from glibc's heap, where a freed block is reused. By default glibc maps a block over its
    mmap threshold afresh and unmaps it once freed (the threshold adapts: 128 KiB at first, raised to the size
    of each larger mapped block freed), and the writer's blocks kept crossing it. A CIFAR-like epoch 0 took 310
    ``mmap`` and 274 ``munmap`` calls and 100-120 thousand page faults in the writer; with the threshold fixed
    at glibc's largest, 44, 9 and 13 thousand, and 0.22 CPU-seconds less (medians of five alternating
    rounds: 2.22 -> 2.00; issue 17). Blocks over 32 MiB are still mapped; where the C library has no
    ``mallopt`` (not glibc), nothing changes."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)


def _shared(obj: Any, share: Callable[[np.ndarray], Any]) -> Any:
    """``obj`` with each numeric array in it (in tuples and dict values) replaced by ``share(array)``."""
    if isinstance(obj, np.ndarray) and obj.dtype.kind in "biufc":
        return share(obj)
    if type(obj) is tuple:
        return tuple(_shared(o, share) for o in obj)
    if type(obj) is dict:
        return {k: _shared(v, share) for k, v in obj.items()}
    return obj


def _resolve(obj: Any, ring: mmap.mmap) -> Any:
    """``obj`` with each ``Shared`` in it (in tuples and dict values) replaced by its rows in ``ring``."""
    if isinstance(obj, Shared):
        return np.ndarray(obj.shape, np.dtype(obj.dtype), ring, _HEADER + obj.offset)
    if type(obj) is tuple:
        return tuple(_resolve(o, ring) for o in obj)
    if type(obj) is dict:
        return {k: _resolve(v, ring) for k, v in obj.items()}
    return obj
