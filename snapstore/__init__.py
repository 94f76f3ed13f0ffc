"""snapstore: persistent dataset snapshots for PyTorch.

Record what a model saw through any DataLoader (raw samples, augmented
batches, shuffle order, outputs) into Zarr v3 arrays; recover, replay, audit,
diff and export it after the original Dataset is gone.

The names below load on first use (PEP 562), so that ``import snapstore``,
and with it ``snapstore --version`` and ``--help``, start without importing
torch or zarr; ``from snapstore import Recorder`` works as usual.
"""

from __future__ import annotations

import importlib as _importlib
import typing as _typing

from .errors import (
    CorruptionError,
    FieldNotFoundError,
    FormatVersionError,
    NotASnapshotError,
    RecordingError,
    SchemaError,
    SnapshotExistsError,
    SnapshotLockedError,
    SnapshotNotFoundError,
    SnapstoreError,
    SnapstoreWarning,
    StoreAccessError,
    StreamNotFoundError,
    UsageError,
)

if _typing.TYPE_CHECKING:
    from .auditing import AuditReport, CompareReport, DiffReport, Divergence, Finding
    from .auditing.audit import audit
    from .auditing.compare import compare
    from .auditing.diff import diff
    from .auditing.verify import verify
    from .core import FORMAT_VERSION, FieldInfo
    from .read import Epoch, RawSamples, Snapshot, Stream, open
    from .recording import Recorder, RecordingLoader, record

    __version__: str

#: Public name -> the subpackage it is imported from on first use.
_LAZY = {
    **dict.fromkeys(["AuditReport", "CompareReport", "DiffReport", "Divergence", "Finding", "audit", "compare", "diff",
                     "verify"], ".auditing"),
    **dict.fromkeys(["FORMAT_VERSION", "FieldInfo"], ".core"),
    **dict.fromkeys(["Epoch", "RawSamples", "Snapshot", "Stream", "open"], ".read"),
    **dict.fromkeys(["Recorder", "RecordingLoader", "record"], ".recording"),
}

def __getattr__(name: str) -> object:
    if name == "__version__":
        from importlib import metadata

        try:
            value: object = metadata.version("snapstore")
        except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
            value = "0+unknown"
    elif name in _LAZY:
        value = getattr(_importlib.import_module(_LAZY[name], __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


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
    "SnapshotLockedError",
    "SnapshotNotFoundError",
    "SnapstoreError",
    "SnapstoreWarning",
    "StoreAccessError",
    "Stream",
    "StreamNotFoundError",
    "UsageError",
    "__version__",
    "audit",
    "compare",
    "diff",
    "open",
    "record",
    "verify",
]
