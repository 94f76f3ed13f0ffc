"""The on-disk layout: format version, every node and attribute name, manifests.

A snapshot is a Zarr v3 group. ``docs/FORMAT.md`` describes the same layout
for someone reading it with plain ``zarr``::

    <snapshot>/                     attrs["snapstore"] = SnapshotManifest
      <stream>/                     attrs["stream"]    = StreamManifest
        raw/                        attrs["raw"]       = {"rows": committed raw rows, "ragged": [paths]}
          index                     int64 (dataset_len,): dataset index of raw row r
          fields/<field path>       (dataset_len, *row_shape): raw sample leaves
          ragged/<field path>/      a field whose rows differ in shape (see below)
          hashes/<field path>       uint64 (dataset_len,): xxh3_64 of each raw row
        epochs/<e>/                 attrs["epoch"]     = EpochManifest
          order                     int64 (rows,): dataset index at each position
          batch_sizes               int64 (batches,): rows per yielded batch
          worker                    int32 (rows,): loader worker that fetched the row (-1: main process)
          base_order                int64 (rows,): index into the innermost dataset (Subset/ConcatDataset only)
          base_dataset              int32 (rows,): which innermost dataset (StreamManifest.base_datasets)
          seen/<field path>         (rows, *row_shape): seen rows, as yielded
          ragged/<field path>/      a seen field whose rows differ in shape
          outputs/<name>            (rows, *shape): values passed to log()
          hashes/seen/<field path>  uint64 (rows,): xxh3_64 of each seen row
          hashes/outputs/<name>     uint64 (rows,): xxh3_64 of each output row
          continued/<k>/            rows recorded after a resume, continuing this epoch (same layout)

A stream recorded by several ranks (torch.distributed) is a group with
attrs["ranks"] = {"world_size": W} holding one stream per rank, ``rank<r>/``,
each with the layout above; the reader interleaves their batches.

A ragged field is three arrays: ``values`` (all elements, row after row, 1-D),
``offsets`` (int64 (rows,): where each row starts in ``values``) and
``shapes`` (int64 (rows, ndim)). Arrays are preallocated and may be longer
than what was committed: only the first ``rows`` (``batches``, raw ``rows``)
entries named by the manifests hold data. Every writer and reader imports
its names from here.

Content hashes (``hashing.py``) are optional for readers: snapshots written
before they existed lack the ``hashes`` arrays, and a stored 0 means "not
recorded"; readers then hash the rows themselves.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import FormatVersionError, NotASnapshotError

FORMAT_VERSION = 1
"""Bumped on any change a reader of the previous version would misread."""

SNAPSHOT_ATTR = "snapstore"
STREAM_ATTR = "stream"
RANKS_ATTR = "ranks"
EPOCH_ATTR = "epoch"
RAW_ATTR = "raw"

RAW_GROUP = "raw"
RAW_INDEX = "index"
RAW_FIELDS = "fields"
EPOCHS_GROUP = "epochs"
ORDER = "order"
BATCH_SIZES = "batch_sizes"
WORKER = "worker"
BASE_ORDER = "base_order"
BASE_DATASET = "base_dataset"
SEEN_GROUP = "seen"
OUTPUTS_GROUP = "outputs"
RAGGED_GROUP = "ragged"
CONTINUED_GROUP = "continued"
VALUES = "values"
OFFSETS = "offsets"
SHAPES = "shapes"
HASHES_GROUP = "hashes"


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
    def from_dict(cls, d: dict[str, Any]) -> FieldInfo:
        return cls(d["kind"], d["dtype"], tuple(d["shape"]), bool(d.get("ragged", False)))


def _fields_to_dict(fields: dict[str, FieldInfo]) -> dict[str, Any]:
    return {k: v.to_dict() for k, v in fields.items()}


def _fields_from_dict(d: dict[str, Any] | None) -> dict[str, FieldInfo]:
    return {k: FieldInfo.from_dict(v) for k, v in (d or {}).items()}


@dataclass(frozen=True)
class SnapshotManifest:
    """Root attributes: the format version and who wrote the snapshot."""

    format_version: int
    created: str
    versions: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any, *, path: str) -> SnapshotManifest:
        if not isinstance(d, dict) or not isinstance(d.get("format_version"), int):
            raise NotASnapshotError(
                f"{path} is a Zarr group but its attribute {SNAPSHOT_ATTR!r} is missing or damaged; "
                "open a path written by snapstore.Recorder"
            )
        if d["format_version"] > FORMAT_VERSION:
            raise FormatVersionError(
                f"{path} uses snapshot format version {d['format_version']}, newer than this "
                f"snapstore reads ({FORMAT_VERSION}); upgrade with: pip install -U snapstore"
            )
        return cls(d["format_version"], str(d.get("created", "")), dict(d.get("versions", {})))


@dataclass(frozen=True)
class StreamManifest:
    """Per-stream attributes: the schema of seen rows, raw samples and outputs.

    ``structure`` and ``raw_structure`` are JSON trees (see ``schema.py``) that
    rebuild a batch or a raw sample from its fields; ``None`` until the first
    batch (raw sample) was recorded.
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

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["fields"] = _fields_to_dict(self.fields)
        d["raw_fields"] = _fields_to_dict(self.raw_fields)
        d["outputs"] = _fields_to_dict(self.outputs)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StreamManifest:
        return cls(
            name=d["name"],
            iterable=bool(d["iterable"]),
            batched=bool(d["batched"]),
            dataset_len=d.get("dataset_len"),
            structure=d.get("structure"),
            fields=_fields_from_dict(d.get("fields")),
            raw_structure=d.get("raw_structure"),
            raw_fields=_fields_from_dict(d.get("raw_fields")),
            outputs=_fields_from_dict(d.get("outputs")),
            base_datasets=list(d.get("base_datasets", [])),
        )


@dataclass(frozen=True)
class EpochManifest:
    """Per-epoch commit record, rewritten (atomically, one key) at each commit.

    ``rows`` positions and ``batches`` batch sizes are committed; ``complete``
    is True only once the loader was exhausted. ``ragged`` lists the seen
    fields stored under ``ragged/``. ``part`` is 0 for the epoch's own group
    and k for ``continued/<k>`` (rows recorded after a resume). ``provenance`` holds the sampler state
    at epoch start, seeds, versions and host.
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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EpochManifest:
        return cls(
            number=int(d["number"]),
            rows=int(d["rows"]),
            batches=int(d["batches"]),
            complete=bool(d["complete"]),
            started=str(d["started"]),
            ended=d.get("ended"),
            provenance=dict(d.get("provenance", {})),
            ragged=list(d.get("ragged", [])),
            part=int(d.get("part", 0)),
        )


def epoch_name(number: int) -> str:
    """Group name of epoch ``number`` inside ``epochs/``."""
    return str(number)


def rank_name(rank: int) -> str:
    """Group name of rank ``rank``'s stream inside a multi-rank stream."""
    return f"rank{rank}"


def seen_hashes_path(field: str) -> str:
    """Path, inside an epoch group, of the content hashes of seen field ``field``."""
    return f"{HASHES_GROUP}/{SEEN_GROUP}/{field}"


def output_hashes_path(name: str) -> str:
    """Path, inside an epoch group, of the content hashes of output ``name``."""
    return f"{HASHES_GROUP}/{OUTPUTS_GROUP}/{name}"


def raw_hashes_path(field: str) -> str:
    """Path, inside a stream's raw group, of the content hashes of raw field ``field``."""
    return f"{HASHES_GROUP}/{field}"
