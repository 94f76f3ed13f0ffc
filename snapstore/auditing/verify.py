"""``verify``: does a rerun of a loader yield what a recording saw? A determinism audit from the hashes.

The loader is run once per recorded epoch; each batch is flattened into
fields and hashed as the recorder hashes seen rows (``core.hashing``), and
compared with the stored hashes and batch sizes. No row bytes are read, so
it works for every ``seen=`` policy, ``"hash"`` included.
"""

from __future__ import annotations

import sys

import numpy as np
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..core import hashing
from ..core.schema import flatten
from ..errors import SchemaError, UsageError
from ..read.epoch import Epoch
from ..read.stream import Stream
from .report import DiffReport, Divergence, Finding

__all__ = ["verify"]


def verify(recording: Stream | Epoch, loader: DataLoader, *, progress: bool | None = None) -> DiffReport:
    """Run ``loader`` and check that it yields what ``recording`` saw, batch by batch, row by row.

    Parameters
    ----------
    recording : Stream or Epoch
        A stream (every recorded epoch, in order) or one epoch. For a stream
        recorded by several ranks, pass one rank's view, ``stream.rank(r)``,
        and that rank's loader.
    loader : DataLoader
        Built as in the recorded run (same dataset, sampler, seeds). Iterated
        once per epoch; before each pass, ``loader.sampler.set_epoch(e)`` is
        called when the sampler has it (``DistributedSampler``).
    progress : bool, optional
        A tqdm bar on stderr counting epochs; default: when stderr is a terminal.

    Returns
    -------
    DiffReport
        ``a`` is the recording, ``b`` the loader; ``identical`` when every
        epoch yielded the recorded batch sizes and bitwise-equal rows (equal
        content hashes of every seen field); else ``first_divergence`` gives
        the epoch, batch, position and field of the first difference, and
        ``findings`` (``check`` in ``batches``, ``schema``, ``seen``) how many
        rows differ, with their recorded dataset indices.

    Raises
    ------
    UsageError
        ``recording`` is not a Stream or Epoch, or holds several ranks.

    Examples
    --------
    >>> report = snapstore.verify(snapstore.open("runs/exp1.snap")["train"], make_loader())  # doctest: +SKIP
    >>> report.identical  # doctest: +SKIP
    True
    """
    if isinstance(recording, Stream):
        epochs = [recording.epoch(e) for e in recording.epochs]
        what = recording.path
    elif isinstance(recording, Epoch):
        epochs, what = [recording], f"{recording.stream.path} epoch {recording.number}"
    else:
        raise UsageError(f"verify() takes a Stream or an Epoch, got {type(recording).__name__}")
    if any(len(ep) and int(ep.ranks.max()) > 0 for ep in epochs):
        raise UsageError(f"{what} was recorded by several ranks; verify one rank's view, stream.rank(r), with "
                         "that rank's loader")
    findings: list[Finding] = []
    first: Divergence | None = None
    rows = 0
    bar = tqdm(total=len(epochs), desc="verify", unit="epoch", file=sys.stderr,
               disable=not (sys.stderr.isatty() if progress is None else progress))
    for ep in epochs:
        set_epoch = getattr(loader.sampler, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(ep.number)
        found, divergence, rows_seen = _epoch(ep, loader)
        findings += found
        rows += rows_seen
        first = first or divergence
        bar.update()
    bar.close()
    return DiffReport(what, f"a rerun of {type(loader).__name__}", findings, first,
                      {"epochs": len(epochs), "rows": rows})


def _epoch(ep: Epoch, loader: DataLoader) -> tuple[list[Finding], Divergence | None, int]:
    """Findings of one pass of ``loader`` against ``ep``, the first divergence, and the rows compared."""
    m = ep.stream.manifest
    name, e = m.name, ep.number
    sizes, order = ep.batch_sizes, ep.order
    stored = {f: ep.hashes(f) for f in m.fields}
    row_lists = frozenset(p for p, f in m.fields.items() if f.kind in ("tensor-list", "ndarray-list"))
    differ: dict[str, list[int]] = {f: [] for f in m.fields}
    findings: list[Finding] = []
    first: Divergence | None = None
    pos = j = 0
    for batch in loader:
        problem = None
        n = int(sizes[j]) if j < len(sizes) else 0
        if j >= len(sizes):
            problem = "batches", f"the rerun yields more than the {len(sizes)} recorded batches"
        else:
            try:
                structure, fields = flatten(batch, n if m.batched else None, row_lists=row_lists)
                if structure != m.structure or set(fields) != set(m.fields):
                    problem = "schema", f"batch {j}: the rerun yields fields {sorted(fields)}, the recording " \
                                        f"{sorted(m.fields)}"
            except SchemaError as err:
                problem = "batches", f"batch {j}: the rerun's batch does not hold the {n} recorded rows: {err}"
        if problem is not None:  # positions no longer line up: the rest of the epoch is not compared
            findings.append(Finding.make(problem[0], problem[1], stream=name, epoch=e))
            first = first or Divergence(name, e, j, pos, None, problem[0], problem[1])
            break
        for f, (_, h) in hashing.hash_fields(fields).items():
            bad = (pos + np.flatnonzero(h != stored[f][pos : pos + n])).tolist()
            if bad and first is None:
                first = Divergence(name, e, j, bad[0], f, "seen",
                                   f"seen values of dataset index {int(order[bad[0]])} differ from the recording")
            differ[f] += bad
        pos += n
        j += 1
    else:
        if j < len(sizes):
            msg = f"the rerun yields {j} batches, the recording {len(sizes)}"
            findings.append(Finding.make("batches", msg, stream=name, epoch=e))
            first = first or Divergence(name, e, j, pos, None, "batches", msg)
    for f, at in differ.items():
        if at:
            findings.append(Finding.make("seen", f"{len(at)} of {pos} rows differ bitwise from the recording; first "
                                         f"at position {at[0]}", stream=name, epoch=e, field=f, indices=order[at]))
    return findings, first, pos
