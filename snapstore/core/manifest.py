"""Manifests: what a snapshot, a stream and an epoch record about themselves; no I/O here.

Manifests are plain JSON in ``zarr.json`` attributes, written by snapstore but
read from anywhere (a damaged disk, a truncated copy, an untrusted source).
The frozen dataclasses here are what writer and reader share. Each
``from_dict`` is the one parse of its manifest, and it validates: it checks
every value a reader relies on (types, ranges, names, how the structure tree
matches the fields) and returns the dataclass, or raises ``CorruptionError``
naming where the problem is and what to do (``NotASnapshotError`` and
``FormatVersionError`` for the root manifest). Nothing here imports,
unpickles or evaluates anything named in a manifest.
"""

from __future__ import annotations

import dataclasses
import keyword
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import CorruptionError, FormatVersionError, NotASnapshotError
from . import layout
from .layout import FORMAT_VERSION, ROOT_FIELD, SNAPSHOT_ATTR
from .seen import FULL, SeenPolicy

STR = np.dtypes.StringDType()
"""NumPy dtype of string fields (``FieldInfo.dtype`` ``"str"``)."""


def numpy_dtype(dtype: str) -> np.dtype:
    """The NumPy dtype that stores a field of ``FieldInfo.dtype`` ``dtype``."""
    if dtype == "str":
        return STR
    if dtype == "bfloat16":
        return np.dtype("uint16")
    return np.dtype(dtype)


KINDS = frozenset({"tensor", "ndarray", "list", "tuple", "scalar", "numpy-scalar", "tensor-list", "ndarray-list"})
"""Every ``FieldInfo.kind``."""

_RAGGED_KINDS = frozenset({"tensor-list", "ndarray-list"})
_PYTHON_KINDS = frozenset({"list", "tuple", "scalar"})
_PYTHON_DTYPES = frozenset({"bool", "int64", "float64", "str"})
_NUMPY_KINDS = "biufc"  # bool, ints, unsigned ints, floats, complex: never object, void or datetime

MAX_DEPTH = 64
"""Deepest structure tree accepted (a batch nests a few levels; junk may nest thousands)."""

MAX_COUNT = 2**48
"""Largest row, batch or dataset count accepted: 281 trillion, far beyond any dataset, and far below what
int64 offsets and byte counts (a count times a row's bytes) hold."""

MAX_RANKS = 2**20
"""Largest world size accepted for a stream recorded by several ranks."""


@dataclass(frozen=True)
class FieldInfo:
    """What one field (a leaf of the batch structure) holds.

    Attributes
    ----------
    kind : str
        How the leaf is rebuilt: ``"tensor"`` (``torch.Tensor``), ``"ndarray"``,
        ``"list"``/``"tuple"`` (a per-row sequence of Python values, e.g. the
        ``list[str]`` default collate makes of strings), ``"scalar"`` (a Python
        ``int``/``float``/``bool``/``str``), ``"numpy-scalar"``.
    dtype : str
        NumPy dtype name of the stored values (``"float32"``, ``"int64"``,
        ``"str"``), or ``"bfloat16"`` (stored as its ``uint16`` bit pattern).
    shape : tuple of int
        Shape of one row (the batch dimension removed).
    ragged : bool
        True when rows may differ in shape; dimensions that varied are
        ``None`` in ``shape``. Kinds ``"tensor-list"``/``"ndarray-list"`` (a
        list of per-row tensors/arrays) are always ragged.
    """

    kind: str
    dtype: str
    shape: tuple[int | None, ...]
    ragged: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "dtype": self.dtype, "shape": list(self.shape), "ragged": self.ragged}

    @classmethod
    def from_dict(cls, d: Any, name: str = "?") -> FieldInfo:
        """The ``FieldInfo`` of field ``name``, refusing dtypes, kinds and shapes snapstore never writes
        (``_Bad``; the manifest that holds it turns that into ``CorruptionError``)."""
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
            _require(np_dtype.kind in _NUMPY_KINDS and np_dtype.name == dtype,
                     f"field {name!r} has dtype {dtype!r}; snapstore stores numbers, bools and strings only")
        if kind in _PYTHON_KINDS:
            _require(dtype in _PYTHON_DTYPES,
                     f"field {name!r} of kind {kind!r} has dtype {dtype!r}, not one of {sorted(_PYTHON_DTYPES)}")
        _require(isinstance(shape, list) and len(shape) <= 32,
                 f"field {name!r} has shape {shape!r:.80}, not a list of sizes")
        _require(all(v is None or _is_count(v) for v in shape), f"field {name!r} has shape {shape!r:.80}")
        _require(ragged or (None not in shape and kind not in _RAGGED_KINDS),
                 f"field {name!r} has variable sizes but ragged=False")
        return cls(kind, dtype, tuple(shape), ragged)


