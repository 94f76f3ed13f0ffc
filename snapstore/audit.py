"""``audit``: is the DataLoader corrupting my data? ``compare``: has the dataset changed since?

``audit`` reads every chunk of a snapshot once (``_scan.py``, in parallel
with Dask) and runs the checks of ``checks.py`` on what the scan reduced the
chunks to; ``compare`` re-reads a live dataset and compares it with the
recorded raw samples by their content hashes. Both return plain report
objects (``report.py``).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable
from typing import Any

import numpy as np
from tqdm import tqdm

from . import _scan
from .capture import raw_source
from .checks import check_carry_through, check_coverage, check_stability, check_values, sampler_expectation
from .errors import SnapstoreError, UsageError
from .hashing import NO_HASH, row_hashes
from .reader import Snapshot, Stream
from .reader import open as open_snapshot
from .report import AuditReport, CompareReport, Finding, plural
from .schema import flatten

logger = logging.getLogger(__name__)

__all__ = ["audit", "compare"]

_CHECK_ORDER = ("integrity", "completeness", "coverage", "values", "stability", "raw_vs_seen")


def as_snapshot(snapshot: Any) -> Snapshot:
    """A ``Snapshot`` from a ``Snapshot`` or a path."""
    if isinstance(snapshot, Snapshot):
        return snapshot
    if isinstance(snapshot, (str, os.PathLike)):
        return open_snapshot(snapshot)
    raise UsageError(f"expected a Snapshot or the path of one, got {type(snapshot).__name__}")


def audit(snapshot: Any, *, streams: Iterable[str] | None = None, epochs: Iterable[int] | None = None,
          progress: bool | None = None) -> AuditReport:
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
    scan = _scan.scan(snap, names, chosen, progress=progress)
    if chosen is not None and not scan.epochs and not scan.unreadable:
        have = sorted({e for n in names for e in _scan.epoch_numbers(snap, n)})
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
        raise UsageError(f"no stream(s) {unknown} in {snap.path}; streams: {snap.streams}")
    return names


class _StreamAudit:
    """The checks of one stream, fed from the scan."""

    def __init__(self, stream: Stream, scan: _scan.ScanResult, stats: dict[str, Any]) -> None:
        self.stream = stream
        self.name = stream.name
        self.m = stream.manifest
        self.scan = scan
        self.stats = stats
        self.findings: list[Finding] = []
        self.epochs = sorted(e for (s, e) in scan.epochs if s == self.name)

    def run(self) -> list[Finding]:
        raw_idx = self._indices(None)
        raw_hashes = self._fields(None, raw_idx, self.m.raw_fields, "raw", "raw_hashes")
        per_epoch: dict[int, tuple[np.ndarray, dict[str, np.ndarray]]] = {}
        for e in self.epochs:
            order = self._epoch(e)
            hashes = self._fields(e, order, self.m.fields, "seen", "seen_hashes")
            self._fields(e, order, self.m.outputs, "outputs", "output_hashes")
            if order is not None:
                per_epoch[e] = (order, hashes)
        self._integrity()
        self._across_epochs(raw_idx, raw_hashes, per_epoch)
        return self.findings

    def _add(self, check: str, message: str, **kw: Any) -> None:
        self.findings.append(Finding.make(check, message, stream=self.name, **kw))

    def _indices(self, epoch: int | None) -> np.ndarray | None:
        """Dataset index of each row (order, or the raw index), -1 where unreadable; None if absent."""
        s = self.scan.get(self.name, epoch, "order" if epoch is not None else "raw_index")
        return None if s is None else s.values.astype(np.int64)

    def _epoch(self, e: int) -> np.ndarray | None:
        em = self.scan.epochs[(self.name, e)]
        if not em.complete:
            complete = [m.rows for (s, _), m in self.scan.epochs.items() if s == self.name and m.complete]
            of = f" (complete epochs of this stream hold {max(complete)})" if complete else ""
            self._add("completeness", f"epoch {e} is incomplete: it holds {em.rows} rows in {em.batches} batches{of}; "
                      "a crash, an exception or a break ended it", epoch=e)
        order_scan = self.scan.get(self.name, e, "order")
        if order_scan is None:
            if em.rows:
                self._add("integrity", f"epoch {e} commits {em.rows} rows but its 'order' array is missing", epoch=e)
            return None if em.rows else np.empty(0, np.int64)
        order = order_scan.values.astype(np.int64)
        if self.m.dataset_len is not None and not self.m.iterable and order_scan.valid.all():
            expect = sampler_expectation(em.provenance, self.m.dataset_len)
            self.findings += check_coverage(order, self.m.dataset_len, expect, stream=self.name, epoch=e,
                                            complete=em.complete)
        return order

    def _fields(self, epoch: int | None, indices: np.ndarray | None, infos: dict, role: str,
                hash_role: str) -> dict[str, np.ndarray]:
        """Statistics, value checks and the hash cross-check of each field; returns its content hashes."""
        out = {}
        for name in infos:
            data = self.scan.get(self.name, epoch, role, name)
            stored = self.scan.get(self.name, epoch, hash_role, name)
            if data is None:
                continue
            idx = indices if indices is not None and len(indices) == data.rows else np.full(data.rows, -1, np.int64)
            if role != "outputs":
                if data.moments is not None:
                    target = self.stats["raw"] if epoch is None else self.stats["epochs"].setdefault(epoch, {})
                    target[name] = data.moments.stats()
                if data.summary is not None:
                    self.findings += check_values(data.summary, idx, stream=self.name, epoch=epoch, field=name)
            hashes = data.hashes.copy()
            if stored is not None and stored.rows == data.rows:
                known = stored.valid & (stored.values != NO_HASH)
                bad = known & data.valid & (stored.values != data.hashes)
                if bad.any():
                    what = "output" if role == "outputs" else "field"
                    self._add("integrity", f"{plural(int(bad.sum()), 'row')} of {what} {name!r} no longer match the content hash "
                              "recorded when they were written: the stored bytes changed after recording",
                              epoch=epoch, field=name, indices=idx[bad])
                hashes = np.where(known & ~data.valid, stored.values, hashes)
            out[name] = hashes
        return out

    def _integrity(self) -> None:
        for (stream, epoch, role, name), s in self.scan.arrays.items():
            if stream != self.name or not (s.errors or s.missing):
                continue
            field = name if role in ("seen", "raw", "seen_hashes", "raw_hashes") else None
            for c, message in sorted(s.errors.items()):
                self._add("integrity", f"array {s.path!r} chunk {c} ({self._rows(s, c)}) fails to decode or fails its "
                          f"checksum ({message}); restore the file from a copy",
                          epoch=epoch, field=field, indices=self._chunk_indices(s, epoch, c))
            for c in s.missing:
                self._add("integrity", f"array {s.path!r} chunk {c} ({self._rows(s, c)}) is missing from the store "
                          "although its rows were committed; the file was deleted or never reached the disk",
                          epoch=epoch, field=field, indices=self._chunk_indices(s, epoch, c))

    @staticmethod
    def _rows(s: _scan.ArrayScan, c: int) -> str:
        lo, hi = c * s.chunk_rows, (c + 1) * s.chunk_rows
        if lo >= s.rows:
            return f"uncommitted rows {lo}-{hi - 1}"
        return f"rows {lo}-{min(hi, s.rows) - 1}"

    def _chunk_indices(self, s: _scan.ArrayScan, epoch: int | None, c: int) -> np.ndarray:
        role = s.target.role
        if role in ("order", "raw_index"):
            return np.empty(0, np.int64)
        lo, hi = c * s.chunk_rows, min((c + 1) * s.chunk_rows, s.rows)
        if role == "batch_sizes":
            sizes = s.values
            offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
            lo, hi = int(offsets[min(lo, len(offsets) - 1)]), int(offsets[min(hi, len(offsets) - 1)])
        idx = self._indices(epoch)
        if idx is None:
            return np.empty(0, np.int64)
        idx = idx[lo:hi]
        return idx[idx >= 0]

    def _across_epochs(self, raw_idx: np.ndarray | None, raw_hashes: dict[str, np.ndarray],
                       per_epoch: dict[int, tuple[np.ndarray, dict[str, np.ndarray]]]) -> None:
        n = self.m.dataset_len
        if n is None or self.m.iterable:
            n = 1 + max((int(o.max()) for o, _ in per_epoch.values() if len(o)), default=-1)
        raw_sorted = None
        if raw_idx is not None:
            keep = raw_idx >= 0
            order = np.argsort(raw_idx[keep], kind="stable")
            raw_sorted = (raw_idx[keep][order], {f: h[keep][order] for f, h in raw_hashes.items()})
        for name, info in self.m.fields.items():
            runs = []
            for e, (order, hashes) in sorted(per_epoch.items()):
                if name in hashes:
                    h = hashes[name]
                    ok = (order >= 0) & (h != NO_HASH)
                    runs.append((e, order[ok], h[ok]))
            self.findings += check_stability(runs, stream=self.name, field=name, dataset_len=max(n, 0))
            raw_info = self.m.raw_fields.get(name)
            if raw_sorted is not None and raw_info is not None and name in raw_sorted[1] \
                    and (raw_info.dtype, raw_info.shape) == (info.dtype, info.shape):
                self.findings += check_carry_through(raw_sorted[0], raw_sorted[1][name], runs,
                                                     stream=self.name, field=name)


def compare(stream: Stream, dataset: Any, *, progress: bool | None = None) -> CompareReport:
    """Which recorded raw samples differ from a live dataset today (drift, files changed on disk).

    Each raw sample recorded in ``stream`` is fetched again from ``dataset``
    (with torchvision-style transforms disabled, as the recorder did with
    ``raw="auto"``), flattened like the recording, and compared with the
    recorded one through its content hash; the stored samples are read only
    to measure how large a difference is.

    Parameters
    ----------
    stream : Stream
        A recorded stream holding raw samples.
    dataset : torch.utils.data.Dataset
        A map-style dataset (anything with ``__getitem__``), e.g. the
        training dataset built again today.
    progress : bool, optional
        A tqdm bar on stderr; default: when stderr is a terminal.

    Returns
    -------
    CompareReport
        ``ok`` when every sample is bitwise equal; otherwise ``drift``
        findings per field with the differing indices, and for indices the
        dataset no longer has, a changed length or a changed sample structure.

    Raises
    ------
    UsageError
        ``stream`` is not a Stream, holds no raw samples, or records an
        iterable dataset.
    """
    if not isinstance(stream, Stream):
        raise UsageError(f"compare() takes a Stream (snapshot['train']), got {type(stream).__name__}")
    m = stream.manifest
    if m.iterable:
        raise UsageError(f"stream {stream.name!r} recorded an IterableDataset; compare() needs a map-style dataset")
    raw = stream.raw
    indices = raw.indices
    if not len(indices):
        raise UsageError(f"stream {stream.name!r} holds no raw samples (recorded with raw=None); nothing to compare")
    fetch, _ = raw_source("auto", dataset)
    stored = {f: raw.hashes(f) for f in m.raw_fields}
    try:
        live_len: int | None = len(dataset)
    except TypeError:
        live_len = None
    report = CompareReport(stream.name)
    if live_len is not None and m.dataset_len is not None and live_len != m.dataset_len:
        report.findings.append(Finding.make(
            "drift", f"the live dataset holds {live_len} samples; the recording's held {m.dataset_len}", stream=stream.name))
    differ: dict[str, list[int]] = {f: [] for f in m.raw_fields}
    largest: dict[str, float] = {}
    gone, reshaped = [], []
    show = sys.stderr.isatty() if progress is None else progress
    for k, i in enumerate(tqdm(indices.tolist(), desc=f"compare {stream.name}", unit="sample", disable=not show,
                               file=sys.stderr)):
        if live_len is not None and i >= live_len:
            gone.append(i)
            continue
        try:
            sample = fetch(i) if fetch is not None else dataset[i]
        except (IndexError, KeyError):
            gone.append(i)
            continue
        try:
            structure, fields = flatten(sample, None)
        except SnapstoreError:
            reshaped.append(i)
            continue
        if structure != m.raw_structure or {p: f for p, (f, _) in fields.items()} != m.raw_fields:
            reshaped.append(i)
            continue
        for p, (info, rows) in fields.items():
            if row_hashes(rows)[0] != stored[p][k]:
                differ[p].append(i)
                if rows.dtype.kind in "iufb" and info.dtype != "bfloat16":
                    recorded = raw.gather(p, [i])
                    gap = float(np.max(np.abs(rows.astype(np.float64) - recorded.astype(np.float64)), initial=0.0))
                    largest[p] = max(largest.get(p, 0.0), gap)
    report.compared = len(indices)
    for p, idx in differ.items():
        if idx:
            size = f"; largest absolute difference {largest[p]:.4g}" if p in largest else ""
            report.findings.append(Finding.make(
                "drift", f"{len(idx)} of {len(indices)} raw samples differ from the live dataset{size}",
                stream=stream.name, field=p, indices=idx))
    if gone:
        report.findings.append(Finding.make(
            "drift", f"{len(gone)} recorded indices are no longer in the live dataset", stream=stream.name, indices=gone))
    if reshaped:
        report.findings.append(Finding.make(
            "drift", f"{len(reshaped)} live samples no longer have the recorded structure, dtypes or shapes",
            stream=stream.name, indices=reshaped))
    return report
