"""Progress on stderr for the long commands (``export``, ``audit``, ``diff``), in a terminal and in a log.

In a terminal, tqdm draws its bar in place as usual. When stderr is not a
terminal (a CI log, ``2> file``, a pipe), :func:`reporting` hands tqdm a
:class:`LogLines` stream instead, which turns the bar's in-place redraws into
plain lines: the first, then at most one every ``LOG_INTERVAL`` seconds, and
the last when the bar closes. The library's own bars (``audit``'s) go through
it too, since tqdm writes to ``sys.stderr``. ``--quiet`` turns progress off.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

__all__ = ["LOG_INTERVAL", "LogLines", "add_quiet", "bar", "reporting"]

#: Seconds between two progress lines when stderr is not a terminal.
LOG_INTERVAL = 10.0


def add_quiet(parser: argparse.ArgumentParser, *, command: bool = True) -> None:
    """Add ``-q/--quiet`` to ``parser``; ``command=True``: on a subcommand, where it must not reset the global flag."""
    default = argparse.SUPPRESS if command else False
    parser.add_argument("-q", "--quiet", action="store_true", default=default, help="show no progress on stderr")


def bar(*, quiet: bool, **options: Any) -> Any:
    """A ``tqdm`` bar on the current ``sys.stderr`` (see :func:`reporting`), or a disabled one when ``quiet``."""
    from tqdm import tqdm

    return tqdm(file=sys.stderr, disable=quiet, **options)


@contextlib.contextmanager
def reporting(*, quiet: bool) -> Iterator[None]:
    """Within the block, progress bars written to ``sys.stderr`` suit where stderr goes (see the module docstring)."""
    if quiet or _isatty(sys.stderr):
        yield
        return
    lines = LogLines(sys.stderr)
    with contextlib.redirect_stderr(lines):  # type: ignore[type-var]
        yield


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class LogLines(io.TextIOBase):
    """A stderr for tqdm when it is not a terminal: each redraw becomes at most one line per ``interval``.

    tqdm redraws a bar by writing ``"\\r" + status`` (padded with spaces) and
    closes it with ``"\\n"``. Here a status is written as a line of its own
    when it is the bar's first or ``interval`` seconds have passed since the
    last one, and the latest status not yet written is written when the bar
    closes. Anything else (a warning) passes through unchanged.

    Parameters
    ----------
    stream : text stream
        Where the lines go (the real ``sys.stderr``).
    interval : float, default ``LOG_INTERVAL`` (10 s)
    clock : callable, default ``time.monotonic``
        Seconds, for tests.
    """

    def __init__(self, stream: TextIO, interval: float = LOG_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._stream = stream
        self._interval = interval
        self._clock = clock
        self._last: float | None = None  # when the open bar's last line was written; None: no bar open
        self._pending: str | None = None  # the open bar's latest status, not written yet
        self._midline = False  # passed-through text is waiting for its newline

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._stream, "encoding", None) or "utf-8"

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if s.startswith("\r"):
            status = s.strip("\r").rstrip()
            now = self._clock()
            if not status:  # a bar cleared (leave=False)
                self._last = self._pending = None
            elif self._last is None or now - self._last >= self._interval:
                self._line(status)
                self._last, self._pending = now, None
            else:
                self._pending = status
        elif s == "\n" and self._last is not None and not self._midline:  # the bar closes
            if self._pending is not None:
                self._line(self._pending)
            self._last = self._pending = None
        elif s:
            self._stream.write(s)
            self._midline = not s.endswith("\n")
        return len(s)

    def _line(self, status: str) -> None:
        self._stream.write(status + "\n")
        self._stream.flush()

    def flush(self) -> None:
        self._stream.flush()
