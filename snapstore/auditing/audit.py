"""``audit``: is the DataLoader corrupting my data? ``compare``: has the dataset changed since?

``audit`` reads every chunk of a snapshot once (``scan.py``, in parallel
with Dask) and runs the checks of ``checks.py`` on what the scan reduced the
chunks to; ``compare`` re-reads a live dataset and compares it with the
recorded raw samples by their content hashes. Both return plain report
objects (``report.py``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from ..core.hashing import NO_HASH
from ..errors import StreamNotFoundError, UsageError
from ..read.snapshot import Snapshot
from ..read.snapshot import open as open_snapshot
from ..read.stream import Stream
from .checks import RowSummary, check_carry_through, check_coverage, check_stability, check_values, sampler_expectation
from .report import AuditReport, Finding, plural
from .scan import ArrayScan, Part, ScanResult, epoch_numbers
from .scan import scan as scan_chunks

logger = logging.getLogger(__name__)

_CHECK_ORDER = ("integrity", "completeness", "coverage", "values", "stability", "raw_vs_seen")


def as_snapshot(snapshot: Snapshot | str | os.PathLike[str]) -> Snapshot:
    """A ``Snapshot`` from a ``Snapshot`` or a path."""
    if isinstance(snapshot, Snapshot):
        return snapshot
    if isinstance(snapshot, (str, os.PathLike)):
        return open_snapshot(snapshot)
    raise UsageError(f"expected a Snapshot or the path of one, got {type(snapshot).__name__}")


def audit(snapshot: Snapshot | str | os.PathLike[str], *, streams: str | Iterable[str] | None = None,
          epochs: Iterable[int] | None = None, progress: bool | None = None) -> AuditReport:
    """Check a snapshot for damaged storage and for data a DataLoader should not have produced.

    Parameters
    ----------
    snapshot : Snapshot or str or os.PathLike
    streams : iterable of str, optional
        Streams to audit; default every stream.
    epochs : iterable of int, optional
        Epochs to audit in each chosen stream; default every epoch. Raw
        samples are always audited.
    progress : bool, optional
        A progress bar on stderr; default: when stderr is a terminal.

    Returns
    -------
    AuditReport
        ``ok`` when nothing was found. Findings, by ``check``:

        - ``integrity``: a chunk that fails to decode or its CRC32C, a chunk
          missing for committed rows, a row whose content no longer matches
          the hash recorded when it was written, an unreadable commit record;
        - ``completeness``: an epoch cut short, with the rows it holds;
        - ``coverage``: indices an epoch never saw, or saw more often than its
          sampler explains;
        - ``values``: NaN/Inf, and rows orders of magnitude outside the
          field's own distribution (``checks.outlier_rows``);
        - ``stability``: a field identical across epochs for almost every
          index but not for a few;
        - ``raw_vs_seen``: a field that reaches the batch unchanged from the
          raw sample for almost every index but not for a few.

        ``stats`` holds min/max/mean/std/count per field and epoch.

    Raises
    ------
    UsageError
        An unknown stream, or epochs that no chosen stream has.
    SnapshotNotFoundError, NotASnapshotError, FormatVersionError
        ``snapshot`` is a path that holds no readable snapshot.

    Examples
    --------
    >>> report = snapstore.audit("runs/exp1.snap")  # doctest: +SKIP
    >>> report.ok, [(f.check, f.epoch, f.indices) for f in report.findings]  # doctest: +SKIP
    (False, [('values', 0, (17, 902))])
    """
    snap = as_snapshot(snapshot)
    names = _choose_streams(snap, streams)
    chosen = None if epochs is None else sorted({int(e) for e in epochs})
    scan = scan_chunks(snap, names, chosen, progress=progress)
    if chosen is not None and not scan.epochs and not scan.unreadable:
        have = sorted({e for n in names for e in epoch_numbers(snap, n)})
        raise UsageError(f"no chosen stream has epoch(s) {chosen}; recorded epochs: {have}")
    findings: list[Finding] = []
    stats: dict[str, dict[str, Any]] = {}
    for name in names:
        findings += _StreamAudit(snap[name], scan, stats.setdefault(name, {"raw": {}, "epochs": {}})).run()
    for stream, epoch, field, message in scan.unreadable:
        findings.append(Finding.make("integrity", message, stream=stream, epoch=epoch, field=field))
    findings.sort(key=lambda f: (f.stream or "", -1 if f.epoch is None else f.epoch, _CHECK_ORDER.index(f.check)
                                 if f.check in _CHECK_ORDER else 99, f.field or ""))
    scanned = {
        "streams": len(names),
        "epochs": len(scan.epochs),
        "arrays": len(scan.arrays),
        "chunks": scan.chunks,
        "bytes_stored": scan.bytes_stored,
        "bytes": scan.bytes,
        "seconds": round(scan.seconds, 3),
    }
    return AuditReport(snap.path, findings, stats, scanned)


def _choose_streams(snap: Snapshot, streams: Iterable[str] | None) -> list[str]:
    if streams is None:
        return list(snap.streams)
    names = [streams] if isinstance(streams, str) else list(streams)
    unknown = [n for n in names if n not in snap.streams]
    if unknown:
        raise StreamNotFoundError(f"no stream(s) {unknown} in {snap.path}; streams: {snap.streams}")
    return names


def _fit(a: np.ndarray | None, n: int, fill: Any, dtype: Any) -> np.ndarray:
    """``a`` cut or padded with ``fill`` to ``n`` rows (all ``fill`` when ``a`` is None)."""
    out = np.full(n, fill, dtype=dtype)
    if a is not None:
        m = min(n, len(a))
        out[:m] = a[:m]
    return out


class _StreamAudit:
    """The checks of one stream, fed from the scan.

    An epoch may be recorded in several parts (ranks, continuations after a
    resume); its rows are taken part after part, which is all the checks
    need (they compare by dataset index, never by position).
    """

    def __init__(self, stream: Stream, scan: ScanResult, stats: dict[str, Any]) -> None:
        self.name = stream.name
        self.m = stream.manifest
        self.scan = scan
        self.stats = stats
        self.findings: list[Finding] = []
        self.epochs = sorted(e for (s, e) in scan.epochs if s == self.name)

    def run(self) -> list[Finding]:
        raw_parts = self.scan.parts(self.name, None)
        raw_rows = {p: (s.rows if (s := self.scan.get(self.name, None, p, "raw_index")) else 0) for p in raw_parts}
        raw_idx = self._indices(None, raw_parts, raw_rows)
        raw_hashes = self._fields(None, raw_parts, raw_rows, raw_idx, self.m.raw_fields, "raw", "raw_hashes")
        per_epoch: dict[int, tuple[np.ndarray, dict[str, np.ndarray]]] = {}
        for e in self.epochs:
            parts = self.scan.parts(self.name, e)
            rows = {p: m.rows for p, m in self.scan.epochs[(self.name, e)].items()}
            order = self._epoch(e, parts, rows)
            hashes = self._fields(e, parts, rows, order, self.m.fields, "seen", "seen_hashes")
            self._fields(e, parts, rows, order, self.m.outputs, "outputs", "output_hashes")
            per_epoch[e] = (order, hashes)
        self._integrity()
        self._references(raw_idx, raw_hashes, per_epoch)
        self._across_epochs(raw_idx, raw_hashes, per_epoch)
        return self.findings

    def _add(self, check: str, message: str, **kw: Any) -> None:
        self.findings.append(Finding.make(check, message, stream=self.name, **kw))

    def _indices(self, epoch: int | None, parts: list[Part], rows: dict[Part, int]) -> np.ndarray:
        """Dataset index of each row, part after part (order, or the raw index); -1 where unreadable."""
        role = "order" if epoch is not None else "raw_index"
        pieces = []
        for p in parts:
            s = self.scan.get(self.name, epoch, p, role)
            pieces.append(_fit(s.values if s is not None else None, rows[p], -1, np.int64))
        return np.concatenate(pieces) if pieces else np.empty(0, np.int64)

    def _epoch(self, e: int, parts: list[Part], rows: dict[Part, int]) -> np.ndarray:
        manifests = self.scan.epochs[(self.name, e)]
        last = {}  # the latest part of each rank says whether the epoch ran to its end
        for (rank, k), m in sorted(manifests.items()):
            last[rank] = m
        total, batches = sum(rows.values()), sum(m.batches for m in manifests.values())
        complete = all(m.complete for m in last.values())
        if not complete:
            done = [sum(m.rows for m in ms.values()) for (s, _), ms in self.scan.epochs.items()
                    if s == self.name and all(m.complete for m in ms.values())]
            of = f" (complete epochs of this stream hold {max(done)})" if done else ""
            self._add("completeness", f"epoch {e} is incomplete: it holds {total} rows in {batches} batches{of}; "
                      "a crash, an exception or a break ended it", epoch=e)
        order = self._indices(e, parts, rows)
        readable = all(
            (s := self.scan.get(self.name, e, p, "order")) is not None and bool(s.valid.all()) and s.rows == rows[p]
            for p in parts if rows[p]
        )
        for p in parts:
            if rows[p] and self.scan.get(self.name, e, p, "order") is None:
                self._add("integrity", f"epoch {e} commits {rows[p]} rows (rank {p[0]}, part {p[1]}) but its 'order' "
                          "array is missing", epoch=e)
        if self.m.dataset_len is not None and not self.m.iterable and readable and parts:
            expect = sampler_expectation(manifests[parts[0]].provenance, self.m.dataset_len)
            self.findings += check_coverage(order, self.m.dataset_len, expect, stream=self.name, epoch=e,
                                            complete=complete)
        return order

    def _fields(self, epoch: int | None, parts: list[Part], rows: dict[Part, int], indices: np.ndarray,
                infos: dict, role: str, hash_role: str) -> dict[str, np.ndarray]:
        """Statistics, value checks and the hash cross-check of each field, over all parts; returns content hashes."""
        out = {}
        for name in infos:
            datas = [self.scan.get(self.name, epoch, p, role, name) for p in parts]
            stored = [self.scan.get(self.name, epoch, p, hash_role, name) for p in parts]
            if all(d is None for d in datas) and all(s is None for s in stored):
                continue
            n = [rows[p] for p in parts]
            computed = np.concatenate([_fit(d.hashes if d else None, k, NO_HASH, np.uint64) for d, k in zip(datas, n)])
            valid = np.concatenate([_fit(d.valid if d else None, k, False, bool) for d, k in zip(datas, n)])
            known = np.concatenate([_fit(s.values if s else None, k, NO_HASH, np.uint64) for s, k in zip(stored, n)])
            known_ok = np.concatenate([_fit(s.valid if s else None, k, False, bool) for s, k in zip(stored, n)])
            known[~known_ok] = NO_HASH
            if role == "seen":  # rows stored as their raw sample: checked against it in _references
                valid &= ~self._same(epoch, parts, rows)
            if role != "outputs":
                moments = [d.moments for d in datas if d is not None and d.moments is not None]
                if moments:
                    target = self.stats["raw"] if epoch is None else self.stats["epochs"].setdefault(epoch, {})
                    total = moments[0]
                    for mo in moments[1:]:
                        total = total.merge(mo)
                    target[name] = total.stats()
                if any(d is not None and d.summary is not None for d in datas):
                    summary = RowSummary.concat([d.summary if d is not None and d.summary is not None and d.rows == k
                                                 else RowSummary.unknown(k) for d, k in zip(datas, n)])
                    self.findings += check_values(summary, indices, stream=self.name, epoch=epoch, field=name)
            bad = valid & (known != NO_HASH) & (known != computed)
            if bad.any():
                what = "output" if role == "outputs" else "field"
                self._add("integrity", f"{plural(int(bad.sum()), 'row')} of {what} {name!r} no longer match "
                          "the content hash recorded when they were written: the stored bytes changed after recording",
                          epoch=epoch, field=name, indices=indices[bad])
            out[name] = np.where(valid, computed, known)
        return out

    def _same(self, epoch: int | None, parts: list[Part], rows: dict[Part, int]) -> np.ndarray:
        """Which rows of an epoch are stored as their raw sample (``layout.SEEN_RAW``), part after part."""
        pieces = [np.zeros(0, bool)]
        for p in parts:
            s = self.scan.get(self.name, epoch, p, "seen_raw")
            pieces.append(_fit(s.values if s is not None else None, rows[p], 0, np.int64).astype(bool))
        return np.concatenate(pieces)

    def _references(self, raw_idx: np.ndarray, raw_hashes: dict[str, np.ndarray],
                    per_epoch: dict[int, tuple[np.ndarray, dict[str, np.ndarray]]]) -> None:
        """A seen row stored as its raw sample must have been recorded with the raw sample's content hash in every
        field: the reference is then as sound as the raw chunks (verified by their own hashes)."""
        keep = raw_idx >= 0
        unique, first = np.unique(raw_idx[keep], return_index=True)  # a sample recorded by several ranks: its first
        for e, (order, hashes) in sorted(per_epoch.items()):
            parts = self.scan.parts(self.name, e)
            same = self._same(e, parts, {p: m.rows for p, m in self.scan.epochs[(self.name, e)].items()})
            if not same.any():
                continue
            same &= order >= 0  # (an unreadable order is reported on its own)
            at = np.minimum(np.searchsorted(unique, order[same]), max(len(unique) - 1, 0))
            bad = ~(unique[at] == order[same]) if len(unique) else np.ones(int(same.sum()), bool)
            for name in self.m.fields:
                if name in hashes and name in raw_hashes and len(unique):
                    seen_h, raw_h = hashes[name][same], raw_hashes[name][keep][first][at]
                    bad |= (seen_h != raw_h) & (seen_h != NO_HASH) & (raw_h != NO_HASH)  # unreadable: reported
            if bad.any():
                self._add("integrity", f"{plural(int(bad.sum()), 'seen row')} of epoch {e} are stored as their raw "
                          "sample, but the raw sample of their index is missing or was recorded with another content "
                          "hash", epoch=e, indices=order[same][bad])

    def _integrity(self) -> None:
        for (stream, epoch, part, role, name), s in self.scan.arrays.items():
            if stream != self.name or not (s.errors or s.missing):
                continue
            field = name if role in ("seen", "raw", "seen_hashes", "raw_hashes") else None
            if role in ("ragged", "ragged_rows") and name:
                field = name.rpartition("/")[0]  # <field>/values|offsets|shapes
            for c, message in sorted(s.errors.items()):
                self._add("integrity", f"array {s.path!r} chunk {c} ({self._rows(s, c)}) fails to decode or fails its "
                          f"checksum ({message}); restore the file from a copy",
                          epoch=epoch, field=field, indices=self._chunk_indices(s, epoch, part, c))
            for c in s.missing:
                self._add("integrity", f"array {s.path!r} chunk {c} ({self._rows(s, c)}) is missing from the store "
                          "although its rows were committed; the file was deleted or never reached the disk",
                          epoch=epoch, field=field, indices=self._chunk_indices(s, epoch, part, c))

    @staticmethod
    def _rows(s: ArrayScan, c: int) -> str:
        lo, hi = c * s.chunk_rows, (c + 1) * s.chunk_rows
        if lo >= s.rows:
            return f"uncommitted rows {lo}-{hi - 1}"
        return f"rows {lo}-{min(hi, s.rows) - 1}"

    def _chunk_indices(self, s: ArrayScan, epoch: int | None, part: Part, c: int) -> np.ndarray:
        role = s.target.role
        if role in ("order", "raw_index", "ragged", "other"):
            return np.empty(0, np.int64)
        lo, hi = c * s.chunk_rows, min((c + 1) * s.chunk_rows, s.rows)
        if role == "batch_sizes":
            offsets = np.concatenate([[0], np.cumsum(s.values)]).astype(np.int64)
            lo, hi = int(offsets[min(lo, len(offsets) - 1)]), int(offsets[min(hi, len(offsets) - 1)])
        own = self.scan.get(self.name, epoch, part, "order" if epoch is not None else "raw_index")
        if own is None:
            return np.empty(0, np.int64)
        idx = own.values.astype(np.int64)[lo:hi]
        return idx[idx >= 0]

    def _across_epochs(self, raw_idx: np.ndarray, raw_hashes: dict[str, np.ndarray],
                       per_epoch: dict[int, tuple[np.ndarray, dict[str, np.ndarray]]]) -> None:
        n = self.m.dataset_len
        if n is None or self.m.iterable:
            n = 1 + max((int(o.max()) for o, _ in per_epoch.values() if len(o)), default=-1)
        keep = raw_idx >= 0
        unique, first = np.unique(raw_idx[keep], return_index=True)  # a sample recorded by several ranks: its first
        raw_sorted = (unique, {f: h[keep][first] for f, h in raw_hashes.items()})
        for name, info in self.m.fields.items():
            runs = []
            for e, (order, hashes) in sorted(per_epoch.items()):
                if name in hashes:
                    h = hashes[name]
                    ok = (order >= 0) & (h != NO_HASH)
                    runs.append((e, order[ok], h[ok]))
            self.findings += check_stability(runs, stream=self.name, field=name, dataset_len=max(n, 0))
            raw_info = self.m.raw_fields.get(name)
            if (raw_info is not None and name in raw_sorted[1]
                    and (raw_info.dtype, raw_info.shape) == (info.dtype, info.shape)):
                self.findings += check_carry_through(raw_sorted[0], raw_sorted[1][name], runs, stream=self.name,
                                                     field=name)
