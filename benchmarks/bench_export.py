"""Export throughput: one recorded epoch to NumPy (in memory, memmap), replay, tf.data and Dask.

Records one epoch of CIFAR-like rows (3x32x32 float32 images, int64 labels;
random values, so compression cannot flatter the numbers) of ``--size-mb``
MiB, then times each export in a fresh subprocess so that its peak memory is
its own, and prints one table: seconds, MB/s (MiB of exported rows per
second), the ratio to a plain ``zarr`` read of the same arrays, and memory.

Memory columns, read from ``/proc/self/status``: ``rss0`` is the resident set
after imports and opening the snapshot; ``peak rss`` is ``VmHWM`` (it counts
the pages of a memmap the process wrote, which the kernel can write back and
drop at will); ``peak anon`` is the largest ``RssAnon`` sampled every 5 ms:
the memory the export itself holds.

Usage::

    python benchmarks/bench_export.py                   # a tiny smoke run (8 MiB)
    python benchmarks/bench_export.py --size-mb 1024    # the 1 GB run of issue 5

The page cache is warm: the snapshot was just written. Before the cases run,
the driver touches and frees twice the epoch's size of memory, because a
virtual machine may back guest memory lazily, and the first touch of a page
there can cost more than the export that touches it. The load average is
printed with the table: on a shared machine, compare numbers from one run only.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Self

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a source tree without installing
    sys.path.insert(0, str(ROOT))

ROW_SHAPE = (3, 32, 32)
ROW_BYTES = int(np.prod(ROW_SHAPE)) * 4 + 8  # image + label
STREAM, EPOCH = "train", 0
CASES = ("zarr", "numpy", "memmap", "batches-concat", "replay", "tf-rows", "tf-batch256", "dask-sum")
MIB = 1024 * 1024


# -- the epoch -------------------------------------------------------------------------------


class _Rows:
    """Deterministic random rows without holding the whole dataset: a 4096-row pool, each row offset by its index."""

    def __init__(self, n: int) -> None:
        import torch

        g = torch.Generator().manual_seed(0)
        self.n = n
        self.pool = torch.randn(4096, *ROW_SHAPE, generator=g)
        self.labels = torch.randint(0, 10, (n,), generator=g)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        return self.pool[i % 4096] + float(i // 4096), self.labels[i]


def record_epoch(path: Path, size_mb: float) -> int:
    """Record one shuffled epoch of ``size_mb`` MiB of rows at ``path``; returns its rows."""
    import torch
    from torch.utils.data import DataLoader

    import snapstore

    n = max(1, int(size_mb * MIB) // ROW_BYTES)
    loader = DataLoader(_Rows(n), batch_size=256, shuffle=True, generator=torch.Generator().manual_seed(1))
    with snapstore.Recorder(path, overwrite=True) as rec:
        for _ in rec.wrap(loader, name=STREAM, raw=None):
            pass
    return n


# -- one case, in its own process ------------------------------------------------------------


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


class _AnonPeak:
    """Samples ``RssAnon`` every 5 ms in a thread; ``peak`` in bytes."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _status_kib("RssAnon") * 1024)
            self._stop.wait(0.005)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _status_kib("RssAnon") * 1024)


def run_case(case: str, snapshot: str, scratch: str) -> dict[str, Any]:
    """Time one export of epoch ``EPOCH`` of ``snapshot``; returns seconds, bytes and memory."""
    import snapstore

    ep = snapstore.open(snapshot)[STREAM].epoch(EPOCH)
    n = len(ep)
    nbytes = n * ROW_BYTES
    work = _prepare(case, ep, snapshot, scratch)
    rss0 = _status_kib("VmRSS") * 1024
    with _AnonPeak() as anon:
        t0 = time.perf_counter()
        checksum = work()
        seconds = time.perf_counter() - t0
    return {
        "case": case, "rows": n, "bytes": nbytes, "seconds": seconds, "checksum": checksum,
        "rss0": rss0, "peak_rss": _status_kib("VmHWM") * 1024, "peak_anon": anon.peak,
    }