def _fields_to_dict(fields: dict[str, FieldInfo]) -> dict[str, Any]:
    return {k: v.to_dict() for k, v in fields.items()}


def _fields_from_dict(d: Any, what: str) -> dict[str, FieldInfo]:
    _require(d is None or isinstance(d, dict), f"{what} is {type(d).__name__}, not an object")
    return {k: FieldInfo.from_dict(v, k) for k, v in (d or {}).items()}


@dataclass(frozen=True)
class SnapshotManifest:
    """Root attributes: the format version and who wrote the snapshot."""

    format_version: int
    created: str
    versions: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any, *, where: str) -> SnapshotManifest:
        """The root manifest of the snapshot at ``where``.

        Raises ``NotASnapshotError`` without one, ``FormatVersionError`` if
        it is newer than this snapstore, ``CorruptionError`` if damaged.
        """
        if not isinstance(d, dict) or not _is_int(d.get("format_version")):
            raise NotASnapshotError(
                f"{where} is a Zarr group but its attribute {SNAPSHOT_ATTR!r} is missing or damaged; "
                "open a path written by snapstore.Recorder"
            )
        version = d["format_version"]
        if version > FORMAT_VERSION:
            raise FormatVersionError(
                f"{where} uses snapshot format version {version}, newer than this "
                f"snapstore reads ({FORMAT_VERSION}); upgrade with: pip install -U snapstore"
            )
        if version < 1:
            raise _fail(f"{where}/zarr.json", f"snapshot format version {version} does not exist (versions start at 1)")
        versions, created = d.get("versions", {}), d.get("created", "")
        if not isinstance(versions, dict) or not isinstance(created, str):
            raise _fail(f"{where}/zarr.json", f"the {SNAPSHOT_ATTR!r} attribute holds values of the wrong type")
        return cls(version, created, dict(versions))


@dataclass(frozen=True)
class StreamManifest:
    """Per-stream attributes: the schema of seen rows, raw samples and outputs.

    ``structure`` and ``raw_structure`` are JSON trees (see ``schema.py``) that
    rebuild a batch or a raw sample from its fields; ``None`` until the first
    batch (raw sample) was recorded. ``seen`` is the policy of ``Recorder.wrap(seen=...)`` (``seen.py``).
    """

    name: str
    iterable: bool
    batched: bool
    dataset_len: int | None
    structure: dict[str, Any] | None = None
    fields: dict[str, FieldInfo] = field(default_factory=dict)
    raw_structure: dict[str, Any] | None = None
    raw_fields: dict[str, FieldInfo] = field(default_factory=dict)
    outputs: dict[str, FieldInfo] = field(default_factory=dict)
    base_datasets: list[str] = field(default_factory=list)
    seen: SeenPolicy = FULL

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["seen"] = self.seen.to_dict()
        d["fields"] = _fields_to_dict(self.fields)
        d["raw_fields"] = _fields_to_dict(self.raw_fields)
        d["outputs"] = _fields_to_dict(self.outputs)
        return d

    @classmethod
    def from_dict(cls, d: Any, *, where: str, name: str | None = None) -> StreamManifest:
        """The manifest of the stream at ``where``, checked value by value; ``name``: the stream's
        group name, which the manifest must repeat."""
        what = f"{where} (manifest of stream {name!r})" if name is not None else f"{where} (a stream's manifest)"
        try:
            _require(isinstance(d, dict), f"the {layout.STREAM_ATTR!r} attribute is {type(d).__name__}, not an object")
            _require(isinstance(d.get("name"), str) and (name is None or d["name"] == name),
                     f"the manifest names stream {d.get('name')!r:.80}, but its group is {name!r}")
            _require(isinstance(d.get("iterable"), bool) and isinstance(d.get("batched"), bool),
                     "'iterable' or 'batched' is not a bool")
            n = d.get("dataset_len")
            _require(n is None or _is_count(n), f"dataset_len {n!r:.80} is not a count")
            fields = _fields_from_dict(d.get("fields"), "fields")
            raw_fields = _fields_from_dict(d.get("raw_fields"), "raw_fields")
            outputs = _fields_from_dict(d.get("outputs"), "outputs")
            _structure(d.get("structure"), fields, "structure")
            _structure(d.get("raw_structure"), raw_fields, "raw_structure")
            _require(all(not f.ragged or f.kind in ("tensor", "ndarray") for f in outputs.values()),
                     "an output is ragged")
            base_datasets = _str_list(d.get("base_datasets", []), "base_datasets")
            seen = _seen(d)
        except _Bad as e:
            raise _fail(what, str(e)) from None
        return cls(d["name"], d["iterable"], d["batched"], n, d.get("structure"), fields, d.get("raw_structure"),
                   raw_fields, outputs, base_datasets, seen)


