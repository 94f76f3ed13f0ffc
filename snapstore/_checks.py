"""Validate manifests read from a snapshot before anything is built from them; no I/O here.

Manifests are plain JSON in ``zarr.json`` attributes, written by snapstore but
read from anywhere (a damaged disk, a truncated copy, an untrusted source).
Each function takes the decoded attribute, checks every value the reader
relies on (types, ranges, names, how the structure tree matches the fields)
and returns the manifest dataclass, or raises ``CorruptionError`` naming
where the problem is and what to do. Nothing here imports, unpickles or
evaluates anything named in a manifest.
"""

from __future__ import annotations

import keyword
from typing import Any

import numpy as np

from . import layout
from .errors import CorruptionError
from .layout import EpochManifest, FieldInfo, SnapshotManifest, StreamManifest
from .schema import ROOT_FIELD

__all__ = ["epoch_manifest", "ranks_manifest", "raw_manifest", "snapshot_manifest", "stream_manifest"]

KINDS = frozenset({"tensor", "ndarray", "list", "tuple", "scalar", "numpy-scalar", "tensor-list", "ndarray-list"})
_RAGGED_KINDS = frozenset({"tensor-list", "ndarray-list"})
_PYTHON_KINDS = frozenset({"list", "tuple", "scalar"})
_PYTHON_DTYPES = frozenset({"bool", "int64", "float64", "str"})
_NUMPY_KINDS = "biufc"  # bool, ints, unsigned ints, floats, complex: never object, void or datetime
MAX_DEPTH = 64
"""Deepest structure tree accepted (a batch nests a few levels; junk may nest thousands)."""


class _Bad(Exception):
    """A value that fails a check; turned into ``CorruptionError`` with where it was found."""


def _fail(where: str, what: str) -> CorruptionError:
    return CorruptionError(
        f"{where}: {what}; the snapshot's metadata is damaged: restore it from a copy "
        "(or run `snapstore audit` to see what else is damaged)"
    )


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise _Bad(what)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


MAX_COUNT = 2**62
"""Largest row, batch or dataset count accepted (counts are int64 on disk and index sizes in Python)."""


def _is_count(v: Any) -> bool:
    return _is_int(v) and 0 <= v <= MAX_COUNT


def _str_list(v: Any, what: str) -> list[str]:
    _require(isinstance(v, list) and all(isinstance(x, str) for x in v), f"{what} is not a list of strings: {v!r:.80}")
    return list(v)


def field_info(d: Any, name: str) -> FieldInfo:
    """A ``FieldInfo`` from its JSON form, refusing dtypes, kinds and shapes snapstore never writes."""
    _require(isinstance(d, dict), f"field {name!r} is {type(d).__name__}, not an object")
    kind, dtype, shape, ragged = d.get("kind"), d.get("dtype"), d.get("shape"), d.get("ragged", False)
    _require(kind in KINDS, f"field {name!r} has kind {kind!r}, not one of {sorted(KINDS)}")
    _require(isinstance(ragged, bool), f"field {name!r} has ragged={ragged!r}, not a bool")
    _require(isinstance(dtype, str), f"field {name!r} has dtype {dtype!r}, not a string")
    if dtype not in ("str", "bfloat16"):
        try:
            np_dtype = np.dtype(dtype)
        except TypeError:
            raise _Bad(f"field {name!r} has dtype {dtype!r}, which is not a NumPy dtype") from None
        _require(np_dtype.kind in _NUMPY_KINDS and np_dtype.name == dtype, f"field {name!r} has dtype {dtype!r}; snapstore stores numbers, bools and strings only")
    if kind in _PYTHON_KINDS:
        _require(dtype in _PYTHON_DTYPES, f"field {name!r} of kind {kind!r} has dtype {dtype!r}, not one of {sorted(_PYTHON_DTYPES)}")
    _require(isinstance(shape, list) and len(shape) <= 32, f"field {name!r} has shape {shape!r:.80}, not a list of sizes")
    _require(all(v is None or _is_count(v) for v in shape), f"field {name!r} has shape {shape!r:.80}")
    _require(ragged or (None not in shape and kind not in _RAGGED_KINDS), f"field {name!r} has variable sizes but ragged=False")
    return FieldInfo(kind, dtype, tuple(shape), ragged)


