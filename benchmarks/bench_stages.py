"""Where a recorded loader-bound epoch's time goes: snapstore's write path, its stages switched off one by one.

    python benchmarks/bench_stages.py --full    # CIFAR-like (50,000 samples), about 4 minutes on 2 cores
    python benchmarks/bench_stages.py           # tiny, seconds (tests/benchmarks/test_bench_stages.py runs it)

The loop is ``bench_record.py``'s loader-bound one: ``num_workers=0``,
``torch.set_num_threads(1)``, ``images.sum()`` a batch, no step. Each
recorded line times the second epoch of ``Recorder(path).wrap(loader,
raw=None)`` (seen rows, labels, indices, order and hashes: what every epoch
after the first records) after an untimed first one, up to its durable
commit (``Recorder.close()`` is not timed). Line by line, one more
stage of the write path is switched off, from the disk back to the training
thread, so the drop from one line to the next is what that stage costs the
loop:

1. snapstore as shipped;
2. no fsync of chunk files (nor of the commits);
3. no chunk stored: encoded, then dropped;
4. no chunk encoded: the encoder threads return at once (no chunk hash, Blosc, CRC32C);
5. no row hashes in the writer process;
6. no rows staged into chunks: the writer process receives each batch's rows and drops them.

What line 6 still costs is the training thread's capture, copy and hand-off.
The minimal recorder (``bench_limits.py``: copy, background LZ4, crc32c, one
file) is the last line, for reference. Stages are switched off by replacing
snapstore functions for the duration of a line, before its ``Recorder`` forks
its writer process, which inherits them (the snapshots these lines write are
not readable, and nothing reads them). Per line: the ratio of its
samples/s to the bare epoch of the same round (bare and recorded epochs
alternate, round after round), and CPU seconds of the epoch by thread: the
training thread, the training process's other threads, snapstore's writer
process's main thread, and its other threads (encoders, fsyncs, zarr's).
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from snapstore import Recorder
from snapstore.core import hashing
from snapstore.storage import writers

if __package__:  # imported from the package `benchmarks` (tests/benchmarks/test_bench_stages.py)
    from . import workloads
    from .bench_record import MinimalPeer, timed_epoch
else:  # run as a script: its folder is first on sys.path
    import workloads
    from bench_record import MinimalPeer, timed_epoch


def _encode_nothing(self: writers.ChunkWriter, where: Any, codecs: Any, block: np.ndarray, table: dict, c: int,
                    n: int, recycle: bool) -> None:
    table[c] = (n, 0)
    if recycle:
        self.buffers.give_back([block])


#: The stages line by line switches off, each with the snapstore functions it replaces while the line runs.
STAGES: list[tuple[str, list[tuple[Any, str, Any]]]] = [
    ("snapstore as shipped", []),
    ("no fsync", [(writers, "_fsync", lambda path, **_: None)]),
    ("no chunk stored", [(writers, "store_chunk", lambda where, data: None)]),
    ("no chunk encoded", [(writers.ChunkWriter, "_encode_and_store", _encode_nothing)]),
    ("no row hashes", [(hashing, "hash_fields", lambda fields: {})]),
    ("no rows staged", [(writers.RowSink, "put", lambda self, start, rows: None)]),
]


@contextlib.contextmanager
def switched_off(replaced: list[tuple[Any, str, Any]]) -> Iterator[None]:
    """Replace each ``(owner, name, value)`` while the block runs; put the originals back after it."""
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in replaced]
    try:
        for owner, name, value in replaced:
            setattr(owner, name, value)
        yield
    finally:
        for owner, name, value in originals:
            setattr(owner, name, value)


def thread_cpu(writer: int | None = None) -> dict[int, tuple[str, float]]:
    """CPU seconds so far of each thread of this process and of the writer process ``writer`` (Linux
    ``schedstat``: time on a CPU), by thread id, with its group: training (this process's main thread),
    other (this process's other threads: zarr's, torch's), writer (the writer process's main thread),
    writer threads (its encoders, fsyncs and zarr's threads, which the OS does not tell apart)."""
    out = {}
    for pid in ("self", *([writer] if writer else [])):
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    seconds = int(f.read().split()[0]) / 1e9
            except FileNotFoundError:  # the thread ended
                continue
            main = str(tid) == str(pid if pid != "self" else os.getpid())
            group = ("training" if main else "other") if pid == "self" else ("writer" if main else "writer threads")
            out[int(tid)] = (group, seconds)
    return out


def _epoch(start: Any, put: Any = None, finish: Any = None,
           writer: int | None = None) -> tuple[float, collections.Counter]:
    """Seconds of one timed epoch, and the CPU seconds its threads (and those of the writer process ``writer``)
    spent in it by group (threads that end during the epoch are not counted)."""
    before = thread_cpu(writer)
    seconds = timed_epoch(start, 0.0, put, finish)["seconds"]
    cpu: collections.Counter = collections.Counter()
    for tid, (group, spent) in thread_cpu(writer).items():
        cpu[group] += spent - before.get(tid, (group, 0.0))[1]
    return seconds, cpu


def run(full: bool = False, repeat: int | None = None, out: Any = sys.stdout) -> dict[str, Any]:
    """Time the bare epoch, each line of ``STAGES`` and the minimal recorder, ``repeat`` rounds; print the table
    and return ``{line: {"ratio": median ratio to bare, "cpu": {group: median CPU seconds}}}``."""
    repeat = repeat or (3 if full else 1)
    w = workloads.workloads(full)["cifar"]
    ds = workloads.make_dataset(w)
    tmp = tempfile.mkdtemp(prefix="snapstore-stages-")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ratios: dict[str, list[float]] = collections.defaultdict(list)
    cpus: dict[str, list[collections.Counter]] = collections.defaultdict(list)
    try:
        for r in range(repeat):
            bare, cpu = _epoch(lambda: iter(workloads.make_loader(ds, w, 0)))
            cpus["bare"].append(cpu)
            for k, (label, _) in enumerate(STAGES):
                with switched_off([r for _, replaced in STAGES[: k + 1] for r in replaced]):
                    recorder = Recorder(os.path.join(tmp, f"r{r}-{k}"))
                    stream = recorder.wrap(workloads.make_loader(ds, w, 0), name="train", raw=None)
                    timed_epoch(lambda: iter(stream), 0.0)
                    writer = recorder._session.writer_pid
                    seconds, cpu = _epoch(lambda: iter(stream), writer=writer)  # to its durable commit
                    recorder.close()  # after the threads' CPU is read: its threads end there
                ratios[label].append(bare / seconds)
                cpus[label].append(cpu)
            peer = MinimalPeer(ds, tmp)
            seconds, cpu = _epoch(lambda: iter(workloads.make_loader(ds, w, 0)), peer.put, peer.end)
            ratios["minimal recorder"].append(bare / seconds)
            cpus["minimal recorder"].append(cpu)
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(tmp, ignore_errors=True)
    groups = ("training", "other", "writer", "writer threads")
    results = {label: {"ratio": statistics.median(ratios[label]) if label in ratios else 1.0,
                       "cpu": {g: statistics.median(c[g] for c in cpus[label]) for g in groups}}
               for label in ["bare", *(label for label, _ in STAGES), "minimal recorder"]}
    p = lambda *a: print(*a, file=out, flush=True)  # noqa: E731
    p(f"# Where a recorded loader-bound epoch's time goes ({os.cpu_count()} CPUs; {w.samples:,} CIFAR-like samples, "
      f"num_workers=0; medians of {repeat} rounds)\n")
    p("Each snapstore line switches off one more stage than the line above it.\n")
    p("| line | ratio to bare | change from the line above | CPU s: " + " | ".join(groups) + " |")
    p("| --- | --- | --- | " + " | ".join("---" for _ in groups) + " |")
    above = None
    for label, r in results.items():
        change = "" if above is None or label in ("minimal recorder", STAGES[0][0]) else f"{r['ratio'] - above:+.3f}"
        p(f"| {label} | {r['ratio']:.3f} | {change} | " + " | ".join(f"{r['cpu'][g]:.2f}" for g in groups) + " |")
        above = r["ratio"]
    return results


def main(argv: list[str] | None = None) -> int:
    return workloads.cli(run, __doc__, argv, "rounds (default 3 full, 1 tiny)")


if __name__ == "__main__":
    raise SystemExit(main())
