"""The public surface (``snapstore.__all__``) is small, sorted and deliberate."""

from __future__ import annotations

import inspect

import snapstore

#: Every public name of ``snapstore``: a name added or removed is a decision, and this list records it.
PUBLIC = [
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


def test_all_lists_exactly_the_public_names():
    assert snapstore.__all__ == PUBLIC
    for name in PUBLIC:
        assert getattr(snapstore, name) is not None, name
    assert isinstance(snapstore.__version__, str) and isinstance(snapstore.FORMAT_VERSION, int)


def test_all_is_sorted_and_complete():
    assert snapstore.__all__ == sorted(snapstore.__all__, key=lambda n: (not n.isupper(), n[0].islower(), n))
    public = {n for n in dir(snapstore) if not n.startswith("_") and not inspect.ismodule(getattr(snapstore, n))}
    public -= {"annotations"}
    assert public == set(snapstore.__all__) - {"__version__"}


def test_every_error_derives_from_snapstore_error():
    errors = [getattr(snapstore, n) for n in snapstore.__all__ if n.endswith("Error")]
    assert errors and all(issubclass(e, snapstore.SnapstoreError) for e in errors)


def test_public_callables_have_docstrings():
    for name in snapstore.__all__:
        obj = getattr(snapstore, name)
        if callable(obj):
            assert inspect.getdoc(obj), name