@dataclass(frozen=True)
class EpochManifest:
    """Per-epoch commit record, rewritten (atomically, one key) at each commit.

    ``rows`` positions and ``batches`` batch sizes are committed; ``complete``
    is True only once the loader was exhausted. ``ragged`` lists the seen
    fields stored under ``ragged/``. ``part`` is 0 for the epoch's own group
    and k for ``continued/<k>`` (rows recorded after a resume). ``provenance``
    holds the sampler state at epoch start, seeds, versions and host. ``seen`` is the policy the
    epoch was recorded under (``seen.py``); ``where`` is True once its inverse index (``where/``)
    covers its ``rows``.
    """

    number: int
    rows: int
    batches: int
    complete: bool
    started: str
    ended: str | None
    provenance: dict[str, Any]
    ragged: list[str] = field(default_factory=list)
    part: int = 0
    seen: SeenPolicy = FULL
    where: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["seen"] = self.seen.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Any, *, where: str, number: int | None = None, part: int | None = None,
                  stream: StreamManifest | None = None) -> EpochManifest:
        """The commit record at ``where``; ``number`` and ``part``, when given, are what its group's place
        says it must be (``epochs/<number>``, ``continued/<part>``), and ``stream`` the schema its
        ragged fields must belong to."""
        try:
            _require(isinstance(d, dict), f"the {layout.EPOCH_ATTR!r} attribute is {type(d).__name__}, not an object")
            got = d.get("number")
            _require(_is_int(got) and (number is None or got == number),
                     f"the manifest numbers it {got!r:.80}, but its group is {number}")
            got_part = d.get("part", 0)
            _require(_is_int(got_part) and (part is None or got_part == part),
                     f"the manifest calls it part {got_part!r:.80}, but its group is part {part}")
            for key in ("rows", "batches"):
                _require(_is_count(d.get(key)), f"{key!r} is {d.get(key)!r:.80}, not a count")
            _require(isinstance(d.get("complete"), bool), f"'complete' is {d.get('complete')!r:.80}, not a bool")
            _require(isinstance(d.get("started"), str) and (d.get("ended") is None or isinstance(d["ended"], str)),
                     "'started' or 'ended' is not a time")
            _require(isinstance(d.get("provenance", {}), dict), "'provenance' is not an object")
            ragged = _str_list(d.get("ragged", []), "'ragged'")
            _require(stream is None or set(ragged) <= set(stream.fields),
                     f"'ragged' names fields {ragged!r:.80} the stream does not record")
            seen = _seen(d)
            _require(isinstance(d.get("where", False), bool), f"'where' is {d.get('where')!r:.80}, not a bool")
        except _Bad as e:
            raise _fail(f"{where} (commit record of epoch {number if number is not None else '?'})", str(e)) from None
        return cls(got, d["rows"], d["batches"], d["complete"], d["started"], d.get("ended"),
                   dict(d.get("provenance", {})), ragged, got_part, seen, d.get("where", False))


@dataclass(frozen=True)
class RanksManifest:
    """Attributes of a stream recorded by several ranks (torch.distributed): one stream per rank below it."""

    world_size: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any, *, where: str) -> RanksManifest:
        try:
            _require(isinstance(d, dict), f"the {layout.RANKS_ATTR!r} attribute is {type(d).__name__}, not an object")
            w = d.get("world_size")
            _require(_is_int(w) and 1 <= w <= MAX_RANKS, f"'world_size' is {w!r:.80}, not a number of ranks")
        except _Bad as e:
            raise _fail(f"{where} (ranks of a torch.distributed stream)", str(e)) from None
        return cls(w)


