"""snapstore: persistent dataset snapshots for PyTorch.

Record what a model saw through any DataLoader (raw samples, augmented
batches, shuffle order, outputs) into Zarr v3 arrays; recover, replay, audit,
diff and export it after the original Dataset is gone.
"""

from __future__ import annotations

from importlib import metadata as _metadata

from .audit import audit, compare
from .diff import diff
from .errors import (
    CorruptionError,
    FormatVersionError,
    NotASnapshotError,
    RecordingError,
    SchemaError,
    SnapshotExistsError,
    SnapshotNotFoundError,
    SnapstoreError,
    SnapstoreWarning,
    UsageError,
)
from .layout import FORMAT_VERSION, FieldInfo
from .reader import Epoch, RawSamples, Snapshot, Stream, open
from .recorder import Recorder, RecordingLoader, record
from .report import AuditReport, CompareReport, DiffReport, Divergence, Finding

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
    "UsageError",
    "__version__",
    "audit",
    "compare",
    "diff",
    "open",
    "record",
]
