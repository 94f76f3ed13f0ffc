"""Exceptions raised by snapstore.

Every error derives from :class:`SnapstoreError`; leaves also inherit the
matching builtin so ``except FileNotFoundError`` keeps working::

    SnapstoreError
    ├── SnapshotNotFoundError   (+ FileNotFoundError)  no snapshot at the path
    ├── SnapshotExistsError     (+ FileExistsError)    refusing to overwrite
    ├── NotASnapshotError       (+ ValueError)         a store without snapstore's marker
    ├── StreamNotFoundError     (+ KeyError)           no stream of that name in the snapshot
    ├── FieldNotFoundError      (+ KeyError)           no field (or output) of that name in the stream
    ├── FormatVersionError      (+ ValueError)         written by a newer snapstore
    ├── SchemaError             (+ TypeError)          a batch the schema cannot hold
    ├── CorruptionError         (+ ValueError)         a chunk that fails to decode or checksum
    ├── RecordingError          (+ RuntimeError)       the writer process failed
    ├── SnapshotLockedError     (+ RuntimeError)       another Recorder is writing the snapshot
    ├── StoreAccessError        (+ OSError)            the object store cannot be reached or refuses access
    └── UsageError              (+ ValueError)         an argument snapstore cannot act on
        └── NotStoredError                             seen rows recorded as content hashes only

:class:`SnapstoreWarning` is the one warning category.
"""

from __future__ import annotations

__all__ = [
    "CorruptionError",
    "FieldNotFoundError",
    "FormatVersionError",
    "NotASnapshotError",
    "NotStoredError",
    "RecordingError",
    "SchemaError",
    "SnapshotExistsError",
    "SnapshotLockedError",
    "SnapshotNotFoundError",
    "SnapstoreError",
    "SnapstoreWarning",
    "StoreAccessError",
    "StreamNotFoundError",
    "UsageError",
]


class SnapstoreError(Exception):
    """Root of every error snapstore raises."""


class SnapshotNotFoundError(SnapstoreError, FileNotFoundError):
    """No snapshot exists at the given path."""


class SnapshotExistsError(SnapstoreError, FileExistsError):
    """A snapshot (or other data) exists where a new one was to be written."""


class NotASnapshotError(SnapstoreError, ValueError):
    """The path holds data, but not a snapstore snapshot."""


class StreamNotFoundError(SnapstoreError, KeyError):
    """No stream of the given name was recorded in the snapshot."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class FieldNotFoundError(SnapstoreError, KeyError):
    """No field (or logged output) of the given name was recorded in the stream."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class FormatVersionError(SnapstoreError, ValueError):
    """The snapshot was written in a format this snapstore cannot read."""


class SchemaError(SnapstoreError, TypeError):
    """A batch, sample or output does not fit the recorded schema."""


class CorruptionError(SnapstoreError, ValueError):
    """Stored bytes fail to decode or fail their checksum, or metadata snapstore relies on is damaged."""

    @classmethod
    def damaged(cls, what: str) -> CorruptionError:
        """The error for damage ``what`` (where and what was found), followed by the one remedy every
        damage message gives."""
        return cls(f"{what}; the snapshot is damaged: restore it from a copy, or run `snapstore audit` to list "
                   "what else is damaged")


class RecordingError(SnapstoreError, RuntimeError):
    """The writer process failed; the cause is chained (its traceback there is in the cause's notes)."""


class StoreAccessError(SnapstoreError, OSError):
    """The object store behind a URL cannot be reached, or refuses access (credentials); the cause is chained."""


class SnapshotLockedError(SnapstoreError, RuntimeError):
    """Another ``Recorder`` (in this process or another) is writing the snapshot: one writer at a time."""


class UsageError(SnapstoreError, ValueError):
    """An argument or a call that snapstore cannot act on."""


class NotStoredError(UsageError):
    """Seen rows asked for were recorded as content hashes only (``Recorder.wrap(seen="hash")`` or a
    sampling policy), not in full."""


class SnapstoreWarning(UserWarning):
    """The single warning category snapstore emits."""
