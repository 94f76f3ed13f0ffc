"""The on-disk layout: format version, every node and attribute name, manifests.

A snapshot is a Zarr v3 group. ``docs/FORMAT.md`` describes the same layout
for someone reading it with plain ``zarr``::

    <snapshot>/                     attrs["snapstore"] = SnapshotManifest
      <stream>/                     attrs["stream"]    = StreamManifest
        raw/                        attrs["raw"]       = {"rows": committed raw rows, "ragged": [paths], "chunks": ...}
          index                     int64 (dataset_len,): dataset index of raw row r
          fields/<field path>       (dataset_len, *row_shape): raw sample leaves
          ragged/<field path>/      a field whose rows differ in shape (see below)
          hashes/<field path>       uint64 (dataset_len,): xxh3_64 of each raw row
        epochs/                     attrs["epochs"]    = {piece: hash of its final record, or null}
        epochs/<e>/                 attrs["epoch"]     = EpochManifest + {"chunks": hashes of its chunks}
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
          full                      uint8 (rows,): 1 where the seen row is stored in full (sampled epochs only)
          seen_raw                  uint8 (rows,): 1 where the seen row is its raw sample: read from raw/, not seen/
          where/offsets             int64 (max index + 2,): index i was seen at where/positions[offsets[i]:offsets[i+1]]
          where/positions           int64 (rows,): positions sorted by dataset index (inverse of ``order``)
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

FORMAT_VERSION = 3
"""Bumped on any change a reader of the previous version would misread. 2: commit records name the hash of
every chunk they cover (``CHUNKS``) and each stream's ``epochs/`` group names its epoch pieces (``PIECES_ATTR``),
see ``merkle.py``; version 1 snapshots read as before, unverified. 3: seen rows equal to their raw sample are
stored once, in ``raw/`` (``SEEN_RAW``); version 2 snapshots have no such rows."""

SNAPSHOT_ATTR = "snapstore"

STREAM_ATTR = "stream"

RANKS_ATTR = "ranks"

EPOCH_ATTR = "epoch"

RAW_ATTR = "raw"

CHUNKS = "chunks"
"""Key of a commit record (``EPOCH_ATTR``, ``RAW_ATTR``) naming the hash of each chunk it covers (``merkle.py``)."""

PIECES_ATTR = "epochs"
"""Attribute of a stream's ``epochs/`` group: every epoch piece it holds, with its sealed record's hash."""

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

FULL = "full"
"""Per-row marker of a sampled epoch (``seen.py``): 1 where the seen row's bytes are stored."""

SEEN_RAW = "seen_raw"
"""Per-row marker of an epoch whose stream records raw samples: 1 where every seen field of the row is bitwise
the raw sample of the same dataset index (same field path, dtype and row shape), so that the row is stored once,
in ``raw/``, and its ``seen/`` rows hold the fill value."""

WHERE_OFFSETS = "where/offsets"

WHERE_POSITIONS = "where/positions"

ROOT_FIELD = "value"
"""Field name of a batch (or sample) that is a single leaf, e.g. a bare tensor."""


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