@dataclass(frozen=True)
class RawManifest:
    """Commit record of a stream's raw samples: ``rows`` committed, ``ragged`` raw fields stored ragged."""

    rows: int = 0
    ragged: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any, *, where: str, stream: StreamManifest | None = None) -> RawManifest:
        """The raw group's record (``{}``: nothing committed yet); ``stream``, when given, the schema
        its ragged fields must belong to."""
        try:
            _require(isinstance(d, dict), f"the {layout.RAW_ATTR!r} attribute is {type(d).__name__}, not an object")
            rows = d.get("rows") if d else 0  # {}: nothing committed yet; the writer always writes "rows"
            _require(_is_count(rows), f"'rows' is {rows!r:.80}, not a count")
            ragged = _str_list(d.get("ragged", []), "'ragged'")
            if stream is not None:
                _require(set(ragged) <= set(stream.raw_fields),
                         f"'ragged' names raw fields {ragged!r:.80} the stream does not record")
                _require(rows == 0 or stream.raw_structure is not None,
                         "raw rows are committed but the stream records no raw structure")
        except _Bad as e:
            raise _fail(f"{where} (raw samples)", str(e)) from None
        return cls(rows, ragged)


# -- checks ---------------------------------------------------------------------------------


class _Bad(Exception):
    """A value that fails a check; turned into ``CorruptionError`` with where it was found."""


def _fail(where: str, what: str) -> CorruptionError:
    return CorruptionError.damaged(f"{where}: {what}")


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise _Bad(what)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_count(v: Any) -> bool:
    return _is_int(v) and 0 <= v <= MAX_COUNT


def _str_list(v: Any, what: str) -> list[str]:
    _require(isinstance(v, list) and all(isinstance(x, str) for x in v), f"{what} is not a list of strings: {v!r:.80}")
    return list(v)


def _seen(d: dict[str, Any]) -> SeenPolicy:
    """The ``seen`` policy of a manifest; manifests written before policies existed stored every row."""
    try:
        return SeenPolicy.from_dict(d.get("seen", FULL.to_dict()))
    except ValueError as e:
        raise _Bad(str(e)) from None


def _identifier(name: Any, what: str, *, field: bool) -> None:
    _require(
        isinstance(name, str) and name.isidentifier() and not keyword.iskeyword(name)
        and not (field and name.startswith("_")),
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
        _require(node.get("field") == (path or ROOT_FIELD),
                 f"leaf at {path or '<batch>'!r} names field {node.get('field')!r:.80}")
        leaves.append(path or ROOT_FIELD)
        return
    _require(t in ("dict", "list", "tuple", "namedtuple"),
             f"structure node at {path or '<batch>'!r} has type {t!r:.80}")
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
    _require(len(keys) == len(items) and len(set(keys)) == len(keys),
             f"structure node at {path or '<batch>'!r} has {len(keys)} names for {len(items)} items")
    for k, item in zip(keys, items):
        _check_structure(item, f"{path}/{k}" if path else k, leaves, depth + 1)


def _structure(structure: Any, fields: dict[str, FieldInfo], what: str) -> None:
    if structure is None:
        _require(not fields, f"{what}: fields are recorded but no structure")
        return
    leaves: list[str] = []
    _check_structure(structure, "", leaves, 0)
    _require(sorted(leaves) == sorted(fields),
             f"{what}: the structure's leaves {sorted(leaves)!r:.120} are not the fields {sorted(fields)!r:.120}")


def merge_ranks(manifests: list[StreamManifest]) -> StreamManifest:
    """One schema for the ranks of a stream: a field ragged on any rank is ragged."""
    first = manifests[0]
    if len(manifests) == 1:
        return first
    fields, raw_fields, outputs = dict(first.fields), dict(first.raw_fields), dict(first.outputs)
    for m in manifests[1:]:
        for mine, theirs in ((fields, m.fields), (raw_fields, m.raw_fields), (outputs, m.outputs)):
            for p, f in theirs.items():
                if p not in mine or (f.ragged and not mine[p].ragged):
                    mine[p] = f
    structure = next((m.structure for m in manifests if m.structure is not None), None)
    raw_structure = next((m.raw_structure for m in manifests if m.raw_structure is not None), None)
    return StreamManifest(first.name, first.iterable, first.batched, first.dataset_len, structure, fields,
                          raw_structure, raw_fields, outputs, first.base_datasets, first.seen)
