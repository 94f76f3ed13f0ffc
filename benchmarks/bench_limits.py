"""What this machine allows, whatever the recorder: the floors behind issue 6's targets.

    python benchmarks/bench_limits.py --full    # CIFAR-like epoch (50,000 samples), a few minutes
    python benchmarks/bench_limits.py           # tiny, seconds (tests/benchmarks/test_bench_limits.py runs it)

No snapstore code runs here. Each line measures the least work any recorder
of the same bytes must do, done with the plainest tools, so a snapstore
figure can be read against the floor it cannot go below on this machine:

* recording floor: the CIFAR-like training loop (``num_workers`` 0 and 2, as in
  ``bench_record.py``) while the training thread copies each batch and its raw
  crops (the copy any safe recorder makes) and a background thread LZ4-encodes
  them (Blosc-LZ4, as snapstore's default), checksums them (crc32c) and
  appends them to one file: the loop's samples/s over the bare loop's.
  Repeated with no compression (crc32c and the write only), and with the
  background work in a writer process instead of a thread (``process_floor``:
  the training thread copies each batch into one of a few shared-memory slots
  and passes the slot's number through a pipe; the process encodes, checksums
  and appends, then hands the slot back: the design that takes the writer's
  interpreter work out of the training process), and with that process storing
  each 2 MiB chunk durably, a file each, fsynced (what a crash-consistent
  chunked store such as snapstore's costs at the least).
* step-bound floor: the loop with a 30 ms simulated accelerator step a batch
  (as ``bench_record.py``'s step-bound lines), in alternating runs: bare; with
  only the training thread's copy into shared memory (nothing written); with a
  writer process that LZ4-encodes the copies and drops them; that stores them
  durably as above; and that does so with the raw crops too (epoch 0's bytes;
  the others are a later epoch's: images, labels, indices). No recorder built
  as snapstore's (a writer process fed through shared memory) can cost the step
  less than the line that does its work.
* interference: the same loop's slowdown while a background thread streams
  memory (``np.copyto`` of 3 MB blocks) vs. computes in its cache (``np.sort`` of
  1.6 MB): on a 2-core machine whose cores share the memory system, moving
  bytes next to the training thread slows it down even with the GIL released.
* disk: buffered write of 1 GB in 2 MiB files (no fsync), MB/s.
* replay ceiling: Blosc-LZ4 decode + crc32c of the epoch's float images in
  2 MiB chunks on one core, vs. ``np.copyto`` (what an uncompressed mmap read costs).
* random-read floor: one 2 MiB chunk file read after eviction from the page cache and
  decoded, vs. one 12 KB row read from an evicted ``.npy`` through mmap.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import shutil
import statistics
import sys
import tempfile
import threading
import time
from multiprocessing import shared_memory
from typing import Any

import google_crc32c
import numcodecs
import numpy as np
import torch
import xxhash

if __package__:  # imported from the package `benchmarks` (tests/benchmarks/test_bench_limits.py)
    from . import workloads
    from .bench_record import Evictor
else:  # run as a script: its folder is first on sys.path
    import workloads
    from bench_record import Evictor

CHUNK = 2 * 1024 * 1024
LZ4 = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.NOSHUFFLE)


def _append(f: Any, block: Any, compress: bool = True) -> None:
    """The minimal recorder's work on one block: LZ4 (unless ``compress`` is false), crc32c, append to ``f``."""
    data = LZ4.encode(block) if compress else block
    f.write(data)
    f.write(google_crc32c.value(data).to_bytes(4, "little"))


def recording_floor(ds: Any, w: workloads.Workload, tmp: str, compress: bool, workers: int = 0) -> float:
    """Seconds for one epoch with the minimal recorder: the training thread copies each batch and its raw crops,
    a background thread LZ4-encodes them (unless ``compress`` is false), checksums and appends them."""
    loader = workloads.make_loader(ds, w, workers)
    jobs: queue.Queue = queue.Queue(maxsize=8)

    def store() -> None:
        with open(os.path.join(tmp, "floor.bin"), "wb") as f:
            while (blocks := jobs.get()) is not None:
                for b in blocks:
                    _append(f, b, compress)

    writer = threading.Thread(target=store)
    t = time.perf_counter()
    writer.start()
    for images, labels, index in loader:
        images.sum()
        jobs.put([images.numpy().copy(), ds.crops[index.numpy()], labels.numpy().copy(), index.numpy().copy()])
    jobs.put(None)
    writer.join()
    return time.perf_counter() - t


