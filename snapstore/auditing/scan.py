"""The audit's single pass over a snapshot: every chunk of every array, once.

Each stored chunk is one task: read it through ``storage.read_chunk`` (decode
and CRC32C), then reduce its committed rows to what the checks need: small
arrays (order, batch sizes, hashes, raw index) come back whole; seen, raw
and output rows come back as content hashes plus, for fields, per-row value
summaries and statistics (``checks.summarise``). Memory therefore grows with
the number of rows, never with their size.

Tasks run with Dask when it is installed: local threads by default, or the
``distributed.Client`` the user has made active (``dask.base.get_scheduler``
picks it up); without Dask they run one after the other.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from .. import storage
from ..core import layout
from ..core.hashing import NO_HASH, row_hashes
from ..core.manifest import EpochManifest, FieldInfo, RawManifest, StreamManifest, numpy_dtype
from ..errors import CorruptionError
from ..read.fields import row_shape
from ..storage.tree import epoch_groups, epoch_pieces, stream_ranks
from .checks import Moments, RowSummary, summarise

logger = logging.getLogger(__name__)

#: Tasks handed to Dask at once, per worker thread (progress updates between waves).
_WAVE_PER_WORKER = 8

# What a task returns for an array of each role.
_VALUES = ("order", "batch_sizes", "seen_hashes", "output_hashes", "raw_index", "raw_hashes", "seen_raw")

_FIELDS = ("seen", "raw")  # hashes, summaries and statistics

_HASHED = ("outputs",)  # hashes only


@dataclass(frozen=True)
class Target:
    """One array to scan.

    ``part`` is ``(rank, continuation)`` (``(rank, 0)`` for raw samples);
    ``role`` is one of ``order``, ``batch_sizes``, ``positions``, ``seen``,
    ``seen_hashes``, ``outputs``, ``output_hashes``, ``ragged`` (values),
    ``ragged_rows`` (offsets, shapes), ``raw_index``, ``raw``, ``raw_hashes`` or ``other``; ``name`` the field
    or output; ``rows`` the rows holding data
    (None: the array's length); ``required`` whether every chunk covering
    those rows must exist.
    """

    stream: str
    epoch: int | None
    part: tuple[int, int]
    role: str
    name: str | None
    array: Any
    rows: int | None
    required: bool
    dtype: str | None = None

    @property
    def key(self) -> tuple[str, int | None, tuple[int, int], str, str | None]:
        return (self.stream, self.epoch, self.part, self.role, self.name)


@dataclass
class ChunkResult:
    chunk: int
    error: str | None = None
    values: np.ndarray | None = None
    hashes: np.ndarray | None = None
    summary: RowSummary | None = None
    moments: Moments | None = None
    nbytes: int = 0


@dataclass
class ArrayScan:
    """What the scan learnt about one array; row arrays cover its first ``rows`` rows.

    ``valid`` marks rows whose chunk exists and decodes; ``values`` (small
    arrays) and ``hashes`` (computed from the data) are empty, ``summary``
    and ``moments`` None, where the role has none. ``errors`` maps chunk to message;
    ``missing`` lists required chunks with no key in the store.
    """

    target: Target
    path: str
    chunk_rows: int
    rows: int
    valid: np.ndarray
    errors: dict[int, str] = field(default_factory=dict)
    missing: list[int] = field(default_factory=list)
    values: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    hashes: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint64))
    summary: RowSummary | None = None
    moments: Moments | None = None
    parts: list[tuple[int, ChunkResult]] = field(default_factory=list, repr=False)

Part = tuple[int, int]
"""Where an epoch's rows were recorded: ``(rank, k)``, k = 0 for the epoch group, k >= 1 for ``continued/<k>``."""


@dataclass
class ScanResult:
    arrays: dict[tuple[str, int | None, Part, str, str | None], ArrayScan] = field(default_factory=dict)
    epochs: dict[tuple[str, int], dict[Part, EpochManifest]] = field(default_factory=dict)
    # stream, epoch, field, message
    unreadable: list[tuple[str, int | None, str | None, str]] = field(default_factory=list)
    chunks: int = 0
    bytes_stored: int = 0
    bytes: int = 0
    seconds: float = 0.0

    def get(self, stream: str, epoch: int | None, part: Part, role: str, name: str | None = None) -> ArrayScan | None:
        return self.arrays.get((stream, epoch, part, role, name))

    def parts(self, stream: str, epoch: int | None) -> list[Part]:
        """The parts of an epoch in position order (rank, then continuation), or the ranks holding raw samples."""
        if epoch is not None:
            return sorted(self.epochs.get((stream, epoch), {}))
        return sorted({k[2] for k in self.arrays if k[0] == stream and k[1] is None})

_EPOCH_PREFIXES = (
    (layout.seen_hashes_path(""), "seen_hashes"),
    (layout.output_hashes_path(""), "output_hashes"),
    (f"{layout.SEEN_GROUP}/", "seen"),
    (f"{layout.OUTPUTS_GROUP}/", "outputs"),
    (f"{layout.RAGGED_GROUP}/", "ragged"),
)

_POSITIONS = (layout.WORKER, layout.BASE_ORDER, layout.BASE_DATASET)


def _classify(rel: str) -> tuple[int | None, int, str, str | None] | None:
    """``(epoch, continuation, role, name)`` of an array path relative to a (rank's) stream group."""
    parts = rel.split("/")
    if parts[0] == layout.EPOCHS_GROUP and len(parts) >= 3 and parts[1].isdigit():
        epoch, k, rest = int(parts[1]), 0, "/".join(parts[2:])
        if len(parts) >= 5 and parts[2] == layout.CONTINUED_GROUP and parts[3].isdigit():
            k, rest = int(parts[3]), "/".join(parts[4:])
        if rest in (layout.ORDER, layout.BATCH_SIZES):
            return epoch, k, rest, None
        if rest == layout.SEEN_RAW:
            return epoch, k, "seen_raw", None
        if rest in _POSITIONS:
            return epoch, k, "positions", rest
        for prefix, role in _EPOCH_PREFIXES:
            if rest.startswith(prefix):
                return (epoch, k, *_ragged(role, rest[len(prefix):]))
        return epoch, k, "other", rest
    if parts[0] == layout.RAW_GROUP and len(parts) >= 2:
        rest = "/".join(parts[1:])
        if rest == layout.RAW_INDEX:
            return None, 0, "raw_index", None
        for prefix, role in ((layout.raw_hashes_path(""), "raw_hashes"), (f"{layout.RAW_FIELDS}/", "raw"),
                             (f"{layout.RAGGED_GROUP}/", "ragged")):
            if rest.startswith(prefix):
                return (None, 0, *_ragged(role, rest[len(prefix):]))
    return None


def _ragged(role: str, name: str) -> tuple[str, str]:
    """``(role, name)``: a ragged field's per-row ``offsets``/``shapes`` are ``ragged_rows``, its ``values``
    ``ragged``; their name stays ``<field>/<array>``."""
    if role != "ragged":
        return role, name
    array = name.rpartition("/")[2]
    return ("ragged_rows" if array in (layout.OFFSETS, layout.SHAPES) else "ragged"), name


def _ranks(group: Any, name: str) -> list[tuple[int, Any, str]]:
    """``(rank, stream group of that rank, path prefix)``: one entry unless torch.distributed ranks recorded it."""
    return [(r, g, where[len(name) + 1:] + "/" if where != name else "")
            for r, g, where in stream_ranks(group, name, strict=False)]


def epoch_numbers(snapshot: Any, stream: str) -> list[int]:
    """Epoch numbers of ``stream`` whose groups exist (on any rank)."""
    return sorted({e for _, g, where in stream_ranks(snapshot.group[stream], stream, strict=False)
                   for e in epoch_groups(g, where, strict=False)})


def _manifests(name: str, rank: int, group: Any, wanted: set[int] | None, result: ScanResult) -> None:
    """Read the commit record of every epoch piece of one rank into ``result.epochs``."""
    for e, (eg, where) in epoch_groups(group, name, strict=False).items():
        if wanted is not None and e not in wanted:
            continue
        for k, g, _ in epoch_pieces(eg, where, strict=False):
            try:
                manifest = EpochManifest.from_dict(g.attrs.get(layout.EPOCH_ATTR), where=g.path)
            except (KeyError, TypeError, ValueError) as err:
                result.unreadable.append((name, e, None, f"the commit record of {g.path!r} cannot be read ({err!r})"))
                continue
            result.epochs.setdefault((name, e), {})[(rank, k)] = manifest


def plan(root: Any, streams: Sequence[str], epochs: Iterable[int] | None, result: ScanResult) -> list[Target]:
    """The arrays of ``streams`` (and of the chosen ``epochs`` only) with the rows their manifests commit."""
    wanted = None if epochs is None else set(epochs)
    targets = []
    for name in streams:
        for rank, group, prefix in _ranks(root[name], name):
            manifest = StreamManifest.from_dict(group.attrs.get(layout.STREAM_ATTR),
                                                where=f"{name}/{prefix}".rstrip("/"))
            raw = storage.child(group, layout.RAW_GROUP)
            raw_rows = (RawManifest.from_dict(raw.attrs.get(layout.RAW_ATTR, {}), where=raw.path).rows
                        if raw is not None else 0)
            _manifests(name, rank, group, wanted, result)
            broken: list[tuple[str, Exception]] = []
            for rel, array in storage.walk_arrays(group, broken):
                targets.extend(_target(name, rank, rel, array, manifest, raw_rows, wanted, result))
            for rel, problem in broken:
                where = _classify(rel)
                parts = rel.split("/")
                epoch = (int(parts[1]) if parts[0] == layout.EPOCHS_GROUP and len(parts) > 1 and parts[1].isdigit()
                         else None)
                field_name = where[3] if where is not None and where[2] in ("seen", "raw", "outputs") else None
                if where is not None and where[2] in ("ragged", "ragged_rows") and where[3]:
                    field_name = where[3].rpartition("/")[0]
                if epoch is None or wanted is None or epoch in wanted:
                    message = (f"the metadata (zarr.json) of {name}/{prefix}{rel} cannot be read "
                               f"({type(problem).__name__}: {problem}); its data cannot be checked or read")
                    result.unreadable.append((name, epoch, field_name, message))
    return targets


def _target(name: str, rank: int, rel: str, array: Any, manifest: StreamManifest, raw_rows: int,
            wanted: set[int] | None, result: ScanResult) -> list[Target]:
    where = _classify(rel)
    if where is None:
        return _checked(Target(name, None, (rank, 0), "other", rel, array, None, False), None, result)
    epoch, k, role, field_name = where
    if epoch is not None and wanted is not None and epoch not in wanted:
        return []
    infos = {"seen": manifest.fields, "raw": manifest.raw_fields, "outputs": manifest.outputs}.get(role, {})
    info = infos.get(field_name) if field_name is not None else None
    dtype = info.dtype if info is not None else None
    part = (rank, k)
    if role in ("other", "ragged"):  # integrity only: no committed row count to hold them to
        target = Target(name, epoch, part, role, field_name, array, None, False, dtype)
    elif epoch is None:
        target = Target(name, None, part, role, field_name, array, raw_rows, True, dtype)
    elif (em := result.epochs.get((name, epoch), {}).get(part)) is None:
        target = Target(name, epoch, part, role, field_name, array, None, False, dtype)
    else:
        rows = em.batches if role == "batch_sizes" else em.rows
        required = role not in ("outputs", "output_hashes")  # outputs may be logged for some batches only
        target = Target(name, epoch, part, role, field_name, array, rows, required, dtype)
    return _checked(target, info, result)


def _checked(target: Target, info: FieldInfo | None, result: ScanResult) -> list[Target]:
    """``[target]``, or ``[]`` with its array's problem in ``result.unreadable``: chunks larger than snapstore
    writes them or another codec chain (any array), a dtype or row shape other than the manifest's (fixed
    fields), so that no chunk of it is read."""
    fixed = info is not None and not info.ragged and target.role in _FIELDS + _HASHED
    try:
        storage.check_array(target.array, f"stream {target.stream!r}",
                            dtype=numpy_dtype(info.dtype) if fixed and info is not None else None,
                            row_shape=row_shape(info) if fixed and info is not None else None)
    except CorruptionError as e:
        field_name = target.name if target.role in _FIELDS + _HASHED else None
        result.unreadable.append((target.stream, target.epoch, field_name, str(e)))
        return []
    return [target]




def _stored_elsewhere(targets: list[Target]) -> dict[tuple[str, int | None, Part], np.ndarray]:
    """Per epoch part with a ``seen_raw`` marker, which seen rows are stored as their raw sample (bool, (rows,)):
    their ``seen/`` rows hold the fill value, so the scan leaves them out of summaries and statistics. A
    marker that fails to read is left to its own chunks' scan (reported there)."""
    out = {}
    for t in targets:
        if t.role == "seen_raw" and t.rows:
            try:
                out[t.stream, t.epoch, t.part] = storage.ChunkReader(t.array, rows=t.rows).read(0, t.rows).astype(bool)
            except CorruptionError:
                continue
    return out


def _read(array: Any, c: int, keep: int, role: str, dtype: str | None, skip: np.ndarray | None = None) -> ChunkResult:
    """Task: decode chunk ``c`` and reduce its first ``keep`` rows; ``skip`` (bool, (keep,)): seen rows stored as
    their raw sample, left out of the summaries (unknown) and statistics."""
    try:
        block = storage.read_chunk(array, c)
    except CorruptionError as e:
        cause = e.__cause__ if e.__cause__ is not None else e
        return ChunkResult(c, error=f"{type(cause).__name__}: {cause}")
    out = ChunkResult(c, nbytes=int(block.nbytes))
    rows = block[:keep]
    if role in _VALUES:
        out.values = rows.copy()
    elif role in _FIELDS or role in _HASHED:
        out.hashes = row_hashes(rows)
        if role in _FIELDS and dtype is not None:
            if skip is None or not skip.any():
                out.summary, out.moments = summarise(rows, dtype)
            else:
                summary, out.moments = summarise(rows[~skip], dtype)
                out.summary = RowSummary.unknown(keep) if summary is not None else None
                if summary is not None:
                    for a in ("lo", "hi", "nan", "inf"):
                        getattr(out.summary, a)[~skip] = getattr(summary, a)
    return out


class _Task:
    """One chunk to read: a plain object, so Dask passes it through without walking the zarr array inside."""

    __slots__ = ("args",)

    def __init__(self, args: tuple) -> None:
        self.args = args

    def __call__(self) -> ChunkResult:
        return _read(*self.args)


def _call(task: _Task) -> ChunkResult:
    return task()


def _run(tasks: list[tuple], progress: bool, total_bytes: int) -> list[ChunkResult]:
    try:
        import dask
        import dask.base
        import dask.system
    except ImportError:  # the dask extra is optional: run in this thread
        has_dask = False
    else:
        has_dask = True
    results: list[ChunkResult] = []
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="audit", disable=not progress, file=sys.stderr)
    with bar:
        if not has_dask:
            for t in tasks:
                results.append(_read(*t))
                bar.update(results[-1].nbytes)
            return results
        client: Any = getattr(dask.base.get_scheduler(), "__self__", None)  # a distributed.Client's get
        if client is not None and hasattr(client, "nthreads"):
            threads = sum(client.nthreads().values())
        else:
            threads = dask.system.CPU_COUNT or 1
        wave = max(1, _WAVE_PER_WORKER * threads)
        for start in range(0, len(tasks), wave):
            batch = tasks[start : start + wave]
            delayed = [dask.delayed(_call, pure=False)(_Task(t), dask_key_name=f"snapstore-scan-{start + k}")
                       for k, t in enumerate(batch)]
            done = dask.compute(*delayed)
            results.extend(done)
            bar.update(sum(r.nbytes for r in done))
    return results


