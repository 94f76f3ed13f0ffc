"""The audit's checks: pure functions over NumPy arrays that return findings.

Nothing here reads a snapshot. ``scan.py`` reads chunks and reduces each to
a :class:`RowSummary` (per-row minima, maxima, non-finite flags) and
:class:`Moments` (mergeable statistics); ``audit.py`` feeds those, the
epochs' ``order`` and the per-row content hashes to the checks below.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .. import config
from ..core.hashing import NO_HASH
from .report import FieldStats, Finding, plural

__all__ = [
    "Expectation",
    "Moments",
    "RowSummary",
    "check_carry_through",
    "check_coverage",
    "check_stability",
    "check_values",
    "sampler_expectation",
    "summarise",
]

Index = npt.NDArray[np.int64]


@dataclass
class Moments:
    """Mergeable statistics of a field's finite values (Chan et al.'s parallel variance)."""

    rows: int = 0
    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float = math.inf
    max: float = -math.inf
    nan: int = 0
    inf: int = 0

    def merge(self, o: Moments) -> Moments:
        n = self.count + o.count
        if n == 0:
            mean, m2 = 0.0, 0.0
        else:
            delta = o.mean - self.mean
            mean = self.mean + delta * o.count / n
            m2 = self.m2 + o.m2 + delta * delta * self.count * o.count / n
        return Moments(self.rows + o.rows, n, mean, m2, min(self.min, o.min), max(self.max, o.max),
                       self.nan + o.nan, self.inf + o.inf)

    def stats(self) -> FieldStats:
        if self.count == 0:
            return FieldStats(self.rows, 0, None, None, None, None, self.nan, self.inf)
        return FieldStats(self.rows, self.count, float(self.min), float(self.max), float(self.mean),
                          float(math.sqrt(max(self.m2, 0.0) / self.count)), self.nan, self.inf)


@dataclass
class RowSummary:
    """Per-row value summaries of one field (all arrays shape (rows,)).

    ``lo``/``hi``: smallest/largest finite value of the row (float64; NaN
    for a row without finite values or one that could not be read);
    ``nan``/``inf``: whether the row holds a NaN / an infinity.
    """

    lo: npt.NDArray[np.float64]
    hi: npt.NDArray[np.float64]
    nan: npt.NDArray[np.bool_]
    inf: npt.NDArray[np.bool_]

    @classmethod
    def unknown(cls, rows: int) -> RowSummary:
        """Summaries of rows that could not be read."""
        return cls(np.full(rows, np.nan), np.full(rows, np.nan), np.zeros(rows, bool), np.zeros(rows, bool))

    @classmethod
    def concat(cls, parts: Sequence[RowSummary]) -> RowSummary:
        if not parts:
            return cls.unknown(0)
        return cls(*(np.concatenate([getattr(p, a) for p in parts]) for a in ("lo", "hi", "nan", "inf")))


def numeric_view(block: np.ndarray, dtype: str) -> np.ndarray | None:
    """``block`` as numbers to summarise, or None for strings and complex values.

    ``dtype`` is the field's ``FieldInfo.dtype``: ``"bfloat16"`` rows (stored
    as uint16 bit patterns) become float32; bools become uint8.
    """
    if dtype == "bfloat16":
        return (block.astype(np.uint32) << 16).view(np.float32)
    kind = block.dtype.kind
    if kind == "b":
        return block.view(np.uint8)
    return block if kind in "iuf" else None


def _moments(flat: np.ndarray) -> tuple[int, float, float]:
    """``(count, mean, M2)`` of a finite (rows, k) block: per-row mean and M2 (pairwise sums in the
    block's float type), combined across rows in float64."""
    work = flat if flat.dtype.kind == "f" and flat.dtype.itemsize >= 4 else flat.astype(
        np.float32 if flat.dtype.itemsize <= 2 else np.float64)
    k = work.shape[1]
    row_mean = work.mean(axis=1)
    d = work - row_mean[:, np.newaxis]
    row_m2 = np.einsum("ij,ij->i", d, d).astype(np.float64)
    row_mean = row_mean.astype(np.float64)
    mean = float(row_mean.mean())
    return work.size, mean, float(row_m2.sum() + k * ((row_mean - mean) ** 2).sum())


def summarise(block: np.ndarray, dtype: str) -> tuple[RowSummary | None, Moments]:
    """Per-row summaries and statistics of a block of rows (shape (n, *row_shape)).

    Returns ``(None, Moments(rows=n))`` for strings and complex values.
    """
    n = len(block)
    x = numeric_view(block, dtype)
    if x is None or n == 0:
        return None, Moments(rows=n)
    flat = x.reshape(n, -1)
    if flat.shape[1] == 0:
        return RowSummary.unknown(n), Moments(rows=n)
    lo = flat.min(axis=1).astype(np.float64)  # NaN and Inf show up here: the common all-finite case costs no mask
    hi = flat.max(axis=1).astype(np.float64)
    if bool(np.isfinite(lo).all() and np.isfinite(hi).all()):
        none = np.zeros(n, bool)
        count, mean, m2 = _moments(flat)
        return RowSummary(lo, hi, none, none.copy()), Moments(n, count, mean, m2, float(lo.min()), float(hi.max()))
    finite = np.isfinite(flat)
    nan = np.isnan(flat)
    inf = ~finite & ~nan
    lo = np.where(finite, flat, np.inf).min(axis=1).astype(np.float64)
    hi = np.where(finite, flat, -np.inf).max(axis=1).astype(np.float64)
    empty = ~finite.any(axis=1)
    lo[empty] = np.nan
    hi[empty] = np.nan
    values = flat[finite].astype(np.float64)
    count = int(values.size)
    mean = float(values.mean()) if count else 0.0
    m2 = float(((values - mean) ** 2).sum()) if count else 0.0
    moments = Moments(n, count, mean, m2, float(np.nanmin(lo)) if count else math.inf,
                      float(np.nanmax(hi)) if count else -math.inf, int(nan.sum()), int(inf.sum()))
    return RowSummary(lo, hi, nan.any(axis=1), inf.any(axis=1)), moments


@dataclass(frozen=True)
class Expectation:
    """How often a sampler should yield each index in one epoch.

    ``min_count``/``max_count`` bound each index's count (``max_count`` None:
    any repeat is explained); ``missing_allowed`` indices may fall below
    ``min_count`` (the tail a ``drop_last`` batch sampler drops).
    """

    description: str
    min_count: int
    max_count: int | None
    missing_allowed: int = 0


def _short(cls: object) -> str:
    return str(cls).rsplit(".", 1)[-1] if cls else "the sampler"


def sampler_expectation(provenance: dict, dataset_len: int) -> Expectation:
    """What the recorded sampler promises, from an epoch's provenance.

    Parameters
    ----------
    provenance : dict
        ``Epoch.provenance``: ``"sampler"`` and ``"batch_sampler"`` hold each
        sampler's class, ``replacement``, ``num_samples``, ``drop_last`` ...
    dataset_len : int

    Returns
    -------
    Expectation
        Samplers with ``replacement=True`` explain any count; torch's
        ``SubsetRandomSampler``/``DistributedSampler`` and a
        ``WeightedRandomSampler`` drawing fewer than ``dataset_len`` explain
        unseen indices; every other sampler, including custom ones, is
        expected to yield each index ``num_samples / dataset_len`` times
        (once by default).
    """
    n = max(1, dataset_len)
    batch_sampler = provenance.get("batch_sampler") or None
    batch_size, drop_last = None, False
    if batch_sampler and _short(batch_sampler.get("class")) != "BatchSampler":
        s = batch_sampler  # a custom batch_sampler decides the indices itself
    else:
        s = (batch_sampler or {}).get("sampler") or provenance.get("sampler") or {}
        if batch_sampler:
            batch_size, drop_last = batch_sampler.get("batch_size"), bool(batch_sampler.get("drop_last"))
    name = _short(s.get("class"))
    if s.get("replacement") is True:
        return Expectation(f"{name} with replacement: any index any number of times", 0, None)
    num = s.get("num_samples") if isinstance(s.get("num_samples"), int) else None
    if name == "DistributedSampler":
        replicas = int(s.get("num_replicas") or 1)
        most = 1 if s.get("drop_last") or num is None else max(1, -(-num * replicas // n))
        return Expectation(f"DistributedSampler: this rank's share, each index at most {most} time(s)", 0, most)
    if name == "SubsetRandomSampler":
        return Expectation("SubsetRandomSampler: a subset, each index at most once", 0, 1)
    if name == "WeightedRandomSampler":
        least = 1 if num == dataset_len else 0
        return Expectation(f"WeightedRandomSampler without replacement drawing {num}: each index at most once",
                           least, 1)
    draws = num if num is not None else dataset_len
    least, most = draws // n, -(-draws // n)
    dropped = draws % batch_size if drop_last and isinstance(batch_size, int) and batch_size > 0 else 0
    times = "once" if least == most == 1 else f"{least}-{most} times" if least != most else f"{least} times"
    what = f"{name} without replacement" if "replacement" in s else name
    return Expectation(f"{what}: each index {times}", least, most, dropped)


def check_coverage(order: Index, dataset_len: int, expect: Expectation, *, stream: str, epoch: int,
                   complete: bool) -> list[Finding]:
    """Indices an epoch never saw and indices it saw more often than ``expect`` explains.

    Parameters
    ----------
    order : ndarray of int64, shape (rows,)
        The epoch's dataset index at each position.
    dataset_len : int
    expect : Expectation
    complete : bool
        Unseen indices are judged only for complete epochs.
    """
    findings = []
    inside = (order >= 0) & (order < dataset_len)
    if not inside.all():
        bad = order[~inside]
        findings.append(Finding.make(
            "coverage", f"{plural(len(bad), 'position')} hold indices outside the dataset (0..{dataset_len - 1})",
            stream=stream, epoch=epoch, indices=bad))
    seen, counts = np.unique(order[inside], return_counts=True)  # memory by rows, never by dataset_len
    if expect.max_count is not None:
        over = seen[counts > expect.max_count]
        if len(over):
            findings.append(Finding.make(
                "coverage", f"{plural(len(over), 'index')} seen more often than the sampler explains "
                f"(up to {int(counts.max())} times; {expect.description})",
                stream=stream, epoch=epoch, indices=over))
    if complete and expect.min_count > 0:
        few, never = seen[counts < expect.min_count], dataset_len - len(seen)
        under = len(few) + never
        if under > expect.missing_allowed:
            allowed = f"; drop_last explains {expect.missing_allowed}" if expect.missing_allowed else ""
            first = Finding.make(
                "coverage", f"{plural(under, 'index')} seen fewer times than the sampler explains, "
                f"{never} never seen ({expect.description}{allowed})",
                stream=stream, epoch=epoch, indices=np.union1d(few, _first_unseen(seen, dataset_len)))
            findings.append(dataclasses.replace(first, count=under))
    return findings


def _first_unseen(seen: Index, dataset_len: int) -> Index:
    """The smallest ``config.MAX_FINDING_INDICES`` indices below ``dataset_len`` not in ``seen`` (sorted, unique)."""
    candidates = np.arange(min(dataset_len, len(seen) + config.MAX_FINDING_INDICES), dtype=np.int64)
    return candidates[~np.isin(candidates, seen)][: config.MAX_FINDING_INDICES]


def outlier_rows(summary: RowSummary) -> tuple[npt.NDArray[np.bool_], float, float]:
    """Rows whose values lie orders of magnitude outside the field's typical range.

    The typical range ``[low, high]`` runs from the ``OUTLIER_QUANTILE``
    quantile of the rows' minima to the ``1 - OUTLIER_QUANTILE`` quantile of
    their maxima; a row is an outlier when it reaches more than
    ``OUTLIER_WIDTHS`` range widths beyond it. Robust to up to
    ``OUTLIER_QUANTILE`` of the rows being outliers; judges nothing below
    ``OUTLIER_MIN_ROWS`` rows or when the range is a single value.

    Returns
    -------
    mask : ndarray of bool, shape (rows,)
    low, high : float
    """
    ok = np.isfinite(summary.lo) & np.isfinite(summary.hi)
    none = np.zeros(len(ok), bool)
    if ok.sum() < config.OUTLIER_MIN_ROWS:
        return none, math.nan, math.nan
    q = config.OUTLIER_QUANTILE
    low = float(np.quantile(summary.lo[ok], q))
    high = float(np.quantile(summary.hi[ok], 1 - q))
    width = high - low
    if not width > 0 or not math.isfinite(width):
        return none, low, high
    reach = config.OUTLIER_WIDTHS * width
    with np.errstate(invalid="ignore"):
        mask = ok & ((summary.hi > high + reach) | (summary.lo < low - reach))
    return mask, low, high


def check_values(summary: RowSummary, indices: Index, *, stream: str, epoch: int | None, field: str) -> list[Finding]:
    """Non-finite values and outlier rows of one field.

    Parameters
    ----------
    summary : RowSummary
        Of the epoch's rows (or the raw samples), shape (rows,).
    indices : ndarray of int64, shape (rows,)
        Dataset index of each row.
    """
    findings = []
    bad = summary.nan | summary.inf
    if bad.any():
        n_nan, n_inf = int(summary.nan.sum()), int(summary.inf.sum())
        findings.append(Finding.make(
            "values", f"{plural(int(bad.sum()), 'row')} hold non-finite values ({n_nan} with NaN, {n_inf} with ±Inf)",
            stream=stream, epoch=epoch, field=field, indices=indices[bad]))
    mask, low, high = outlier_rows(summary)
    if mask.any():
        peak = float(np.nanmax(np.maximum(np.abs(summary.hi[mask]), np.abs(summary.lo[mask]))))
        findings.append(Finding.make(
            "values", f"{plural(int(mask.sum()), 'row')} hold values orders of magnitude outside the field's "
            f"distribution (up to {peak:.3g} in magnitude; {100 - 200 * config.OUTLIER_QUANTILE:.0f}% of rows stay "
            f"within [{low:.3g}, {high:.3g}]): a division by a near-zero sum or std, a corrupt file, a wrong scale",
            stream=stream, epoch=epoch, field=field, indices=indices[mask]))
    return findings


def _few(differing: int, compared: int) -> bool:
    return 0 < differing <= max(1.0, config.UNSTABLE_MAX_FRACTION * compared)


def check_stability(epochs: Sequence[tuple[int, Index, npt.NDArray[np.uint64]]], *, stream: str, field: str,
                    dataset_len: int) -> list[Finding]:
    """Indices whose value of a mostly-stable field changes between epochs.

    Parameters
    ----------
    epochs : sequence of (epoch number, order, hashes)
        In epoch order; ``order`` (int64) and ``hashes`` (uint64, per-row
        content hashes of the field) have shape (rows,). An index's first
        occurrence in an epoch stands for the epoch.
    dataset_len : int

    Returns
    -------
    list of Finding
        Empty unless the field differs between epochs for at most
        ``UNSTABLE_MAX_FRACTION`` of the indices seen more than once (a label,
        a file name) and for at least one. Each index is reported in the
        epoch(s) that disagree with the majority of the epochs that saw it
        (with two epochs, the later one).
    """
    if len(epochs) < 2:
        return []
    n = dataset_len
    # Per index seen, at its place in ``universe`` (memory by rows, never by dataset_len): the hash it had
    # when first seen and in which epoch, how many later epochs saw it, and how many of those disagreed.
    universe = np.unique(np.concatenate([order[(order >= 0) & (order < n)] for _, order, _ in epochs]))
    ref = np.zeros(len(universe), np.uint64)
    ref_epoch = np.full(len(universe), -1, np.int64)
    compared = np.zeros(len(universe), np.int64)
    disagree = np.zeros(len(universe), np.int64)
    diffs: list[tuple[int, Index]] = []
    for k, (_, order, hashes) in enumerate(epochs):
        idx, first = np.unique(order, return_index=True)
        keep = (idx >= 0) & (idx < n)
        at, h = np.searchsorted(universe, idx[keep]), hashes[first[keep]]
        fresh = ref_epoch[at] < 0
        ref[at[fresh]], ref_epoch[at[fresh]] = h[fresh], k
        old = at[~fresh]
        differ = ref[old] != h[~fresh]
        compared[old] += 1
        disagree[old[differ]] += 1
        diffs.append((k, old[differ]))
        unstable = int((disagree > 0).sum())
        if unstable > max(1.0, config.UNSTABLE_MAX_FRACTION * int((ref_epoch >= 0).sum())):
            return []  # differs for many indices: a varying field (an augmented input)
    seen_twice = int((compared > 0).sum())
    unstable_at = np.nonzero(disagree > 0)[0]
    if not _few(len(unstable_at), seen_twice):
        return []
    ref_is_odd = disagree > (compared + 1) / 2  # the first epoch that saw it is the one out
    report: dict[int, list[Index]] = {}
    for k, at in diffs:
        report.setdefault(k, []).append(at[~ref_is_odd[at]])
    for i in np.nonzero(ref_is_odd)[0]:
        report.setdefault(int(ref_epoch[i]), []).append(np.array([i]))
    findings = []
    for k in sorted(report):
        idx = universe[np.concatenate(report[k])] if report[k] else np.empty(0, np.int64)
        if len(idx):
            findings.append(Finding.make(
                "stability", f"{plural(len(np.unique(idx)), 'index')} whose {field!r} differs from what the other "
                f"epochs saw, while it is identical across epochs for {seen_twice - len(unstable_at)} of {seen_twice} "
                "indices (a race in a worker, a corrupt file, a non-deterministic dataset)",
                stream=stream, epoch=epochs[k][0], field=field, indices=idx))
    return findings


def check_carry_through(raw_indices: Index, raw_hashes: npt.NDArray[np.uint64],
                        epochs: Sequence[tuple[int, Index, npt.NDArray[np.uint64]]], *, stream: str,
                        field: str) -> list[Finding]:
    """Indices whose seen value of a field that carries through from raw (a label) differs from raw.

    Parameters
    ----------
    raw_indices : ndarray of int64, shape (r,)
        Ascending dataset indices with a raw sample.
    raw_hashes : ndarray of uint64, shape (r,)
        Content hash of the raw field, aligned with ``raw_indices``.
    epochs : sequence of (epoch number, order, hashes of the seen field)

    Returns
    -------
    list of Finding
        Empty unless the seen rows differ from their raw sample for at most
        ``UNSTABLE_MAX_FRACTION`` of the rows compared, and for at least one.
    """
    if len(raw_indices) == 0:
        return []
    per_epoch, compared, differing = [], 0, 0
    for number, order, hashes in epochs:
        at = np.minimum(np.searchsorted(raw_indices, order), len(raw_indices) - 1)
        has = (raw_indices[at] == order) & (raw_hashes[at] != NO_HASH)
        differ = has & (raw_hashes[at] != hashes)
        compared += int(has.sum())
        differing += int(differ.sum())
        if differing > max(1.0, config.UNSTABLE_MAX_FRACTION * len(raw_indices)):
            return []  # the transform changes this field: it does not carry through
        per_epoch.append((number, order[differ]))
    if not _few(differing, compared):
        return []
    return [
        Finding.make(
            "raw_vs_seen", f"{plural(len(np.unique(idx)), 'index')} whose seen {field!r} differs from the raw sample, "
            f"while {compared - differing} of {compared} seen rows carry it through unchanged "
            "(a wrong label, a race in a worker, a corrupt file)",
            stream=stream, epoch=number, field=field, indices=idx)
        for number, idx in per_epoch if len(idx)
    ]
