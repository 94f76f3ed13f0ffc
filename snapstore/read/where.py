"""Where a dataset index was seen: each epoch piece's inverse index (``where/``), read from its group.

``Stream.where`` asks every epoch of every rank. It lists each rank's epochs
once and then reads, per piece, the commit record its listing already
loaded, its batch sizes and a chunk or two of ``where/offsets`` and
``where/positions``: O(epochs) small reads, no recursive listing of the
epoch's arrays and no order.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from .. import storage
from ..core import layout
from ..core.manifest import EpochManifest
from ..core.merkle import Coverage, parse_chunks
from ..errors import CorruptionError
from ..storage.tree import epoch_groups, epoch_pieces


class SeenAt(NamedTuple):
    """Where a dataset index was seen: ``epoch``, the ``rank`` that saw it, the epoch's ``batch`` and
    ``position`` (``stream.epoch(epoch)[position]``, ``.batch(batch)``)."""

    epoch: int
    rank: int
    batch: int
    position: int


def _array(group: Any, name: str, what: str, n: int, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Entries ``start:stop`` (default: all ``n`` committed) of integer array ``name`` of ``group``."""
    stop = n if stop is None else stop
    if stop <= start:
        return np.empty(0, dtype=np.int64)
    array = storage.child(group, name)
    if not isinstance(array, storage.Array):
        raise CorruptionError.damaged(f"{what}/{name}: array {name!r} is missing")
    if array.dtype.kind not in "iu":
        raise CorruptionError.damaged(f"{what}/{name}: dtype {array.dtype}, where snapstore writes integers")
    coverage = Coverage(parse_chunks(group.attrs.get(layout.EPOCH_ATTR), what), group.path, what)
    return storage.ChunkReader(array, what, rows=n, row_shape=(),
                               expect=coverage.of(array.path)).read(start, stop).astype(np.int64)


def piece_positions(group: Any, what: str, manifest: EpochManifest, index: int) -> np.ndarray:
    """Positions of one epoch piece (int64, ascending) where dataset ``index`` was seen: from the inverse
    index, or by scanning ``order`` for a piece without one (cut short, or written before inverse indexes
    existed). ``CorruptionError`` if the index points outside the piece's committed rows."""
    rows = manifest.rows
    if not rows:
        return np.empty(0, dtype=np.int64)
    if not manifest.where:
        return np.flatnonzero(_array(group, layout.ORDER, what, rows) == index)
    offsets = storage.child(group, layout.WHERE_OFFSETS)
    if not isinstance(offsets, storage.Array):
        raise CorruptionError.damaged(f"{what}/{layout.WHERE_OFFSETS}: array is missing")
    coverage = Coverage(parse_chunks(group.attrs.get(layout.EPOCH_ATTR), what), group.path, what).of(offsets.path)
    n = offsets.shape[0] if coverage is None else coverage.rows  # the record's length, not the metadata's
    if not 0 <= index < n - 1:
        return np.empty(0, dtype=np.int64)
    lo, hi = _array(group, layout.WHERE_OFFSETS, what, n, index, index + 2).tolist()
    if lo < 0 or hi < lo or hi > rows:
        raise CorruptionError.damaged(f"{what}/{layout.WHERE_OFFSETS}: the inverse index points outside the "
                                      f"epoch's {rows} rows")
    found = _array(group, layout.WHERE_POSITIONS, what, rows, lo, hi)
    if ((found < 0) | (found >= rows)).any():
        raise CorruptionError.damaged(f"{what}/{layout.WHERE_POSITIONS}: the inverse index points outside the "
                                      f"epoch's {rows} rows")
    return found


def _pieces(group: Any, what: str, number: int) -> list[tuple[Any, str, EpochManifest]]:
    """``(group, where, commit record)`` of each piece of an epoch (``epoch_pieces``), without listing the
    epoch's group when its own record says it is complete: only an epoch cut short is continued."""
    m = EpochManifest.from_dict(group.attrs.get(layout.EPOCH_ATTR), where=what, number=number, part=0)
    if m.complete:
        return [(group, what, m)]
    return [(g, w, EpochManifest.from_dict(g.attrs.get(layout.EPOCH_ATTR), where=w, number=number, part=k))
            for k, g, w in epoch_pieces(group, what)]


def _batch_sizes(group: Any, what: str, m: EpochManifest) -> np.ndarray:
    """Rows of each committed batch of a piece; ``CorruptionError`` unless they add up to its rows."""
    sizes = _array(group, layout.BATCH_SIZES, what, m.batches)
    if (sizes < 0).any() or int(sizes.sum()) != m.rows:
        raise CorruptionError.damaged(f"{what}: its {len(sizes)} batch sizes add up to {int(sizes.sum())} rows, "
                                      f"but the commit record says {m.rows}")
    return sizes


def seen_at(ranks: list[tuple[Any, str]], index: int) -> list[SeenAt]:
    """Every (epoch, rank, batch, position) at which dataset ``index`` was seen in the stream whose rank
    groups and paths are ``ranks``, positions and batches counted with the ranks interleaved as ``Epoch``
    counts them (step ``j`` holds batch ``j`` of every rank that has one, in rank order). Batch sizes are
    read only for the epochs where ``index`` was seen."""
    listed = [epoch_groups(g, where) for g, where in ranks]
    found: list[SeenAt] = []
    for e in sorted({e for epochs in listed for e in epochs}):
        pieces = [_pieces(*epochs[e], e) if e in epochs else [] for epochs in listed]  # per rank
        hits = [[piece_positions(g, w, m, index) for g, w, m in mine] for mine in pieces]
        if not any(len(h) for mine in hits for h in mine):
            continue
        sizes = [[_batch_sizes(g, w, m) for g, w, m in mine] for mine in pieces]
        counts = np.array([sum(len(s) for s in mine) for mine in sizes])  # batches of each rank
        per_rank = [np.concatenate(mine) if mine else np.empty(0, np.int64) for mine in sizes]
        starts = [np.concatenate([[0], np.cumsum(s)]) for s in per_rank]  # rows before each batch of a rank
        in_epoch = []
        for r, (mine, my_sizes) in enumerate(zip(hits, sizes)):
            before = 0  # batches of rank r's earlier pieces
            for positions, piece_sizes in zip(mine, my_sizes):
                ends = np.cumsum(piece_sizes)
                local = np.searchsorted(ends, positions, side="right")
                for b, o in zip((before + local).tolist(), (positions - ends[local] + piece_sizes[local]).tolist()):
                    # step b: batch b of every rank that has one; rank r's comes after those of lower ranks
                    earlier = np.flatnonzero((counts > b) & (np.arange(len(counts)) < r))
                    position = (sum(int(st[min(b, n)]) for st, n in zip(starts, counts.tolist()))
                                + sum(int(per_rank[q][b]) for q in earlier) + o)
                    in_epoch.append(SeenAt(e, r, int(np.minimum(counts, b).sum()) + len(earlier), position))
                before += len(piece_sizes)
        found += sorted(in_epoch, key=lambda s: s.position)
    return found