def _fields(d: Any, what: str) -> dict[str, FieldInfo]:
    _require(d is None or isinstance(d, dict), f"{what} is {type(d).__name__}, not an object")
    return {k: field_info(v, k) for k, v in (d or {}).items()}


def _identifier(name: Any, what: str, *, field: bool) -> None:
    _require(
        isinstance(name, str) and name.isidentifier() and not keyword.iskeyword(name) and not (field and name.startswith("_")),
        f"{what} {name!r:.80} is not a Python identifier",
    )


def _check_structure(node: Any, path: str, leaves: list[str], depth: int) -> None:
    """Check one node of a structure tree; collect leaf paths. A leaf's field must be the path
    that ``schema.flatten`` gives its position, so a renamed key or field cannot go unnoticed."""
    _require(depth <= MAX_DEPTH, f"the structure nests deeper than {MAX_DEPTH} levels")
    _require(isinstance(node, dict), f"structure node at {path or '<batch>'!r} is {type(node).__name__}, not an object")
    t = node.get("type")
    if t == "none":
        return
    if t == "leaf":
        _require(node.get("field") == (path or ROOT_FIELD), f"leaf at {path or '<batch>'!r} names field {node.get('field')!r:.80}")
        leaves.append(path or ROOT_FIELD)
        return
    _require(t in ("dict", "list", "tuple", "namedtuple"), f"structure node at {path or '<batch>'!r} has type {t!r:.80}")
    items = node.get("items")
    _require(isinstance(items, list), f"structure node at {path or '<batch>'!r} has no list of items")
    if t == "dict":
        keys = _str_list(node.get("keys"), f"keys at {path or '<batch>'!r}")
        _require(all(k and "/" not in k for k in keys), f"keys at {path or '<batch>'!r} are not field names")
    elif t == "namedtuple":
        _identifier(node.get("name"), "namedtuple name", field=False)
        keys = _str_list(node.get("fields"), f"namedtuple fields at {path or '<batch>'!r}")
        for k in keys:
            _identifier(k, "namedtuple field", field=True)
    else:
        keys = [str(i) for i in range(len(items))]
    _require(len(keys) == len(items) and len(set(keys)) == len(keys), f"structure node at {path or '<batch>'!r} has {len(keys)} names for {len(items)} items")
    for k, item in zip(keys, items):
        _check_structure(item, f"{path}/{k}" if path else k, leaves, depth + 1)


def _structure(structure: Any, fields: dict[str, FieldInfo], what: str) -> None:
    if structure is None:
        _require(not fields, f"{what}: fields are recorded but no structure")
        return
    leaves: list[str] = []
    _check_structure(structure, "", leaves, 0)
    _require(sorted(leaves) == sorted(fields), f"{what}: the structure's leaves {sorted(leaves)!r:.120} are not the fields {sorted(fields)!r:.120}")


def snapshot_manifest(d: Any, *, path: str) -> SnapshotManifest:
    """The root manifest; ``NotASnapshotError`` without one, ``FormatVersionError`` if newer."""
    if isinstance(d, dict) and _is_int(d.get("format_version")) and d["format_version"] <= layout.FORMAT_VERSION:
        if d["format_version"] < 1:
            raise _fail(f"{path}/zarr.json", f"snapshot format version {d['format_version']} does not exist (versions start at 1)")
        if not isinstance(d.get("versions", {}), dict) or not isinstance(d.get("created", ""), str):
            raise _fail(f"{path}/zarr.json", f"the {layout.SNAPSHOT_ATTR!r} attribute holds values of the wrong type")
    return SnapshotManifest.from_dict(d, path=path)  # NotASnapshotError / FormatVersionError


