"""Sweeping what a killed writer stored but never committed: chunks beyond the rows its records name.

A writer stores each chunk before the commit record that names it (data,
then the record), so a writer killed in between leaves chunks no record
names: of an epoch piece it never finished, or of the raw samples. Readers
never read them (every read stops at the committed rows) and the audit
finds nothing wrong with them, but they hold bytes, count in
``bytes_stored``, and an epoch continued after a resume is recorded in a
new piece, so nothing would ever overwrite them. ``sweep_uncommitted``
deletes them when a ``Recorder`` opens the snapshot with ``mode="a"``,
under its writer lock.

Only chunks wholly beyond the rows a record covers are deleted, only in
pieces not marked complete and in raw groups, and only where the record
names its chunks (format version 2): a chunk inside committed rows is the
readers' to verify, never the sweep's to remove.
"""

from __future__ import annotations

from ..core import layout
from ..core.merkle import parse_chunks
from ..errors import CorruptionError
from . import _zarr
from .chunks import chunk_path, local_file, stored_chunks
from .groups import Group, child, children, walk_arrays
from .tree import epoch_groups, epoch_pieces, stream_ranks

__all__ = ["sweep_uncommitted"]


def sweep_uncommitted(root: Group, where: str) -> int:
    """Delete the chunks no commit record covers in the unfinished pieces and raw groups of snapshot
    ``root`` (found at ``where``, for messages); the number of chunks deleted.

    A piece whose record is missing or cannot be read is left alone (readers and the audit report it); a raw
    group without a record has committed no row.
    """
    swept = 0
    for stream, group in children(root)[0]:
        if not isinstance(group, Group):
            continue
        for _, rank_group, rank_where in stream_ranks(group, f"{where}/{stream}", strict=False):
            raw = child(rank_group, layout.RAW_GROUP)
            if isinstance(raw, Group):
                swept += _sweep_piece(raw, layout.RAW_ATTR)
            for epoch, epoch_where in epoch_groups(rank_group, rank_where, strict=False).values():
                for k, piece, _ in epoch_pieces(epoch, epoch_where, strict=False):
                    swept += _sweep_piece(piece, layout.EPOCH_ATTR, skip=layout.CONTINUED_GROUP if k == 0 else None)
    return swept


def _sweep_piece(piece: Group, attr: str, skip: str | None = None) -> int:
    """Delete the chunks of ``piece``'s arrays (not those under the folder ``skip``) beyond what its record
    ``attrs[attr]`` covers; nothing when the record is complete, damaged or names no chunks."""
    record = piece.attrs.get(attr)
    if record is None and attr == layout.RAW_ATTR:  # raw samples stored before their first commit: none committed
        record = {layout.CHUNKS: {}}
    if not isinstance(record, dict) or record.get("complete") is True:
        return 0
    try:
        entries = parse_chunks(record, piece.path)
    except CorruptionError:  # a damaged record is the audit's to report
        return 0
    if entries is None:
        return 0
    swept = 0
    for rel, array in walk_arrays(piece):
        if skip is not None and rel.startswith(f"{skip}/"):
            continue
        entry = entries.get(rel)
        rows = 0 if entry is None else entry.rows
        for c in stored_chunks(array):
            if c * array.chunks[0] >= rows:
                _delete(chunk_path(array, c))
                swept += 1
    return swept


def _delete(where: object) -> None:
    path = local_file(where)
    if path is not None:
        path.unlink(missing_ok=True)
    else:
        _zarr.run(where.store.delete(where.path))  # type: ignore[attr-defined]
