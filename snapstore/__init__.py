"""snapstore: persistent dataset snapshots for PyTorch.

Record what a model saw through any DataLoader (raw samples, augmented
batches, shuffle order, outputs) into Zarr v3 arrays; recover, replay, audit,
diff and export it after the original Dataset is gone.
"""

from __future__ import annotations

from importlib import metadata as _metadata

from .audit import AuditReport, CompareReport, DiffReport, Divergence, Finding, audit, compare, diff
from .core import FORMAT_VERSION, FieldInfo
from .errors import (
    CorruptionError,
    FieldNotFoundError,
    FormatVersionError,
    NotASnapshotError,
    RecordingError,
    SchemaError,
    SnapshotExistsError,
    SnapshotNotFoundError,
    SnapstoreError,
    SnapstoreWarning,
    StreamNotFoundError,
    UsageError,
)
from .read import Epoch, RawSamples, Snapshot, Stream, open
from .record import Recorder, RecordingLoader, record

try:
    __version__ = _metadata.version("snapstore")
except _metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "FORMAT_VERSION",
    "AuditReport",
    "CompareReport",
    "CorruptionError",
    "DiffReport",
    "Divergence",
    "Epoch",
    "FieldInfo",
    "FieldNotFoundError",
    "Finding",
    "FormatVersionError",
    "NotASnapshotError",
    "RawSamples",
    "Recorder",
    "RecordingError",
    "RecordingLoader",
    "SchemaError",
    "Snapshot",
    "SnapshotExistsError",
    "SnapshotNotFoundError",
    "SnapstoreError",
    "SnapstoreWarning",
    "Stream",
    "StreamNotFoundError",
    "UsageError",
    "__version__",
    "audit",
    "compare",
    "diff",
    "open",
    "record",
]
