"""``compare``: has the dataset changed since it was recorded?"""

from __future__ import annotations

import sys

import numpy as np
from torch.utils.data import Dataset
from tqdm import tqdm

from ..core.datasets import raw_source
from ..core.hashing import row_hashes
from ..core.rows import host_rows
from ..core.schema import flatten, reconcile
from ..errors import SnapstoreError, UsageError
from ..read.stream import Stream
from .report import CompareReport, Finding


def compare(stream: Stream, dataset: Dataset, *, progress: bool | None = None) -> CompareReport:
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
        live_len: int | None = len(dataset)  # type: ignore[arg-type]  # a Dataset may lack __len__
    except TypeError:
        live_len = None
    report = CompareReport(stream.name)
    if live_len is not None and m.dataset_len is not None and live_len != m.dataset_len:
        report.findings.append(Finding.make(
            "drift", f"the live dataset holds {live_len} samples; the recording's held {m.dataset_len}",
            stream=stream.name))
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
            sample = fetch([i])[0] if fetch is not None else dataset[i]
        except (IndexError, KeyError):
            gone.append(i)
            continue
        try:
            structure, fields = flatten(sample, None)
            infos = {p: f for p, (f, _) in fields.items()}
            fits = reconcile(m.raw_structure or {}, m.raw_fields, structure, infos, f"live sample {i}") == m.raw_fields
        except SnapstoreError:
            fits = False
        if not fits:  # another structure, dtype, or a row shape a fixed-shape field never had
            reshaped.append(i)
            continue
        for p, (info, rows) in fields.items():
            live = np.asarray(host_rows(rows))
            if row_hashes(live)[0] != stored[p][k]:
                differ[p].append(i)
                recorded = raw.gather(p, [i])[0]
                if live.dtype.kind in "iufb" and info.dtype != "bfloat16" and recorded.shape == live[0].shape:
                    gap = float(np.max(np.abs(live[0].astype(np.float64) - recorded.astype(np.float64)), initial=0.0))
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
            "drift", f"{len(gone)} recorded indices are no longer in the live dataset", stream=stream.name,
            indices=gone))
    if reshaped:
        report.findings.append(Finding.make(
            "drift", f"{len(reshaped)} live samples no longer have the recorded structure, dtypes or shapes",
            stream=stream.name, indices=reshaped))
    return report
