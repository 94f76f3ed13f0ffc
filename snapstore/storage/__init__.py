"""Storage: the only layer that imports ``zarr``.

Groups and attributes (``groups``), one chunk at a time (``chunks``),
readers and writers of rows built on those (``readers``, ``writers``), and
the walk of a snapshot's tree (``tree``). zarr's private APIs are confined
to ``_zarr``.
"""

from __future__ import annotations

from .chunks import COMPRESSORS, check_array, create_rows_array, read_chunk, stored_chunks
from .groups import (
    Array,
    Group,
    array_nbytes_stored,
    check_exists,
    child,
    children,
    create_group,
    has_data,
    members,
    open_group,
    require_group,
    reread,
    walk_arrays,
    write_attr,
)
from .lock import SnapshotLock
from .readers import ChunkReader, Cursor, RaggedReader
from .writers import Buffers, ChunkWriter, FieldSinks, RowSink, name_piece, root_gone, sync_node, write_record

__all__ = [
    "COMPRESSORS",
    "Array",
    "Buffers",
    "ChunkReader",
    "ChunkWriter",
    "Cursor",
    "FieldSinks",
    "Group",
    "RaggedReader",
    "RowSink",
    "SnapshotLock",
    "array_nbytes_stored",
    "check_array",
    "check_exists",
    "child",
    "children",
    "create_group",
    "create_rows_array",
    "has_data",
    "members",
    "name_piece",
    "open_group",
    "read_chunk",
    "require_group",
    "reread",
    "root_gone",
    "stored_chunks",
    "sync_node",
    "walk_arrays",
    "write_attr",
    "write_record",
]