#: A ProcessRecorder's shared-memory slots: eight, or as many as 64 MiB (snapstore's ring) holds, two at least.
SLOTS, SLOTS_BYTES = 8, 64 * 1024 * 1024
STEP = 0.030  # the step-bound loop's simulated accelerator step, seconds (as in bench_record.py)


def _writer(name: str, slot_bytes: int, todo: Any, free: Any, folder: str, mode: str) -> None:
    """The writer process of ``ProcessRecorder``: does what ``mode`` says with each slot's blocks, then hands the
    slot back; in ``"durable"`` and ``"hashed"`` modes it fsyncs the folder once every block is stored (the
    epoch's commit). It runs at ``SCHED_BATCH``, as snapstore's writer does."""
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except (AttributeError, OSError):
        pass
    shm = shared_memory.SharedMemory(name=name)
    slab = np.ndarray((shm.size,), np.uint8, buffer=shm.buf)
    chunks = 0
    try:
        with open(os.path.join(folder, "floor.bin"), "wb") as f:
            while (job := todo.recv()) is not None:
                slot, sizes, rows = job
                at = slot * slot_bytes
                for n in sizes:
                    block = slab[at : at + n]
                    if mode == "encode":
                        LZ4.encode(block)
                    elif mode == "append":
                        _append(f, block)
                    else:
                        chunks = _store_chunks(folder, block, chunks, rows if mode == "hashed" else 0)
                    at += n
                del block  # no view of the slab may outlive it: shm.close() refuses while one does
                free.put(slot)
        if mode in ("durable", "hashed"):
            _fsync(folder)
    finally:
        del slab
        shm.close()


def _store_chunks(folder: str, block: np.ndarray, first: int, rows: int) -> int:
    """Store ``block`` durably in ``folder`` as 2 MiB chunk files numbered from ``first``; return the next number.
    With ``rows`` (the block's row count; 0: none), first hash each row and each chunk (xxh3-64), as a recorder
    of snapstore's format does."""
    if rows:
        np.fromiter(map(xxhash.xxh3_64_intdigest, block.reshape(rows, -1)), np.uint64, rows)
    for lo in range(0, len(block), CHUNK):
        if rows:
            xxhash.xxh3_64_intdigest(block[lo : lo + CHUNK].data)
        _store_durably(os.path.join(folder, f"c{first}"), block[lo : lo + CHUNK])
        first += 1
    return first


def _store_durably(path: str, block: np.ndarray) -> None:
    """One chunk as a crash-consistent store writes it: LZ4 + crc32c into a temp file, renamed, fsynced."""
    with open(path + ".partial", "wb") as f:
        _append(f, block)
    os.replace(path + ".partial", path)
    _fsync(path)