def _prepare(case: str, ep: Any, snapshot: str, scratch: str) -> Any:
    """Imports and setup outside the timed region; returns the timed callable (-> float checksum)."""
    if case == "zarr":  # the floor: one plain zarr read per array, no snapstore
        import zarr

        group = zarr.open_group(snapshot, mode="r")
        arrays = [group[f"{STREAM}/epochs/{EPOCH}/seen/{p}"] for p in ("0", "1")]
        return lambda: float(sum(a[: len(ep)].sum() for a in arrays))
    if case == "numpy":
        return lambda: float(ep.to_numpy()["0"][-1].sum())
    if case == "memmap":
        from snapstore import export

        def to_memmaps() -> float:
            specs = export.out_specs(ep)
            out = {k: np.lib.format.open_memmap(os.path.join(scratch, f"{k}.npy"), mode="w+", shape=s, dtype=d)
                   for k, (s, d) in specs.items()}
            return float(ep.to_numpy(out=out)["0"][-1].sum())

        return to_memmaps
    if case == "batches-concat":  # what one writes without to_numpy: a list of batches, then np.concatenate
        return lambda: float(np.concatenate([b[0].numpy() for b in ep.batches()])[-1].sum())
    if case == "replay":
        return lambda: float(sum(float(b[0][-1].sum()) for b in ep.replay_loader()))
    if case in ("tf-rows", "tf-batch256"):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf  # noqa: F401  (imported outside the timed region)

        ds = ep.stream.to_tf_dataset(epoch=EPOCH, channels_last=True)
        if case == "tf-batch256":
            ds = ds.batch(256)

        def iterate() -> float:
            last = None
            for last in ds:
                pass
            return float(last[0].numpy().sum()) if last is not None else 0.0

        return iterate
    if case == "dask-sum":
        import dask

        arrays = ep.to_dask()
        return lambda: float(dask.compute(arrays["0"].sum(), arrays["1"].sum())[0])
    raise SystemExit(f"unknown case {case!r}; cases: {', '.join(CASES)}")


def _available(case: str) -> bool:
    need = {"tf-rows": "tensorflow", "tf-batch256": "tensorflow", "dask-sum": "dask", "zarr": "zarr"}.get(case)
    return need is None or importlib.util.find_spec(need) is not None


def _in_subprocess(case: str, snapshot: str, scratch: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, __file__, "--case", case, "--snapshot", snapshot, "--scratch", scratch],
        capture_output=True, text=True, env=env, check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"case {case} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- driver ----------------------------------------------------------------------------------


def _touch_memory(nbytes: int) -> None:
    """Fault in and free ``nbytes`` of memory, so the cases do not pay a VM's first-touch cost."""
    block = np.ones(nbytes, dtype=np.uint8)
    del block


def table(results: list[dict[str, Any]]) -> str:
    base = next((r["seconds"] for r in results if r["case"] == "zarr"), None)
    lines = [f"{'case':<15} {'seconds':>8} {'MB/s':>8} {'vs zarr':>8} "
             f"{'rss0 MB':>8} {'peak rss MB':>12} {'peak anon MB':>13}"]
    for r in results:
        ratio = f"{base / r['seconds']:.2f}x" if base else "-"
        lines.append(
            f"{r['case']:<15} {r['seconds']:>8.2f} {r['bytes'] / MIB / r['seconds']:>8.0f} {ratio:>8} "
            f"{r['rss0'] / MIB:>8.0f} {r['peak_rss'] / MIB:>12.0f} {r['peak_anon'] / MIB:>13.0f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=8.0, help="epoch size in MiB of rows (default 8: a smoke run)")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--workdir", help="where the snapshot and memmaps go (default: a temporary directory)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--in-process", action="store_true",
                        help="run the cases in this process (fast, for smoke tests; memory columns then mix the cases)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case, print JSON
    parser.add_argument("--snapshot", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(args.case, args.snapshot, args.scratch)))
        return []

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-export-"))
    work.mkdir(parents=True, exist_ok=True)
    snapshot = work / "bench.snap"
    t0 = time.perf_counter()
    rows = record_epoch(snapshot, args.size_mb)
    print(f"recorded {rows} rows ({rows * ROW_BYTES / MIB:.0f} MiB of rows) "
          f"in {time.perf_counter() - t0:.1f} s at {snapshot}")
    _touch_memory(2 * rows * ROW_BYTES)
    results = []
    load = os.getloadavg()[0]
    try:
        for case in args.cases:
            if not _available(case):
                print(f"skipping {case}: its package is not installed")
                continue
            scratch = work / f"scratch-{case}"
            scratch.mkdir(exist_ok=True)
            try:
                run = run_case if args.in_process else _in_subprocess
                results.append(run(case, str(snapshot), str(scratch)))
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(table(results))
    print(f"load average (1 min) {load:.1f} before the cases, {os.getloadavg()[0]:.1f} after; {os.cpu_count()} CPUs")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
