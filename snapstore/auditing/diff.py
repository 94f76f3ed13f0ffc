"""``diff``: did two runs see the same data in the same order, and where did they diverge?

Two snapshots, streams or epochs are compared through what is cheap first:
the ``order`` arrays and the per-row content hashes (8 bytes a row). Rows
are read only to measure a difference the hashes found (the largest
absolute difference of a numeric field, within ``config.DIFF_LOCATE_BYTES``
per field and epoch).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np
from tqdm import tqdm

from .. import config
from ..core.manifest import FieldInfo, numpy_dtype
from ..errors import NotStoredError, UsageError
from ..read.epoch import Epoch
from ..read.snapshot import Snapshot
from ..read.stream import Stream
from .audit import as_snapshot
from .checks import numeric_view
from .report import DiffReport, Divergence, Finding

__all__ = ["diff"]

Recording = Snapshot | Stream | Epoch | str | os.PathLike[str]
"""What ``diff`` compares: two of one kind; a path opens a snapshot."""


def _describe(x: Snapshot | Stream | Epoch) -> str:
    if isinstance(x, Epoch):
        return f"{x.stream.path} epoch {x.number}"
    return x.path


def diff(a: Recording, b: Recording, *, progress: bool | None = None) -> DiffReport:
    """Compare two recordings: snapshots, streams or epochs.

    Parameters
    ----------
    a, b : Snapshot, Stream, Epoch, str or os.PathLike
        Both of the same kind; a path opens a snapshot.
    progress : bool, optional
        A tqdm bar on stderr counting the epochs compared; default: when stderr is a terminal.

    Returns
    -------
    DiffReport
        ``identical`` when both saw the same indices in the same order with
        bitwise-equal seen values, outputs and raw samples;
        ``first_divergence`` is the earliest epoch, batch and position where
        they differ (epochs first, then streams by name, then positions) and
        the field there (``"index"`` when the dataset index itself differs);
        ``findings`` (``check`` in ``streams``, ``epochs``, ``schema``,
        ``order``, ``length``, ``batches``, ``seen``, ``outputs``, ``raw``)
        say how much differs, with the dataset indices involved and, for
        numeric fields, the largest absolute difference.

    Raises
    ------
    UsageError
        ``a`` and ``b`` are of different kinds, or not recordings.

    Examples
    --------
    >>> report = snapstore.diff("runs/seed0.snap", "runs/seed1.snap")  # doctest: +SKIP
    >>> report.first_divergence  # doctest: +SKIP
    Divergence(stream='train', epoch=0, batch=0, position=0, field='index', ...)
    """
    ra, rb = _resolve(a), _resolve(b)
    d = _Differ(sys.stderr.isatty() if progress is None else progress)
    if isinstance(ra, Snapshot) and isinstance(rb, Snapshot):
        d.snapshots(ra, rb)
    elif isinstance(ra, Stream) and isinstance(rb, Stream):
        d.streams(ra, rb)
    elif isinstance(ra, Epoch) and isinstance(rb, Epoch):
        d.epochs(ra.stream.name, ra, rb, _common(ra.stream.manifest.fields, rb.stream.manifest.fields),
                 _common(ra.stream.manifest.outputs, rb.stream.manifest.outputs))
    else:
        raise UsageError(f"diff() compares two recordings of one kind; got a {type(ra).__name__} "
                         f"and a {type(rb).__name__}")
    if d.bar is not None:
        d.bar.close()
    first = min(d.divergences, key=lambda t: t[0])[1] if d.divergences else None
    return DiffReport(_describe(ra), _describe(rb), d.findings, first, {"epochs": d.n_epochs, "rows": d.n_rows})


def _resolve(x: Any) -> Snapshot | Stream | Epoch:
    if isinstance(x, (Snapshot, Stream, Epoch)):
        return x
    if isinstance(x, (str, os.PathLike)):
        return as_snapshot(x)
    raise UsageError(f"diff() takes Snapshots, Streams, Epochs or snapshot paths, got {type(x).__name__}")


def _common(fa: dict[str, FieldInfo], fb: dict[str, FieldInfo]) -> list[str]:
    return [p for p in fa if fb.get(p) == fa[p]]


class _Differ:
    def __init__(self, progress: bool) -> None:
        self.progress = progress
        self.bar: Any = None  # tqdm, counting the epochs compared, from start()
        self.findings: list[Finding] = []
        self.divergences: list[tuple[tuple, Divergence]] = []
        self.n_epochs = 0
        self.n_rows = 0

    def start(self, total: int) -> None:
        """Show the progress bar: ``total`` epochs to compare (the outermost call's count)."""
        if self.bar is None:
            self.bar = tqdm(total=total, desc="diff", unit="epoch", disable=not self.progress, file=sys.stderr)

    def _diverge(self, stream: str, epoch: int | None, batch: int | None, position: int | None, field: str | None,
                 check: str, message: str) -> None:
        key = (-1 if epoch is None else epoch, stream, -1 if position is None else position)
        self.divergences.append((key, Divergence(stream, epoch, batch, position, field, check, message)))

    def snapshots(self, a: Snapshot, b: Snapshot) -> None:
        for name in sorted(set(a.streams) ^ set(b.streams)):
            side = "a" if name in a.streams else "b"
            self.findings.append(Finding.make("streams", f"stream {name!r} is recorded only in {side}", stream=name))
            self._diverge(name, None, None, None, None, "streams", f"stream {name!r} is recorded only in {side}")
        pairs = [(a[name], b[name]) for name in sorted(set(a.streams) & set(b.streams))]
        self.start(sum(len(set(x.epochs) & set(y.epochs)) for x, y in pairs))
        for x, y in pairs:
            self.streams(x, y)

    def streams(self, a: Stream, b: Stream) -> None:
        name = a.name
        ma, mb = a.manifest, b.manifest
        for what, fa, fb in (("field", ma.fields, mb.fields), ("raw field", ma.raw_fields, mb.raw_fields),
                             ("output", ma.outputs, mb.outputs)):
            for p in sorted(set(fa) | set(fb)):
                if fa.get(p) != fb.get(p):
                    self.findings.append(Finding.make(
                        "schema", f"{what} {p!r} is {_info(fa.get(p))} in a and {_info(fb.get(p))} in b",
                        stream=name, field=p))
        self._raw(a, b)
        epochs_a, epochs_b = set(a.epochs), set(b.epochs)
        self.start(len(epochs_a & epochs_b))
        for e in sorted(epochs_a ^ epochs_b):
            side = "a" if e in epochs_a else "b"
            self.findings.append(Finding.make("epochs", f"epoch {e} is recorded only in {side}", stream=name, epoch=e))
            self._diverge(name, e, None, None, None, "epochs", f"epoch {e} is recorded only in {side}")
        fields, outputs = _common(ma.fields, mb.fields), _common(ma.outputs, mb.outputs)
        for e in sorted(epochs_a & epochs_b):
            self.epochs(name, a.epoch(e), b.epoch(e), fields, outputs)

    def _raw(self, a: Stream, b: Stream) -> None:
        ia, ib = a.raw.indices, b.raw.indices
        only = np.setxor1d(ia, ib)
        if len(only):
            self.findings.append(Finding.make(
                "raw", f"{len(only)} indices have a raw sample in only one of a and b", stream=a.name, indices=only))
        common, at_a, at_b = np.intersect1d(ia, ib, assume_unique=True, return_indices=True)
        if not len(common):
            return
        for p in _common(a.manifest.raw_fields, b.manifest.raw_fields):
            differ = a.raw.hashes(p)[at_a] != b.raw.hashes(p)[at_b]
            if differ.any():
                idx = common[differ]
                gap = _gap(a.manifest.raw_fields[p], lambda s, p=p, idx=idx: a.raw.gather(p, idx[s]),
                           lambda s, p=p, idx=idx: b.raw.gather(p, idx[s]), len(idx))
                self.findings.append(Finding.make(
                    "raw", f"{len(idx)} of {len(common)} raw samples differ{gap}", stream=a.name, field=p, indices=idx))

    def epochs(self, name: str, a: Epoch, b: Epoch, fields: list[str], outputs: list[str]) -> None:
        e = a.number
        self.start(1)
        self.n_epochs += 1
        oa, ob = a.order, b.order
        n = min(len(oa), len(ob))
        self.n_rows += n
        offsets = np.concatenate([[0], np.cumsum(a.batch_sizes)]).astype(np.int64)

        def batch(p: int) -> int:
            return int(np.searchsorted(offsets, p, side="right") - 1)

        same = oa[:n] == ob[:n]
        moved = np.nonzero(~same)[0]
        if len(moved):
            p = int(moved[0])
            msg = f"dataset index {int(oa[p])} in a, {int(ob[p])} in b"
            self.findings.append(Finding.make(
                "order", f"{len(moved)} of {n} positions hold different dataset indices; first at position {p} "
                f"(batch {batch(p)}): {msg} (indices listed are a's, in position order)",
                stream=name, epoch=e, indices=oa[moved], sort=False))
            self._diverge(name, e, batch(p), p, "index", "order", msg)
        if len(oa) != len(ob):
            msg = f"epoch {e} holds {len(oa)} rows in a and {len(ob)} in b"
            self.findings.append(Finding.make("length", msg, stream=name, epoch=e))
            self._diverge(name, e, batch(n) if n < len(oa) else len(a.batch_sizes), n, "index", "length", msg)
        ba, bb = a.batch_sizes, b.batch_sizes
        m = min(len(ba), len(bb))
        resized = np.nonzero(ba[:m] != bb[:m])[0]
        if len(resized):
            j = int(resized[0])
            msg = f"batch {j} holds {int(ba[j])} rows in a and {int(bb[j])} in b"
            self.findings.append(Finding.make("batches", f"{len(resized)} batches differ in size; first: {msg}",
                                              stream=name, epoch=e))
            self._diverge(name, e, j, int(offsets[j]), None, "batches", msg)
        for check, names, hashes, rows in (
            ("seen", fields, lambda ep, f: ep.hashes(f), lambda ep, f, pos: ep.gather(f, pos)),
            ("outputs", outputs, lambda ep, f: ep.output_hashes(f), lambda ep, f, pos: ep.outputs[f][pos]),
        ):
            for f in names:
                if check == "outputs" and (f not in a.outputs or f not in b.outputs):
                    continue
                info = (a.stream.manifest.fields if check == "seen" else a.stream.manifest.outputs)[f]
                self._values(name, e, check, f, info, a, b, hashes(a, f), hashes(b, f), rows, same, batch)
        self.bar.update()

    def _values(self, name: str, e: int, check: str, f: str, info: FieldInfo, a: Epoch, b: Epoch,
                ha: np.ndarray, hb: np.ndarray, rows: Any, same: np.ndarray, batch: Any) -> None:
        oa, ob = a.order, b.order
        n = len(same)
        what = "seen values" if check == "seen" else f"values of output {f!r}"
        at = np.nonzero(same & (ha[:n] != hb[:n]))[0]  # same index, different value
        if len(at):
            p = int(at[0])
            gap = _gap(info, lambda s: rows(a, f, at[s]), lambda s: rows(b, f, at[s]), len(at))
            self._diverge(name, e, batch(p), p, f, check, f"{what} of dataset index {int(oa[p])} differ{gap}")
        if bool(same.all()) and len(oa) == len(ob):
            if len(at):
                self.findings.append(Finding.make(
                    check, f"{len(at)} of {n} rows differ bitwise; first at position {int(at[0])} (batch "
                    f"{batch(int(at[0]))}){gap}", stream=name, epoch=e, field=f, indices=oa[at]))
            return
        # Orders differ: compare each dataset index seen by both (first occurrences).
        ia, fa = np.unique(oa, return_index=True)
        ib, fb = np.unique(ob, return_index=True)
        common, ka, kb = np.intersect1d(ia, ib, assume_unique=True, return_indices=True)
        pa, pb = fa[ka], fb[kb]
        differ = ha[pa] != hb[pb]
        if differ.any():
            pa, pb = pa[differ], pb[differ]
            gap = _gap(info, lambda s: rows(a, f, pa[s]), lambda s: rows(b, f, pb[s]), len(pa))
            self.findings.append(Finding.make(
                check, f"for {int(differ.sum())} of {len(common)} dataset indices seen in both, the {what} differ "
                f"bitwise (first occurrences compared; the orders differ){gap}",
                stream=name, epoch=e, field=f, indices=common[differ]))


def _info(info: FieldInfo | None) -> str:
    return "absent" if info is None else f"{info.dtype} {tuple(info.shape)}"


def _gap(info: FieldInfo, read_a: Any, read_b: Any, n: int) -> str:
    """``"; max |a - b| = x over k rows"`` for numeric fields, reading at most ``DIFF_LOCATE_BYTES``; nothing
    when either side stores those rows as hashes only (``seen="hash"``)."""
    try:
        return _measure(info, read_a, read_b, n)
    except NotStoredError:
        return "; the rows are stored as hashes only on one side"


def _measure(info: FieldInfo, read_a: Any, read_b: Any, n: int) -> str:
    if info.dtype == "str" or n == 0:
        return ""
    if info.ragged:
        return _ragged_gap(info, read_a, read_b, n)
    row_bytes = max(1, int(np.prod([d or 1 for d in info.shape], dtype=np.int64)) * numpy_dtype(info.dtype).itemsize)
    limit = max(1, config.DIFF_LOCATE_BYTES // (2 * row_bytes))
    take = min(n, limit)
    step = max(1, (16 << 20) // row_bytes)  # rows read at once: about 16 MiB per side
    largest, nan_mismatch = 0.0, False
    for lo in range(0, take, step):
        s = slice(lo, min(lo + step, take))
        xa, xb = numeric_view(np.asarray(read_a(s)), info.dtype), numeric_view(np.asarray(read_b(s)), info.dtype)
        if xa is None or xb is None:
            return ""
        da, db = xa.astype(np.float64), xb.astype(np.float64)
        nan_a, nan_b = np.isnan(da), np.isnan(db)
        nan_mismatch |= bool((nan_a != nan_b).any())
        both = ~nan_a & ~nan_b
        if both.any():
            with np.errstate(invalid="ignore"):
                largest = max(largest, float(np.nanmax(np.abs(da[both] - db[both]))))
    over = f" over the first {take} of {n} differing rows" if take < n else ""
    nan = "; NaN in one but not the other" if nan_mismatch else ""
    return f"; max |a - b| = {largest:.4g}{over}{nan}"


def _ragged_gap(info: FieldInfo, read_a: Any, read_b: Any, n: int) -> str:
    """Like ``_gap`` for rows of differing shapes: compares the pairs of equal shape, one by one."""
    take = min(n, _RAGGED_ROWS)
    largest, shaped = 0.0, 0
    rows_a, rows_b = read_a(slice(0, take)), read_b(slice(0, take))
    for ra, rb in zip(rows_a, rows_b):
        xa, xb = (numeric_view(np.asarray(ra)[np.newaxis], info.dtype),
                  numeric_view(np.asarray(rb)[np.newaxis], info.dtype))
        if xa is None or xb is None:
            return ""
        if xa.shape != xb.shape:
            shaped += 1
            continue
        with np.errstate(invalid="ignore"):
            d = np.abs(xa.astype(np.float64) - xb.astype(np.float64))
        if d.size and not np.isnan(d).all():
            largest = max(largest, float(np.nanmax(d)))
    over = f" over the first {take} of {n} differing rows" if take < n else ""
    shapes = f"; {shaped} row(s) differ in shape" if shaped else ""
    return f"; max |a - b| = {largest:.4g}{over}{shapes}"

#: Rows of a ragged field diff reads to measure a difference.
_RAGGED_ROWS = 10_000