def scan(snapshot: Any, streams: Sequence[str], epochs: Iterable[int] | None, *,
         progress: bool | None = None) -> ScanResult:
    """Read every chunk of the chosen streams and epochs once; see the module docstring.

    Parameters
    ----------
    snapshot : Snapshot
    streams : sequence of str
    epochs : iterable of int or None
        None: every epoch.
    progress : bool or None
        A tqdm bar on stderr; None shows it when stderr is a terminal.
    """
    t0 = time.perf_counter()
    result = ScanResult()
    targets = plan(snapshot.group, streams, epochs, result)
    elsewhere = _stored_elsewhere(targets)
    tasks, owners, decoded = [], [], 0
    for t in targets:
        cr = t.array.chunks[0]
        stored = storage.stored_chunks(t.array)
        held = (max(stored) + 1) * cr if stored else 0  # rows of no manifest: those the stored chunks hold
        rows = min(t.array.shape[0], held if t.rows is None else t.rows)
        needed = math.ceil(rows / cr) if t.required else 0
        scan_ = ArrayScan(t, t.array.path, cr, rows, np.zeros(rows, bool))
        scan_.missing = [c for c in range(needed) if c not in stored]
        result.arrays[t.key] = scan_
        result.bytes_stored += int(t.array.nbytes_stored())
        row_bytes = t.array.dtype.itemsize * int(np.prod(t.array.shape[1:], dtype=np.int64))
        for c in sorted(stored):
            keep = max(0, min(cr, rows - c * cr))
            skip = elsewhere.get((t.stream, t.epoch, t.part)) if t.role == "seen" else None
            tasks.append((t.array, c, keep, t.role, t.dtype, None if skip is None else skip[c * cr : c * cr + keep]))
            owners.append(scan_)
            decoded += min(cr, t.array.shape[0] - c * cr) * row_bytes  # what read_chunk returns: the last chunk is cut
    show = sys.stderr.isatty() if progress is None else progress
    results = _run(tasks, show, decoded)
    for owner, r in zip(owners, results):
        _collect(owner, r)
    for s in result.arrays.values():
        _assemble(s)
    result.chunks = len(tasks)
    result.bytes = sum(r.nbytes for r in results)
    result.seconds = time.perf_counter() - t0
    return result