def _fsync(path: str) -> None:
    """fsync a file or a folder."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ProcessRecorder:
    """The least a recorder built as snapstore's (a writer process fed through shared memory) can do, as a loop
    peer of ``bench_record.py``: ``put`` each batch, ``end`` the epoch.

    The training thread copies each batch (its images, labels and indices, and with ``raw`` its raw crops:
    the bytes of snapstore's epoch 0; without, those of its later epochs) into one of its shared-memory
    slots (``SLOTS``) and sends the slot's number through a pipe; the writer process, forked at the first
    ``put``, hands the slot back once it has done with them what ``mode`` says:

    * ``"copy"``: there is no writer process (the training thread's copy only);
    * ``"encode"``: LZ4-encodes them and drops the bytes;
    * ``"append"``: LZ4 + crc32c, appended to one file (no fsync);
    * ``"durable"``: LZ4 + crc32c a 2 MiB chunk, each chunk its own file (temp file, rename, fsync), and the
      folder fsynced at the end: the least a crash-consistent chunked store writes.
    * ``"hashed"``: ``"durable"``, plus the content hashes snapstore's format names: xxh3-64 of every row of
      every block and of every chunk (``core.hashing.row_hashes``, ``core.merkle.chunk_hash``; here in plain
      ``xxhash``): the least a recorder of that format computes.

    ``end`` returns once the writer has done so with every block, and removes what it stored (an epoch's
    chunk files: GBs over a full run). ``handing``: seconds the training thread spent in ``put``.
    """

    def __init__(self, ds: Any, out: str, mode: str = "durable", *, raw: bool = True) -> None:
        self.ds, self.mode, self.raw = ds, mode, raw
        self.folder = tempfile.mkdtemp(dir=out)
        self.shm: shared_memory.SharedMemory | None = None
        self.writer: Any = None
        self.batches = 0
        self.handing = 0.0

    def _start(self, slot_bytes: int) -> None:
        self.slot_bytes = slot_bytes
        self.shm = shared_memory.SharedMemory(create=True, size=slot_bytes * self.slots)
        self.slab = np.ndarray((self.slots * slot_bytes,), np.uint8, buffer=self.shm.buf)
        if self.mode != "copy":
            ctx = multiprocessing.get_context("fork")  # the child imports nothing
            todo, self.to_writer = ctx.Pipe(duplex=False)
            self.free = ctx.SimpleQueue()
            for s in range(self.slots):
                self.free.put(s)
            self.writer = ctx.Process(target=_writer, args=(self.shm.name, slot_bytes, todo, self.free, self.folder,
                                                             self.mode))
            self.writer.start()

    def put(self, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> None:
        a = time.perf_counter()
        idx = index.numpy()
        blocks = [images.numpy(), labels.numpy(), idx, *((self.ds.crops[idx],) if self.raw else ())]
        if self.shm is None:  # slots of the first batch's size: the largest
            slot_bytes = sum(b.nbytes for b in blocks)
            self.slots = max(2, min(SLOTS, SLOTS_BYTES // slot_bytes))
            self._start(slot_bytes)
        slot = self.free.get() if self.writer is not None else self.batches % self.slots
        at, sizes = slot * self.slot_bytes, []
        for block in blocks:
            b = block.reshape(-1).view(np.uint8)
            self.slab[at : at + b.nbytes] = b
            at += b.nbytes
            sizes.append(b.nbytes)
        if self.writer is not None:
            self.to_writer.send((slot, sizes, len(idx)))
        self.batches += 1
        self.handing += time.perf_counter() - a

    def end(self) -> None:
        try:
            if self.writer is not None:
                self.to_writer.send(None)
                self.writer.join()
        finally:
            if self.writer is not None and self.writer.is_alive():
                self.writer.kill()
            if self.shm is not None:
                del self.slab
                self.shm.close()
                self.shm.unlink()
            shutil.rmtree(self.folder, ignore_errors=True)


def process_floor(ds: Any, w: workloads.Workload, tmp: str, mode: str, *, workers: int = 0, step: float = 0.0,
                  raw: bool = True) -> tuple[float, float]:
    """``(seconds, ms a batch on the training thread)`` of one epoch of the loop (``step`` seconds of sleep a
    batch) recorded by a ``ProcessRecorder`` doing what ``mode`` says, its ``end`` included."""
    rec = ProcessRecorder(ds, tmp, mode, raw=raw)
    try:
        t = time.perf_counter()
        for images, labels, index in workloads.make_loader(ds, w, workers):
            rec.put(images, labels, index)
            images.sum()
            if step:
                time.sleep(step)
    finally:
        rec.end()
    return time.perf_counter() - t, 1e3 * rec.handing / max(1, rec.batches)


def bare_epoch(ds: Any, w: workloads.Workload, workers: int = 0, step: float = 0.0) -> float:
    """Seconds of one epoch of the bare loop (``step`` seconds of sleep a batch)."""
    t = time.perf_counter()
    for images, _labels, _index in workloads.make_loader(ds, w, workers):
        images.sum()
        if step:
            time.sleep(step)
    return time.perf_counter() - t


def interference(ds: Any, w: workloads.Workload, kind: str) -> float:
    """Seconds of the bare loop while a background thread streams memory (``"stream"``) or computes in its cache."""
    stop = threading.Event()
    src, dst = np.ones(3 * 2**20, np.uint8), np.empty(3 * 2**20, np.uint8)
    small = np.random.default_rng(0).random(200_000)

    def background() -> None:
        while not stop.is_set():
            if kind == "stream":
                np.copyto(dst, src)
            else:
                np.sort(small)

    th = threading.Thread(target=background)
    th.start()
    try:
        return bare_epoch(ds, w)
    finally:
        stop.set()
        th.join()


def disk_write(tmp: str, total: int) -> float:
    """MB/s of buffered 2 MiB file writes (temp file + rename, as zarr's LocalStore), no fsync."""
    block = np.random.default_rng(0).integers(0, 255, CHUNK, dtype=np.uint8)
    t = time.perf_counter()
    for i in range(total // CHUNK):
        path = os.path.join(tmp, f"d{i}")
        with open(path + ".partial", "wb") as f:
            f.write(block)
        os.replace(path + ".partial", path)
    return total / (time.perf_counter() - t) / 1e6


def replay_ceiling(images: np.ndarray) -> dict[str, float]:
    """Samples/s of decoding + checksumming the images in 2 MiB chunks on one core, and of copying them."""
    rows = max(1, CHUNK // images[0].nbytes)
    chunks = [LZ4.encode(np.ascontiguousarray(images[lo : lo + rows])) for lo in range(0, len(images), rows)]
    out = np.empty(rows * images[0].size, dtype=images.dtype)
    t = time.perf_counter()
    for c in chunks:
        google_crc32c.value(c)
        LZ4.decode(c, out=out)
    decode = len(images) / (time.perf_counter() - t)
    dst = np.zeros_like(images)  # pages touched once, as a reader's reused buffer
    t = time.perf_counter()
    np.copyto(dst, images)
    return {"lz4 decode + crc32c": decode, "memcpy": len(images) / (time.perf_counter() - t)}


def random_floor(images: np.ndarray, tmp: str, reads: int) -> dict[str, float]:
    """Median µs of one cold row: a whole evicted 2 MiB LZ4 chunk read and decoded, or one evicted .npy row via mmap."""
    rows = max(1, CHUNK // images[0].nbytes)
    chunk_files = []
    for k, lo in enumerate(range(0, len(images), rows)):
        chunk_files.append(os.path.join(tmp, f"chunk{k}"))
        with open(chunk_files[-1], "wb") as f:
            f.write(LZ4.encode(np.ascontiguousarray(images[lo : lo + rows])))
    npy = os.path.join(tmp, "images.npy")
    np.save(npy, images)
    evict = Evictor([*chunk_files, npy])
    out = np.empty(rows * images[0].size, dtype=images.dtype)
    chunked, mapped = [], []
    for i in np.random.default_rng(3).integers(0, len(images), reads).tolist():
        evict()
        t = time.perf_counter()
        with open(chunk_files[i // rows], "rb") as f:
            LZ4.decode(f.read(), out=out)
        chunked.append(time.perf_counter() - t)
        evict()
        t = time.perf_counter()
        np.array(np.load(npy, mmap_mode="r")[i])
        mapped.append(time.perf_counter() - t)
    evict.close()
    return {"2 MiB LZ4 chunk": statistics.median(chunked) * 1e6, ".npy row (mmap)": statistics.median(mapped) * 1e6}


def run(full: bool = False, repeat: int | None = None, out: Any = sys.stdout) -> dict[str, Any]:
    """Measure every floor and print them; returns the numbers."""
    repeat = repeat or (3 if full else 1)
    w = workloads.workloads(full)["cifar"]
    ds = workloads.make_dataset(w)
    tmp = tempfile.mkdtemp(prefix="snapstore-limits-")
    p = lambda *a: print(*a, file=out, flush=True)  # noqa: E731
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        loop: dict[str, list[float]] = {k: [] for k in ("bare", "lz4", "process", "durable", "none", "stream",
                                                        "compute", "bare nw=2", "lz4 nw=2", "durable nw=2")}
        for _ in range(repeat):
            loop["bare"].append(bare_epoch(ds, w))
            loop["lz4"].append(recording_floor(ds, w, tmp, True))
            loop["process"].append(process_floor(ds, w, tmp, "append")[0])
            loop["durable"].append(process_floor(ds, w, tmp, "durable")[0])
            loop["none"].append(recording_floor(ds, w, tmp, False))
            loop["stream"].append(interference(ds, w, "stream"))
            loop["compute"].append(interference(ds, w, "compute"))
            torch.set_num_threads(threads)  # as bench_record.py: one intra-op thread only when the loop fetches too
            loop["bare nw=2"].append(bare_epoch(ds, w, 2))
            loop["lz4 nw=2"].append(recording_floor(ds, w, tmp, True, 2))
            loop["durable nw=2"].append(process_floor(ds, w, tmp, "durable", workers=2)[0])
            torch.set_num_threads(1)
        med = {k: statistics.median(v) for k, v in loop.items()}
        step: dict[int, dict[str, float]] = {}
        for workers in (0, 2):  # the step-bound lines alternate, twice as many runs as the other lines
            torch.set_num_threads(1 if workers == 0 else threads)
            runs = [{"bare": (bare_epoch(ds, w, workers, STEP), 0.0),
                     **{mode: process_floor(ds, w, tmp, mode, workers=workers, step=STEP, raw=False)
                        for mode in ("copy", "encode", "durable")},
                     "durable, raw": process_floor(ds, w, tmp, "durable", workers=workers, step=STEP)}
                    for _ in range(2 * repeat)]
            step[workers] = {line: statistics.median(r["bare"][0] / r[line][0] for r in runs) for line in runs[0]}
            step[workers]["copy ms"] = statistics.median(r["copy"][1] for r in runs)
            step[workers]["batch ms"] = 1e3 * statistics.median(r["bare"][0] for r in runs) / -(-w.samples // w.batch)
        torch.set_num_threads(1)
        images = np.stack([ds[i][0].numpy() for i in range(w.samples)])
        results = {
            "loop": med,
            "step": step,
            "disk MB/s": disk_write(tmp, (1 << 30) if full else 64 * CHUNK),
            "replay": replay_ceiling(images),
            "random": random_floor(images, tmp, 200 if full else 10),
        }
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(tmp, ignore_errors=True)
    p(f"# Floors on this machine ({os.cpu_count()} CPUs; {w.samples:,} CIFAR-like samples, medians of {repeat})\n")
    p("| line | num_workers | samples/s | ratio to the bare loop |\n| --- | --- | --- | --- |")
    for key, label in [("bare", "bare loop"),
                       ("lz4", "loop + copy + background LZ4 + crc32c + write (minimal recorder)"),
                       ("process", "loop + copy into shared memory + the same work in a writer process"),
                       ("durable", "loop + copy into shared memory + a writer process storing 2 MiB chunks "
                                   "durably (LZ4 + crc32c, a file each, fsynced)"),
                       ("none", "loop + copy + background crc32c + write, no compression"),
                       ("stream", "loop + a background thread streaming memory (np.copyto)"),
                       ("compute", "loop + a background thread computing in its cache (np.sort)"),
                       ("bare nw=2", "bare loop"), ("lz4 nw=2", "loop + minimal recorder"),
                       ("durable nw=2", "loop + the writer process storing chunks durably")]:
        workers, bare = (2, med["bare nw=2"]) if key.endswith("nw=2") else (0, med["bare"])
        p(f"| {label} | {workers} | {w.samples / med[key]:,.0f} | {bare / med[key]:.3f} |")
    p(f"\nStep-bound floor ({STEP * 1e3:.0f} ms step a batch; ratio to bare; medians of {2 * repeat} alternating runs; "
      "the training thread copies images, labels and indices into shared memory, plus the raw crops in the last "
      "line; the writer process does what the column says):\n")
    p("| num_workers | bare ms a batch | copy only | + LZ4 encode in a writer process | + chunks stored durably "
      "| + raw crops (epoch 0's bytes) | the copy, ms a batch (training thread) | the copy as a share of the bare "
      "batch |\n| --- | --- | --- | --- | --- | --- | --- | --- |")
    for workers, r in step.items():
        p(f"| {workers} | {r['batch ms']:.1f} | {r['copy']:.3f} | {r['encode']:.3f} | {r['durable']:.3f} "
          f"| {r['durable, raw']:.3f} | {r['copy ms']:.2f} | {100 * r['copy ms'] / r['batch ms']:.1f} % |")
    p(f"\nbuffered disk write, 2 MiB files, no fsync: {results['disk MB/s']:,.0f} MB/s")
    p("replay ceiling, float32 images, one core: "
      + ", ".join(f"{k} {v:,.0f} samples/s" for k, v in results["replay"].items()))
    p("one cold row: " + ", ".join(f"{k} {v:,.1f} µs" for k, v in results["random"].items()))
    return results


def main(argv: list[str] | None = None) -> int:
    return workloads.cli(run, __doc__, argv, "runs per loop measurement (default 3 full, 1 tiny)")


if __name__ == "__main__":
    raise SystemExit(main())
