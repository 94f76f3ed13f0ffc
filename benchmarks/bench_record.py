"""Recording overhead, writer throughput and read-back speed of snapstore against the ways people do it today.

One run, one generated workload, one table::

    python benchmarks/bench_record.py --full      # the README numbers (about 40 minutes on 2 cores)
    python benchmarks/bench_record.py --full --part loops   # only the training-loop tables (~27 minutes)
    python benchmarks/bench_record.py --full --part cpu     # CPU per GB at num_workers=0, 12 runs (~17 minutes)
    python benchmarks/bench_record.py             # tiny size, seconds (what tests/benchmarks/test_bench_record.py runs)

What is measured (medians of ``--repeat`` runs; within a run of a loop the lines run one after another, in an
order rotated run by run, so machine noise and what one line leaves behind for the next hit all alike; glibc's
allocator pinned, ``pin_malloc``, so freed blocks of a batch's size are reused alike in every line):

* the training loop, recorded: one epoch of a loop over a ``DataLoader`` (CIFAR-like:
  loader-bound, and step-bound with a simulated accelerator step of 10 and 30 ms
  a batch in which the training thread sleeps, GIL released; ImageNet-like:
  loader-bound; ``num_workers`` 0 and 2) bare, recorded by snapstore
  (``Recorder(path).wrap(loader)``: seen rows, label, index, order, and the raw
  uint8 crop once per index; epoch 0, which captures the raw crops, and epoch 1,
  whose time includes ``Recorder.close()``, reported apart) and recorded by each
  peer on the training thread (``torch.save`` of every batch, preallocated
  NumPy saved at the epoch's end, h5py, and ``bench_limits.py``'s minimal
  recorder: copy + background LZ4 + crc32c + one file), in one run, beside
  ``bench_limits.py``'s durable floor (a writer process fed through shared
  memory storing LZ4 + crc32c 2 MiB chunks, a file each, fsynced: the least a
  crash-consistent recorder built as snapstore's does) and its hashed floor (the
  same, plus the xxh3 content hash of every row and every chunk that snapstore's
  format names: the least a recorder of that format does). Per line:
  the ratio of its samples/s to the bare epoch of the same run, the
  training thread's time a batch inside the recorder (wall time of ``next()``
  and the peer's call over the bare loop's ``next()``; and its CPU time,
  ``time.thread_time``, over the bare loop's), CPU-seconds (``getrusage`` of the
  process and its reaped workers, and ``/proc`` of its live children, less the
  memory sampling thread's) per GB recorded over the bare loop's, and peak PSS
  over the bare loop's. The loop's own work per batch is
  ``images.sum()`` (it reads every element once); ``num_workers=0`` runs with
  ``torch.set_num_threads(1)``.
* writer throughput: the same epoch as pre-made batches ``(image float32, raw
  uint8, label, index)`` written by snapstore and by each peer, through the page
  cache (nobody fsyncs), until the writer's close returns; the writers take
  turns, round robin, so the disk's swings hit all alike. A last line, the
  ceiling, only encodes the chunks with snapstore's default codecs on every
  CPU and stores nothing: no writer with those codecs can be faster.
* replay: every batch read back in order, cold (every file of the store evicted
  with ``posix_fadvise(DONTNEED)`` after ``fsync``, reader opened afresh) and warm;
  and the median latency of random single-sample reads, cold (files evicted and
  no in-process cache before each read), warm (the same sample read just before)
  and again (its fifth read in a row: every cache of every layer warm).
* bytes on disk (sum of file sizes) per sample, files created, and peak PSS
  (this process and its child processes: ``PeakPss``) above the bare loop.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import queue
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import snapstore

if __package__:  # imported from the package `benchmarks` (tests/benchmarks/test_bench_record.py)
    from . import peers, workloads
    from .workloads import Workload
else:  # run as a script: its folder is first on sys.path
    import peers
    import workloads
    from workloads import Workload

MB = 1e6
SLOW = 30.0  # seconds: a measurement this slow is taken once, not repeated


# -- measuring tools ----------------------------------------------------------
def files_under(path: str) -> list[str]:
    return [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]


def disk_usage(path: str) -> tuple[int, int]:
    """(bytes, files) under ``path`` (apparent file sizes)."""
    files = files_under(path)
    return sum(os.path.getsize(f) for f in files), len(files)


class Evictor:
    """Drops a store's files from the page cache, so the next read comes from the disk.

    Written back once (``fdatasync``) when created; each call then only
    ``posix_fadvise(DONTNEED)``s the files through descriptors kept open.
    """

    def __init__(self, files: list[str]) -> None:
        self.fds = [os.open(f, os.O_RDONLY) for f in files]
        for fd in self.fds:
            os.fdatasync(fd)

    def __call__(self) -> None:
        for fd in self.fds:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)


def _pss(pid: int) -> int:
    """Proportional set size of process ``pid`` (bytes): its resident pages, each shared page divided by the
    processes sharing it. RSS would count the pages a forked process (a loader worker, snapstore's writer)
    shares with its parent once in each."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
    except (FileNotFoundError, ProcessLookupError, StopIteration):
        return 0


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


class PeakPss:
    """Peak memory (PSS: ``_pss``) of this process and its child processes while the block runs (bytes).

    Sampled by a thread whose CPU seconds so far are ``cpu`` (the harness's, not the recorder's: callers
    subtract them), every 50 ms or, where a sample costs more, as often as keeps the thread under ``DUTY``
    of a CPU. For each sample the kernel walks every process's page tables: 3-9 ms of CPU for the
    CIFAR-like training process and each of its loader workers, 7-14 ms for the ImageNet-like ones, 2 ms
    for snapstore's writer. Sampled every 50 ms regardless (until issue 17 measured it), the samples took
    22 ms of CPU every 50 ms in the CIFAR-like loop with two workers, 37 ms in the ImageNet-like one.
    """

    DUTY = 0.05

    def __enter__(self) -> PeakPss:
        self.peak = 0
        self.cpu = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        me, start = os.getpid(), time.thread_time()
        while True:
            before = time.thread_time()
            self.peak = max(self.peak, _pss(me) + sum(_pss(c) for c in _children(me)))
            now = time.thread_time()
            self.cpu = now - start
            if self._stop.wait(max(0.05, (now - before) / self.DUTY)):
                return

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# -- 1. the training loop, recorded ------------------------------------------
def train_loop(iterable: Any) -> int:
    """The benchmark's training step: touch every element of the images once."""
    n = 0
    for images, _labels, _index in iterable:
        images.sum()
        n += len(images)
    return n


def run_recorded(ds: Any, w: Workload, workers: int, path: str, **options: Any) -> tuple[float, int]:
    """(seconds, peak PSS) of one epoch of the loop recorded by snapstore, ``close()`` included."""
    loader = workloads.make_loader(ds, w, workers)
    shutil.rmtree(path, ignore_errors=True)  # deleting the previous run is not the recorder's cost
    with PeakPss() as pss:
        t = time.perf_counter()
        with snapstore.Recorder(path, **options) as rec:
            n = train_loop(rec.wrap(loader, name="train"))
        dt = time.perf_counter() - t
    assert n == w.samples
    return dt, pss.peak


#: Simulated accelerator step per batch, seconds: 0 is the loader-bound loop; in the others the training
#: thread sleeps (the GIL released) as it does while a GPU computes.
STEPS = (0.0, 0.010, 0.030)
#: ``--part cpu``: the lines and runs that measure issue 17's CPU target where it is closest. Each run's CPU per GB
#: over the minimal recorder's moved 1.2-1.6x between runs of the same loop minutes apart (RESULTS.md, session 19):
#: a median needs a dozen runs, the lines in rotating order.
CPU_RECORDERS = ("snapstore", "minimal recorder", "durable floor", "hashed floor")
CPU_REPEAT = 12
LOOP_RECORDERS = ("snapstore", "torch.save per batch", "preallocated NumPy", "h5py", "minimal recorder",
                  "durable floor", "hashed floor")


def pin_malloc() -> None:
    """Fix glibc's mmap threshold (32 MiB, its largest) and trim threshold (256 MiB) in this process and the
    processes it forks, so that freed blocks of a few MiB (the loader's batch tensors, the peers' copies) are
    reused alike in every line. glibc's adaptive thresholds (its default) otherwise map some of them afresh
    and hand heap back at times, at random: the bare loop itself took from 1.5 to 98 thousand page faults an
    epoch (+0.25 CPU-s on this VM), which every line's CPU over bare inherited (session 19). Nothing changes
    where the C library has no ``mallopt`` (not glibc)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(-3, 32 * 1024 * 1024)  # M_MMAP_THRESHOLD
    mallopt(-1, 256 * 1024 * 1024)  # M_TRIM_THRESHOLD


def _cpu() -> float:
    """CPU seconds of this process (every thread) and of its children, reaped (``getrusage``) or alive
    (``/proc``): the loader's workers, snapstore's writer process."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime + sum(_live_cpu(pid) for pid in _children(os.getpid()))


def _live_cpu(pid: int) -> float:
    """CPU seconds so far of the live process ``pid`` (user + system: ``/proc/<pid>/stat`` fields 14 and 15)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_epoch(start: Callable[[], Any], step: float, put: Callable[..., None] | None = None,
                finish: Callable[[], None] | None = None) -> dict[str, float]:
    """One epoch of the training loop: ``next()`` of the iterator ``start()`` makes, the recorder's ``put`` of
    the batch (peers), ``images.sum()`` and a ``step``-second sleep (the accelerator); ``finish()`` after the
    last batch. ``inside``: seconds the training thread spent in ``start``, ``next``, ``put`` and ``finish``;
    ``start``: when the epoch began (``time.perf_counter``)."""
    with PeakPss() as pss:
        t, cpu, thread, sampling = time.perf_counter(), _cpu(), time.thread_time(), pss.cpu
        it = start()
        inside = time.perf_counter() - t
        n = batches = 0
        while True:
            a = time.perf_counter()
            try:
                images, labels, index = next(it)
            except StopIteration:
                inside += time.perf_counter() - a
                break
            if put is not None:
                put(images, labels, index)
            inside += time.perf_counter() - a
            images.sum()
            if step:
                time.sleep(step)
            n += len(images)
            batches += 1
        if finish is not None:
            a = time.perf_counter()
            finish()
            inside += time.perf_counter() - a
        seconds = time.perf_counter() - t
        thread = time.thread_time() - thread
        cpu = _cpu() - cpu - (pss.cpu - sampling)
    return {"seconds": seconds, "cpu": cpu, "inside": inside, "thread": thread, "pss": pss.peak,
            "batches": batches, "samples": n, "start": t}


class LoopPeer:
    """How people record a training loop's batches today: ``put`` each batch (images, its raw crops, labels,
    indices: every epoch, 15.4 KB a CIFAR-like sample), ``end`` each epoch."""

    def __init__(self, ds: Any, out: str) -> None:
        self.ds, self.out, self.epoch = ds, out, 0

    def put(self, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> None:
        raise NotImplementedError

    def end(self) -> None:
        self.epoch += 1


class TorchSavePeer(LoopPeer):
    """``torch.save`` of each batch (a dict of tensors) into its own file, on the training thread."""

    def __init__(self, ds: Any, out: str) -> None:
        super().__init__(ds, out)
        self.batch = 0

    def put(self, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> None:
        raw = torch.from_numpy(self.ds.crops[index.numpy()])
        torch.save({"image": images, "raw": raw, "label": labels, "index": index},
                   os.path.join(self.out, f"e{self.epoch}-b{self.batch:06d}.pt"))
        self.batch += 1


class PreallocPeer(LoopPeer):
    """NumPy arrays of an epoch's size, allocated once, filled batch by batch, ``np.save``d at each epoch's end."""

    def __init__(self, ds: Any, out: str) -> None:
        super().__init__(ds, out)
        n, shape = len(ds), ds.crops.shape[1:]
        self.arrays = {"image": np.empty((n, *shape), np.float32), "raw": np.empty((n, *shape), np.uint8),
                       "label": np.empty(n, np.int64), "index": np.empty(n, np.int64)}
        self.lo = 0

    def put(self, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> None:
        idx = index.numpy()
        hi = self.lo + len(idx)
        for name, rows in (("image", images.numpy()), ("raw", self.ds.crops[idx]), ("label", labels.numpy()),
                           ("index", idx)):
            self.arrays[name][self.lo : hi] = rows
        self.lo = hi

    def end(self) -> None:
        for name, a in self.arrays.items():
            np.save(os.path.join(self.out, f"e{self.epoch}-{name}.npy"), a[: self.lo])
        self.lo = 0
        super().end()


class H5Peer(LoopPeer):
    """One HDF5 file an epoch, datasets chunked by batch, no compression, written batch by batch."""

    def __init__(self, ds: Any, out: str) -> None:
        super().__init__(ds, out)
        self.h5py = peers._need("h5py", "h5py")
        self.file: Any = None

    def put(self, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> None:
        idx = index.numpy()
        fields = {"image": images.numpy(), "raw": self.ds.crops[idx], "label": labels.numpy(), "index": idx}
        if self.file is None:
            n, bs = len(self.ds), len(idx)
            self.file = self.h5py.File(os.path.join(self.out, f"e{self.epoch}.h5"), "w")
            self.sets = {k: self.file.create_dataset(k, shape=(n, *v.shape[1:]), dtype=v.dtype,
                                                     chunks=(bs, *v.shape[1:])) for k, v in fields.items()}
            self.lo = 0
        for k, v in fields.items():
            self.sets[k][self.lo : self.lo + len(idx)] = v
        self.lo += len(idx)

    def end(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        super().end()


def _bench_limits() -> Any:
    """The module ``bench_limits`` (imported here, not at the top: it imports this module)."""
    if __package__:
        from . import bench_limits
    else:
        import bench_limits
    return bench_limits


class MinimalPeer(LoopPeer):
    """``bench_limits.py``'s minimal recorder: the training thread copies each batch and its raw crops; a
    background thread Blosc-LZ4 encodes each block, crc32c-checksums it and appends it to one file an epoch
    (no fsync, no index, no schema)."""

    def __init__(self, ds: Any, out: str) -> None:
        super().__init__(ds, out)
        self.jobs: queue.Queue = queue.Queue(maxsize=8)
        self.thread: threading.Thread | None = None

    def _store(self, path: str) -> None:
        with open(path, "wb") as f:
            while (blocks := self.jobs.get()) is not None:
                for b in blocks:
                    _bench_limits()._append(f, b)

    def put(self, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._store, args=(os.path.join(self.out, f"e{self.epoch}.bin"),))
            self.thread.start()
        idx = index.numpy()
        self.jobs.put([images.numpy().copy(), self.ds.crops[idx], labels.numpy().copy(), idx.copy()])

    def end(self) -> None:
        if self.thread is not None:
            self.jobs.put(None)
            self.thread.join()
            self.thread = None
        super().end()


def durable_floor(ds: Any, out: str) -> Any:
    """``bench_limits.py``'s durable floor: the training thread copies each batch and its raw crops into
    shared memory; a writer process stores them as LZ4 + crc32c 2 MiB chunks, a file each, fsynced (the least
    a crash-consistent recorder built as snapstore's, with a writer process, does)."""
    return _bench_limits().ProcessRecorder(ds, out, "durable")


def hashed_floor(ds: Any, out: str) -> Any:
    """The durable floor plus the content hashes snapstore's format names (xxh3-64 of every row and of every
    chunk, in the writer process): the least a recorder of that format, built as snapstore's, does."""
    return _bench_limits().ProcessRecorder(ds, out, "hashed")


PEER_LOOPS: dict[str, Callable[[Any, str], Any]] = {
    "torch.save per batch": TorchSavePeer, "preallocated NumPy": PreallocPeer, "h5py": H5Peer,
    "minimal recorder": MinimalPeer, "durable floor": durable_floor, "hashed floor": hashed_floor}


def _recorded_bytes(w: Workload, raw: bool) -> int:
    """Bytes a recorder is handed in one epoch: float32 images, labels, indices, and the raw uint8 crops."""
    row = 3 * w.size * w.size
    return w.samples * (row * 4 + 16 + (row if raw else 0))


def loop_lines(ds: Any, w: Workload, workers: int, step: float, tmp: str,
               recorders: tuple[str, ...] = LOOP_RECORDERS, shift: int = 0) -> dict[str, list[dict[str, float]]]:
    """One run of every line of one loop: the bare epoch, snapstore's epoch 0 (raw capture) and epoch 1
    (``close()`` included) in one ``Recorder``, and an epoch of each peer, in that order rotated by ``shift``
    (what a line costs depends on what ran before it: ``loops`` rotates the order run by run). Returns line ->
    [epoch stats]."""
    out: dict[str, list[dict[str, float]]] = {}

    def bare() -> None:
        out["bare"] = [timed_epoch(lambda: iter(workloads.make_loader(ds, w, workers)), step)]

    def recorded() -> None:
        path = os.path.join(tmp, "loop.snap")
        shutil.rmtree(path, ignore_errors=True)
        state: dict[str, Any] = {}

        def first() -> Any:
            state["rec"] = snapstore.Recorder(path)
            state["stream"] = state["rec"].wrap(workloads.make_loader(ds, w, workers), name="train")
            return iter(state["stream"])

        epoch0 = timed_epoch(first, step)
        epoch1 = timed_epoch(lambda: iter(state["stream"]), step, finish=lambda: state["rec"].close())
        epoch0["bytes"], epoch1["bytes"] = _recorded_bytes(w, True), _recorded_bytes(w, False)
        out["snapstore epoch 0"], out["snapstore epoch 1"] = [epoch0], [epoch1]

    def peer(name: str) -> None:
        where = os.path.join(tmp, "loop-peer")
        shutil.rmtree(where, ignore_errors=True)
        os.makedirs(where)
        recorder = PEER_LOOPS[name](ds, where)
        stats = timed_epoch(lambda: iter(workloads.make_loader(ds, w, workers)), step, recorder.put, recorder.end)
        stats["bytes"] = _recorded_bytes(w, True)
        out[name] = [stats]

    lines = ["bare", *recorders]
    for name in lines[shift % len(lines):] + lines[: shift % len(lines)]:
        if name == "bare":
            bare()
        elif name == "snapstore":
            recorded()
        else:
            peer(name)
    shutil.rmtree(os.path.join(tmp, "loop-peer"), ignore_errors=True)
    return {name: out[name] for name in ("bare", "snapstore epoch 0", "snapstore epoch 1", *recorders) if name in out}


def loops(w: Workload, ds: Any, workers: int, step: float, repeat: int, tmp: str,
          skipped: dict[str, str], recorders: tuple[str, ...] = LOOP_RECORDERS) -> dict[str, dict[str, float]]:
    """Medians over ``repeat`` runs of ``loop_lines`` (at full size after a bare epoch not counted; the order of
    the lines rotated run by run) of each line: samples/s, ratio to the bare epoch of the same run,
    training-thread ms a batch in the recorder (wall: ``next`` + ``put`` over the bare loop's ``next``; CPU:
    ``thread_time`` over the bare loop's), CPU-seconds per GB recorded over the bare loop's, that over the minimal
    recorder's of the same run (and its quartiles over the runs, from four runs on; NaN before), peak PSS over
    the bare loop's."""
    threads = torch.get_num_threads()
    if workers == 0:
        torch.set_num_threads(1)
    recorders = tuple(r for r in recorders if r not in skipped)
    runs: list[dict[str, list[dict[str, float]]]] = []
    try:
        if w.samples >= 10_000:  # full size: one bare epoch first, not counted (page cache, allocator, imports)
            timed_epoch(lambda: iter(workloads.make_loader(ds, w, workers)), step)
        for shift in range(repeat):
            try:
                run = loop_lines(ds, w, workers, step, tmp, recorders, shift)
            except peers.Unavailable as e:  # h5py missing: its line is skipped
                skipped["h5py"] = str(e)
                recorders = tuple(x for x in recorders if x != "h5py")
                run = loop_lines(ds, w, workers, step, tmp, recorders, shift)
            runs.append(run)
    finally:
        torch.set_num_threads(threads)

    def per_gb(run: dict[str, list[dict[str, float]]], line: str) -> float:
        """CPU-seconds per GB recorded over the bare loop's; NaN for the bare line and a line not run."""
        s = run[line][0] if line in run else {}
        return (s["cpu"] - run["bare"][0]["cpu"]) / (s["bytes"] / 1e9) if "bytes" in s else float("nan")

    out: dict[str, dict[str, float]] = {}
    for line in runs[0]:
        per = []
        for run in runs:
            bare, s = run["bare"][0], run[line][0]
            nb = max(1, s["batches"])
            per.append({
                "samples/s": s["samples"] / s["seconds"],
                "ratio": bare["seconds"] / s["seconds"],
                "inside ms": 1e3 * (s["inside"] - bare["inside"]) / nb,
                "thread ms": 1e3 * (s["thread"] - bare["thread"]) / nb,
                "cpu s/GB": per_gb(run, line),
                # over the minimal recorder's in the same run (a ratio per run, then the median: the machine's
                # swings between runs move both alike)
                "cpu / minimal": _over(per_gb(run, line), per_gb(run, "minimal recorder")),
                "pss": s["pss"] - bare["pss"],
            })
        out[line] = {k: median([p[k] for p in per]) for k in per[0]}
        over = [p["cpu / minimal"] for p in per if p["cpu / minimal"] == p["cpu / minimal"]]
        quartiles = statistics.quantiles(over, n=4) if len(over) >= 4 else [float("nan")] * 3
        out[line]["cpu / minimal q1"], out[line]["cpu / minimal q3"] = quartiles[0], quartiles[2]
    return out


def loop_table(results: dict[Any, dict[str, dict[str, float]]], ws: dict[str, Workload],
               p: Callable[..., None]) -> None:
    p("\n## The training loop, recorded (ratio = samples/s with the recorder / bare, same run; higher is better, "
      "1.00 = free)\n")
    p("Step: a simulated accelerator step per batch (the training thread sleeps, GIL released); 0 = loader-bound. "
      "snapstore records seen rows + raw crops once (epoch 0) with `Recorder(path).wrap(loader)` defaults; "
      "every peer records images + raw crops + labels + indices every epoch.\n")
    names = [n for n in next(iter(results.values())) if n != "bare"]
    p("| workload | step | num_workers | bare samples/s | " + " | ".join(names) + " |")
    p("| --- | --- | --- | --- | " + " | ".join("---" for _ in names) + " |")
    for (wname, step, nw), lines in results.items():
        cells = [f"{lines[n]['ratio']:.3f}" if n in lines else "-" for n in names]
        p(f"| {wname} | {step * 1e3:.0f} ms | {nw} | {_fmt(lines['bare']['samples/s'])} | " + " | ".join(cells) + " |")
    p("\nPer line: training-thread time a batch in the recorder (wall in next() + put() over the bare loop's "
      "next(); CPU: thread_time over the bare loop's), CPU-seconds (process + workers) per GB recorded over the "
      "bare loop's, and over the minimal recorder's (median of each run's own ratio; from four runs on, with its "
      "quartiles), peak PSS over the bare loop's.\n")
    p("| workload | step | num_workers | recorder | samples/s | ratio | ms/batch in recorder, wall | CPU | "
      "CPU-s per GB | / minimal recorder's | PSS over bare |")
    p("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for (wname, step, nw), lines in results.items():
        for name, r in lines.items():
            if name == "bare":
                continue
            over, q1, q3 = r["cpu / minimal"], r["cpu / minimal q1"], r["cpu / minimal q3"]
            cell = "-" if over != over else f"{over:.2f}x" + (f" ({q1:.2f}-{q3:.2f})" if q1 == q1 else "")
            p(f"| {wname} | {step * 1e3:.0f} ms | {nw} | {name} | {_fmt(r['samples/s'])} | {r['ratio']:.3f} "
              f"| {r['inside ms']:.2f} | {r['thread ms']:.2f} | {_fmt(r['cpu s/GB'], 2)} | {cell} "
              f"| {r['pss'] / MB:.0f} MB |")


# -- 2. writers ----------------------------------------------------------------
def writers() -> dict[str, tuple[Callable[..., None], Callable[[str, int], Any] | None]]:
    out: dict[str, tuple[Callable[..., None], Callable[[str, int], Any] | None]] = {
        "snapstore": (peers.write_snapstore, lambda o, b: peers.SnapstoreReader(o)),
        "snapstore compressor=zstd": (lambda b, o: peers.write_snapstore(b, o, compressor="zstd"), None),
        "snapstore compressor=none": (lambda b, o: peers.write_snapstore(b, o, compressor="none"), None),
    }
    out.update(peers.PEERS)
    out[CEILING] = (peers.encode_only, None)
    return out


CEILING = "(ceiling) encode only: LZ4 + crc32c, thread per CPU, nothing stored"


def measure_writers(writers: dict[str, Callable[..., None]], batches: list[peers.Batch], repeat: int,
                    tmp: str) -> tuple[dict[str, dict[str, float]], dict[str, str], dict[str, str]]:
    """Each writer writes the batches ``repeat`` times, round robin (writer 1, 2, ..., 1, 2, ...), so
    the page cache's write-back state, which swings the disk's speed several-fold here, hits all
    alike. Returns (results, where each wrote, skipped with the reason); outputs stay for the readers."""
    times: dict[str, list[float]] = {}
    peaks: dict[str, list[int]] = {}
    where = {name: os.path.join(tmp, "w-" + "".join(c if c.isalnum() else "_" for c in name)) for name in writers}
    skipped: dict[str, str] = {}
    for _ in range(repeat):
        for name, write in writers.items():
            if name in skipped or (times.get(name) and times[name][0] > SLOW):
                continue
            shutil.rmtree(where[name], ignore_errors=True)
            os.makedirs(where[name])
            base = _pss(os.getpid())
            try:
                with PeakPss() as pss:
                    t = time.perf_counter()
                    write(batches, where[name])
                    dt = time.perf_counter() - t
            except peers.Unavailable as e:
                skipped[name] = str(e)
                continue
            times.setdefault(name, []).append(dt)
            peaks.setdefault(name, []).append(pss.peak - base)
    n = sum(len(b[0]) for b in batches)
    data = sum(t.numel() * t.element_size() for b in batches for t in b)
    results = {}
    for name, ts in times.items():
        size, files = disk_usage(where[name])
        dt = median(ts)
        results[name] = {"MB/s": data / dt / MB, "samples/s": n / dt, "bytes/sample": size / n, "files": files,
                         "seconds": dt, "pss": median(peaks[name])}
        print(f"[bench] writer {name}: {results[name]}", file=sys.stderr, flush=True)
    return results, where, skipped


def measure_reader(make: Callable[[], Any], out: str, repeat: int, reads: int, samples: int,
                   seed: int = 1) -> dict[str, float]:
    evict = Evictor(files_under(out))
    cold, warm = [], []
    for _ in range(repeat):
        if cold and cold[0] + warm[0] > SLOW:
            break
        evict()
        t = time.perf_counter()
        reader = make()
        n = _count(reader.replay())
        cold.append(time.perf_counter() - t)
        reader.close()
        t = time.perf_counter()
        reader = make()
        _count(reader.replay())
        warm.append(time.perf_counter() - t)
        reader.close()
    ks = np.random.default_rng(seed).integers(0, samples, reads).tolist()
    cold_lat, warm_lat, again_lat = [], [], []
    for k in ks:
        evict()
        reader = make()
        lat = _latencies(lambda: reader.sample(k), AGAIN)  # noqa: B023 - called before the loop moves on
        cold_lat.append(lat[0])
        warm_lat.append(lat[1])
        again_lat.append(lat[-1])
        reader.close()
    evict.close()
    return {"replay cold": n / median(cold), "replay warm": n / median(warm),
            "random cold us": median(cold_lat) * 1e6, "random warm us": median(warm_lat) * 1e6,
            "random again us": median(again_lat) * 1e6}


AGAIN = 5  # "again": the 5th read of the same sample in a row (the caches of every layer warm)


def _latencies(read: Callable[[], Any], times: int) -> list[float]:
    """Seconds of each of ``times`` consecutive calls of ``read``."""
    out = []
    for _ in range(times):
        t = time.perf_counter()
        read()
        out.append(time.perf_counter() - t)
    return out


def _count(batches: Any) -> int:
    """Rows in an iterable of batches: tuples of columns, dicts of columns, or lists of sample dicts."""
    n = 0
    for b in batches:
        if isinstance(b, dict):
            n += len(next(iter(b.values())))
        elif isinstance(b, list) and isinstance(b[0], dict):
            n += len(b)
        else:
            n += len(b[0])
    return n


# -- the table -----------------------------------------------------------------
def run(full: bool = False, repeat: int | None = None, tmp: str | None = None, only: list[str] | None = None,
        reads: int | None = None, out: Any = sys.stdout, part: str = "all") -> dict[str, Any]:
    """Run every measurement (``part="loops"``: only the training loops; ``"cpu"``: only the CIFAR-like
    ``num_workers=0`` loops with snapstore and ``CPU_RECORDERS``, ``CPU_REPEAT`` runs each) and print the tables;
    returns the numbers (``only``: a subset of the writer peers)."""
    cpu = part == "cpu"
    repeat = repeat or (CPU_REPEAT if cpu and full else 3 if full else 1)
    reads = reads or (1000 if full else 20)
    own_tmp = tmp is None
    tmp = tmp or tempfile.mkdtemp(prefix="snapstore-bench-")
    results: dict[str, Any] = {"loops": {}, "writers": {}, "readers": {}, "skipped": {}}
    p = lambda *a: print(*a, file=out, flush=True)  # noqa: E731
    try:
        ws = workloads.workloads(full)
        load = os.getloadavg()[0]
        for key, w in ws.items():
            if cpu and key != "cifar":
                continue
            ds = workloads.make_dataset(w)
            for step in STEPS if key == "cifar" else (0.0,):
                for nw in (0,) if cpu else (0, 2):
                    r = results["loops"][(w.name, step, nw)] = loops(w, ds, nw, step, repeat, tmp, results["skipped"],
                                                                     CPU_RECORDERS if cpu else LOOP_RECORDERS)
                    print(f"[bench] loop {w.name} step={step} num_workers={nw}: "
                          + ", ".join(f"{k} {v['ratio']:.3f}" for k, v in r.items()), file=sys.stderr, flush=True)
            del ds
        results["load"] = (load, os.getloadavg()[0])
        if part == "all":
            measure_io(ws, repeat, reads, tmp, only, results)
        print_table(results, ws, repeat, reads, p)
    finally:
        if own_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return results


def measure_io(ws: dict[str, Workload], repeat: int, reads: int, tmp: str, only: list[str] | None,
               results: dict[str, Any]) -> None:
    """The writers and readers tables (pre-made batches, no training loop)."""
    raw_lat = raw_latency(ws["cifar"], tmp, reads)
    w = ws["cifar"]
    batches = workloads.premade_batches(w)
    chosen = {name: wr for name, wr in writers().items()
              if only is None or name in only or name.startswith(("snapstore", CEILING))}
    results["writers"], where, skipped = measure_writers({k: v[0] for k, v in chosen.items()}, batches, repeat, tmp)
    results["skipped"].update(skipped)
    for name, (_, reader) in chosen.items():
        if reader is not None and name in results["writers"]:
            try:
                results["readers"][name] = measure_reader(lambda: reader(where[name], w.batch),  # noqa: B023
                                                          where[name], repeat, reads, w.samples)
                print(f"[bench] reader {name}: {results['readers'][name]}", file=sys.stderr, flush=True)
            except peers.Unavailable as e:
                results["skipped"][name] = str(e)
        shutil.rmtree(where[name], ignore_errors=True)
    results["readers"]["snapstore stream.raw[i]"] = raw_lat


def raw_latency(w: Workload, tmp: str, reads: int) -> dict[str, float]:
    """Random ``stream.raw[i]`` reads of a recorded CIFAR-like epoch, cold and warm."""
    ds = workloads.make_dataset(w)
    path = os.path.join(tmp, "raw.snap")
    run_recorded(ds, w, 0, path)
    evict = Evictor(files_under(path))
    cold, warm, again = [], [], []
    for i in np.random.default_rng(2).integers(0, w.samples, reads).tolist():
        evict()
        raw = snapstore.open(path)["train"].raw
        raw.indices  # noqa: B018 - the index map is loaded once per open, not per read
        lat = _latencies(lambda: raw[i], AGAIN)  # noqa: B023 - called before the loop moves on
        cold.append(lat[0])
        warm.append(lat[1])
        again.append(lat[-1])
    evict.close()
    shutil.rmtree(path, ignore_errors=True)
    return {"random cold us": median(cold) * 1e6, "random warm us": median(warm) * 1e6,
            "random again us": median(again) * 1e6}


def _over(a: float, b: float) -> float:
    """``a / b``; NaN where ``b`` is 0 (a tiny run's CPU over bare can be)."""
    return a / b if b else float("nan")


def _fmt(x: float, digits: int = 0) -> str:
    if x != x:  # nan
        return "-"
    return f"{x:,.{digits}f}"


def print_table(results: dict[str, Any], ws: dict[str, Workload], repeat: int, reads: int,
                p: Callable[..., None]) -> None:
    before, after = results["load"]
    p(f"\nsnapstore {snapstore.__version__}, torch {torch.__version__}, {os.cpu_count()} CPUs, "
      f"load average {before:.1f} before the loops, {after:.1f} after; medians of {repeat} runs (one run where a "
      f"run takes over {SLOW:.0f} s); loop work per batch: images.sum() and the step; num_workers=0 runs use "
      "torch.set_num_threads(1)")
    loop_table(results["loops"], ws, p)
    for name, why in results["skipped"].items():
        p(f"\nskipped {name}: {why}")
    if not results["writers"]:
        return
    wr = results["writers"]
    best = max((v["MB/s"] for k, v in wr.items() if not k.startswith(("snapstore", CEILING))), default=float("nan"))
    w = ws["cifar"]
    p(f"\n## Writers: the {w.name} epoch as {len(range(0, w.samples, w.batch))} pre-made batches of {w.batch} "
      f"(image float32 + raw uint8 + label + index, {w.sample_bytes:,} B/sample)\n")
    p("| writer | MB/s | samples/s | bytes on disk / sample | files | peak PSS over start | snapstore / this |")
    p("| --- | --- | --- | --- | --- | --- | --- |")
    ss = wr.get("snapstore", {}).get("MB/s", float("nan"))
    for name, r in wr.items():
        p(f"| {name} | {_fmt(r['MB/s'])} | {_fmt(r['samples/s'])} | {_fmt(r['bytes/sample'])} | {r['files']} "
          f"| {r['pss'] / MB:.0f} MB | {ss / r['MB/s']:.2f}x |")
    p(f"\nsnapstore / best peer writer: {ss / best:.2f}x; the ceiling for the default codecs / best peer: "
      f"{wr.get(CEILING, {}).get('MB/s', float('nan')) / best:.2f}x")

    rd = results["readers"]
    s = rd.get("snapstore", {})
    p("\n## Reading back (replay: samples/s, batch by batch; random: median latency of one sample, "
      f"{reads} reads: cold, then the same sample again at once (warm) and its {AGAIN}th read in a row (again); "
      "snapstore / this: > 1 means snapstore is faster)\n")
    p("| reader | replay cold | replay warm | random cold | random warm | random again "
      "| replay cold, snapstore / this | replay warm | random cold | random warm | random again |")
    p("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in rd.items():
        cells = [f"{_fmt(r.get('replay cold', float('nan')))}/s", f"{_fmt(r.get('replay warm', float('nan')))}/s",
                 f"{_fmt(r['random cold us'], 1)} µs", f"{_fmt(r['random warm us'], 1)} µs",
                 f"{_fmt(r['random again us'], 1)} µs"]
        ratios = []
        for key, higher in (("replay cold", True), ("replay warm", True), ("random cold us", False),
                            ("random warm us", False), ("random again us", False)):
            if key in r and key in s:
                ratios.append(f"{(s[key] / r[key]) if higher else (r[key] / s[key]):.2f}x")
            else:
                ratios.append("-")
        p(f"| {name} | " + " | ".join(cells + ratios) + " |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="full size (50,000 CIFAR-like samples, 2,000 ImageNet-like)")
    ap.add_argument("--repeat", type=int, help="runs per measurement (default 3 full, 1 tiny)")
    ap.add_argument("--reads", type=int, help="random single-sample reads (default 1000 full, 20 tiny)")
    ap.add_argument("--tmp",
                    help="directory for the stores (default: a fresh temporary directory on the same disk as /tmp)")
    ap.add_argument("--part", choices=("all", "loops", "cpu"), default="all",
                    help="loops: only the training-loop tables (no writers and readers); cpu: only CIFAR-like "
                         "num_workers=0 with snapstore, the minimal recorder and the floors, 12 runs each")
    args = ap.parse_args(argv)
    pin_malloc()
    run(full=args.full, repeat=args.repeat, tmp=args.tmp, reads=args.reads, part=args.part)
    return 0


if __name__ == "__main__":
    sys.exit(main())