def _collect(s: ArrayScan, r: ChunkResult) -> None:
    if r.error is not None:
        s.errors[r.chunk] = r.error
        return
    lo = r.chunk * s.chunk_rows
    hi = min(lo + s.chunk_rows, s.rows)
    if hi <= lo:
        return
    s.valid[lo:hi] = True
    s.parts.append((lo, r))


def _assemble(s: ArrayScan) -> None:
    parts, s.parts = sorted(s.parts, key=lambda p: p[0]), []
    role, n = s.target.role, s.rows
    if role in _VALUES:
        dtype = s.target.array.dtype
        s.values = np.zeros(n, dtype=dtype) if dtype.kind in "iu" else np.zeros(n)
        if role in ("order", "raw_index"):
            s.values[:] = -1
        for lo, r in parts:
            if r.values is not None:
                s.values[lo : lo + len(r.values)] = r.values
    if role in _FIELDS or role in _HASHED:
        s.hashes = np.full(n, NO_HASH, np.uint64)
        for lo, r in parts:
            if r.hashes is not None:
                s.hashes[lo : lo + len(r.hashes)] = r.hashes
    if role in _FIELDS and s.target.dtype is not None:
        summary = RowSummary.unknown(n)
        moments = Moments()
        have = False
        for lo, r in parts:
            if r.summary is not None:
                have = True
                for a in ("lo", "hi", "nan", "inf"):
                    getattr(summary, a)[lo : lo + len(r.summary.lo)] = getattr(r.summary, a)
            if r.moments is not None:
                moments = moments.merge(r.moments)
        s.summary = summary if have else None
        s.moments = moments
