"""Scan rate of ``snapstore.audit`` (MB/s of stored data) and the cost of ``snapstore.diff``.

Records a synthetic snapshot of about ``--size-mb`` MB (raw samples plus
``--epochs`` epochs of (3, 64, 64) float32 images with labels, through a
real DataLoader), then times, in one run:

- ``audit`` with Dask's threaded scheduler (the default) and with its
  synchronous scheduler (one thread), as MB/s of stored (compressed) bytes;
- ``diff`` of the snapshot against itself, which reads only the ``order``
  arrays and the per-row content hashes;
- a plain read of every seen row (``Epoch.to_numpy``) for reference.

Usage::

    python benchmarks/bench_audit.py                 # tiny (16 MB), a smoke run
    python benchmarks/bench_audit.py --size-mb 1024  # the 1 GB measurement
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

import snapstore

ROW_SHAPE = (3, 64, 64)


class Synthetic(Dataset):
    """Smooth images plus noise (compressible like photographs are: a little), and a label."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.base = torch.linspace(0, 1, int(np.prod(ROW_SHAPE))).reshape(ROW_SHAPE)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        g = torch.Generator().manual_seed(i)
        return self.base * (i % 7) + 0.05 * torch.randn(ROW_SHAPE, generator=g), i % 10


def build(path: Path, size_mb: float, epochs: int) -> float:
    """Record the snapshot; returns seconds spent."""
    row_bytes = 4 * int(np.prod(ROW_SHAPE))
    rows = max(64, int(size_mb * 1e6 / (row_bytes * (epochs + 1))))
    loader = DataLoader(Synthetic(rows), batch_size=64, shuffle=True, num_workers=min(4, os.cpu_count() or 1))
    t = time.perf_counter()
    with snapstore.record(loader, path) as stream:
        for _ in range(epochs):
            for _batch in stream:
                pass
    return time.perf_counter() - t


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def run(size_mb: float, epochs: int, path: Path) -> dict[str, float]:
    """Build, measure, print one table; returns the numbers."""
    import dask

    build_s = build(path, size_mb, epochs)
    snap = snapstore.open(path)
    stored = snap.info()["bytes_stored"]
    report, audit_s = _timed(lambda: snapstore.audit(snap, progress=False))
    if not report.ok:
        raise SystemExit(f"the synthetic snapshot should audit clean:\n{report}")
    with dask.config.set(scheduler="synchronous"):
        _, sync_s = _timed(lambda: snapstore.audit(snap, progress=False))
    diff, diff_s = _timed(lambda: snapstore.diff(snap, snapstore.open(path)))
    assert diff.identical
    _, read_s = _timed(lambda: [ep.to_numpy() for ep in snap["train"]])
    mb = stored / 1e6
    decoded = report.scanned["bytes"] / 1e6
    rows = [
        ("record (DataLoader + writer)", build_s, ""),
        ("audit, dask threads", audit_s, f"{mb / audit_s:8.1f} MB/s stored ({decoded / audit_s:.1f} MB/s decoded)"),
        ("audit, dask synchronous", sync_s, f"{mb / sync_s:8.1f} MB/s stored  (threads: x{sync_s / audit_s:.2f})"),
        ("diff against itself (hashes)", diff_s, f"{mb / diff_s:8.1f} MB/s of snapshot"),
        ("read every seen row (to_numpy)", read_s, ""),
    ]
    print(f"snapshot {path}: {mb:.1f} MB stored, {decoded:.1f} MB decoded, {report.scanned['chunks']} chunks, "
          f"{epochs} epoch(s), {os.cpu_count()} CPUs, dask {dask.__version__}")
    for name, secs, note in rows:
        print(f"  {name:32s} {secs:8.2f} s  {note}")
    return {"stored_mb": mb, "audit_s": audit_s, "audit_mb_s": mb / audit_s, "sync_s": sync_s, "diff_s": diff_s}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=16, help="target stored size in MB (default 16)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs recorded (default 1)")
    parser.add_argument("--dir", help="where to write the snapshot (default: a temporary directory, removed)")
    args = parser.parse_args(argv)
    tmp = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench_audit_"))
    try:
        run(args.size_mb, args.epochs, tmp / "bench.snap")
    finally:
        if not args.dir:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
