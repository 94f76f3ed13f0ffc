"""Committed rows read in chunk-aligned blocks, in export order: what every export iterates.

Every read goes through the segments' readers (``storage.ChunkReader``,
``storage.RaggedReader``, ``storage.Cursor``), which decode each chunk
through ``storage.read_chunk``: one decode path, one missing-chunk rule.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .. import config, storage
from ..core.rows import Rows, join
from .plan import RowPlan, block_rows, gather, ragged_block_rows, row_bytes

__all__ = ["blocks", "row_blocks"]


def blocks(reader: storage.ChunkReader, rows: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(start, stop, rows)`` for consecutive chunk-aligned blocks of the first ``rows`` rows, read ahead.

    The blocks are read-only views of decoded chunks when a chunk holds them: copy before changing them.
    """
    step = block_rows(reader) if rows else 1
    cursor = storage.Cursor(reader.array, rows, reader.expect)
    for lo in range(0, rows, step):
        hi = min(lo + step, rows)
        yield lo, hi, cursor.take(lo, hi)


def row_blocks(plan: RowPlan, paths: list[str]) -> Iterator[dict[str, Rows]]:
    """Consecutive blocks of rows in export order, ``{path: rows}`` aligned across fields.

    Fixed fields come as ``(n, *shape)`` arrays, ragged ones as lists of
    arrays. When every segment is exported in stored order (seen rows, raw
    rows captured in index order), rows stream through per-segment cursors;
    otherwise (raw samples captured out of index order) they are gathered
    window by window (``config.DEFAULT_GATHER_BYTES`` of rows), each window
    decoding every chunk that holds one of its rows.
    """
    if not paths or not plan.rows:
        return
    ragged = {p for p in paths if plan.is_ragged(p)}
    if plan.sequential:
        yield from _streamed(plan, paths, ragged)
        return
    window = max(1, config.DEFAULT_GATHER_BYTES // sum(row_bytes(plan, p, p in ragged) for p in paths))
    for lo in range(0, plan.rows, window):
        yield gather(plan, paths, np.arange(lo, min(lo + window, plan.rows)))


def _streamed(plan: RowPlan, paths: list[str], ragged: set[str]) -> Iterator[dict[str, Rows]]:
    live = np.unique(plan.segment_of).tolist()  # the segments read (an epoch's rows may all be raw rows)
    steps = [block_rows(plan.segments[k].fixed(p)) for k in live for p in paths if p not in ragged]
    steps += [ragged_block_rows(plan.infos[p], plan.segments[k].ragged(p).shapes)
              for k in live for p in paths if p in ragged]
    step = min(steps)
    cursors = {(k, p): storage.Cursor(plan.segments[k].fixed(p).array, plan.segments[k].rows,
                                         plan.segments[k].fixed(p).expect)
               for k in live for p in paths if p not in ragged}
    readers = {(k, p): plan.segments[k].ragged(p) for k in live for p in paths if p in ragged}
    # runs: maximal stretches of export positions stored consecutively in one segment
    breaks = np.nonzero((np.diff(plan.segment_of) != 0) | (np.diff(plan.local_of) != 1))[0] + 1
    starts = np.concatenate([[0], breaks]).astype(np.int64)
    ends = np.concatenate([breaks, [plan.rows]]).astype(np.int64)
    for lo in range(0, plan.rows, step):
        hi = min(lo + step, plan.rows)
        first = int(np.searchsorted(ends, lo, side="right"))
        pieces: dict[str, list[Rows]] = {p: [] for p in paths}
        for r in range(first, len(starts)):
            a, b = max(lo, int(starts[r])), min(hi, int(ends[r]))
            if a >= b:
                break
            k, local = int(plan.segment_of[a]), int(plan.local_of[a])
            for p in paths:
                if p in ragged:
                    pieces[p].append(readers[k, p].read(local, local + b - a))
                else:
                    pieces[p].append(cursors[k, p].take(local, local + b - a))
        yield {p: join(pieces[p]) for p in paths}