def stream_manifest(d: Any, *, name: str, where: str) -> StreamManifest:
    """A stream's manifest, checked value by value, for the stream group called ``name``."""
    try:
        _require(isinstance(d, dict), f"the {layout.STREAM_ATTR!r} attribute is {type(d).__name__}, not an object")
        _require(d.get("name") == name, f"the manifest names stream {d.get('name')!r:.80}, but its group is {name!r}")
        _require(isinstance(d.get("iterable"), bool) and isinstance(d.get("batched"), bool), "'iterable' or 'batched' is not a bool")
        n = d.get("dataset_len")
        _require(n is None or _is_count(n), f"dataset_len {n!r:.80} is not a count")
        fields, raw_fields, outputs = _fields(d.get("fields"), "fields"), _fields(d.get("raw_fields"), "raw_fields"), _fields(d.get("outputs"), "outputs")
        _structure(d.get("structure"), fields, "structure")
        _structure(d.get("raw_structure"), raw_fields, "raw_structure")
        _require(all(not f.ragged or f.kind in ("tensor", "ndarray") for f in outputs.values()), "an output is ragged")
        _str_list(d.get("base_datasets", []), "base_datasets")
        return StreamManifest.from_dict(d)
    except (_Bad, KeyError, TypeError, ValueError) as e:
        raise _fail(f"{where} (manifest of stream {name!r})", str(e)) from None


def epoch_manifest(d: Any, *, number: int, stream: StreamManifest, where: str, part: int = 0) -> EpochManifest:
    """An epoch's commit record, for the group ``epochs/<number>`` of ``stream`` (``part`` 0), or
    its continuation ``epochs/<number>/continued/<part>``."""
    try:
        _require(isinstance(d, dict), f"the {layout.EPOCH_ATTR!r} attribute is {type(d).__name__}, not an object")
        _require(d.get("number") == number and _is_int(d.get("number")), f"the manifest numbers it {d.get('number')!r:.80}, but its group is {number}")
        got = d.get("part", 0)
        _require(_is_int(got) and got == part, f"the manifest calls it part {got!r:.80}, but its group is part {part}")
        for key in ("rows", "batches"):
            _require(_is_count(d.get(key)), f"{key!r} is {d.get(key)!r:.80}, not a count")
        _require(isinstance(d.get("complete"), bool), f"'complete' is {d.get('complete')!r:.80}, not a bool")
        _require(isinstance(d.get("started"), str) and (d.get("ended") is None or isinstance(d["ended"], str)), "'started' or 'ended' is not a time")
        _require(isinstance(d.get("provenance", {}), dict), "'provenance' is not an object")
        ragged = _str_list(d.get("ragged", []), "'ragged'")
        _require(set(ragged) <= set(stream.fields), f"'ragged' names fields {ragged!r:.80} the stream does not record")
        return EpochManifest.from_dict(d)
    except (_Bad, KeyError, TypeError, ValueError) as e:
        raise _fail(f"{where} (commit record of epoch {number})", str(e)) from None


MAX_RANKS = 2**20
"""Largest world size accepted for a stream recorded by several ranks."""


def ranks_manifest(d: Any, *, where: str) -> int:
    """The world size from a multi-rank stream's ``"ranks"`` attribute."""
    try:
        _require(isinstance(d, dict), f"the {layout.RANKS_ATTR!r} attribute is {type(d).__name__}, not an object")
        w = d.get("world_size")
        _require(_is_int(w) and 1 <= w <= MAX_RANKS, f"'world_size' is {w!r:.80}, not a number of ranks")
        return w
    except _Bad as e:
        raise _fail(f"{where} (ranks of a torch.distributed stream)", str(e)) from None


def raw_manifest(d: Any, *, stream: StreamManifest, where: str) -> tuple[int, list[str]]:
    """``(committed raw rows, ragged raw fields)`` from the raw group's attribute."""
    try:
        _require(isinstance(d, dict), f"the {layout.RAW_ATTR!r} attribute is {type(d).__name__}, not an object")
        rows = d.get("rows") if d else 0  # {}: nothing committed yet; the writer always writes "rows"
        _require(_is_count(rows), f"'rows' is {rows!r:.80}, not a count")
        ragged = _str_list(d.get("ragged", []), "'ragged'")
        _require(set(ragged) <= set(stream.raw_fields), f"'ragged' names raw fields {ragged!r:.80} the stream does not record")
        _require(rows == 0 or stream.raw_structure is not None, "raw rows are committed but the stream records no raw structure")
        return rows, ragged
    except (_Bad, KeyError, TypeError, ValueError) as e:
        raise _fail(f"{where} (raw samples)", str(e)) from None
