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
  background work in a writer process instead of a thread: the training
  thread copies each batch into one of a few shared-memory slots and passes
  the slot's number through a pipe; the process encodes, checksums and
  appends, then hands the slot back (the design that takes the writer's
  interpreter work out of the training process).
* step-bound floor: the loop with a 30 ms simulated accelerator step a batch
  (as ``bench_record.py``'s step-bound lines), bare, with only the copy
  (the batch and its raw crops into recycled buffers, nothing written), and
  with the copy and a background thread that Blosc-LZ4-encodes every copied
  block and drops it (no checksum, nothing stored), in alternating runs: the
  ratios, and the copy's own time a batch on the training thread. No
  asynchronous recorder that keeps what the loop saw exact can cost the step
  less than the copy, nor one that compresses less than the encoding.
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

import collections
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

if __package__:  # imported from the package `benchmarks` (tests/benchmarks/test_bench_limits.py)
    from . import workloads
    from .bench_record import Evictor, train_loop
else:  # run as a script: its folder is first on sys.path
    import workloads
    from bench_record import Evictor, train_loop

CHUNK = 2 * 1024 * 1024
LZ4 = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.NOSHUFFLE)


def _append(f: Any, block: Any, compress: bool = True) -> None:
    """The minimal recorder's work on one block: LZ4 (unless ``compress`` is false), crc32c, append to ``f``."""
    data = LZ4.encode(block) if compress else block
    f.write(data)
    f.write(google_crc32c.value(data).to_bytes(4, "little"))


def recording_floor(ds: Any, w: workloads.Workload, tmp: str, compress: bool | None, workers: int = 0) -> float:
    """Seconds for one epoch: bare (``compress=None``) or with the minimal recorder."""
    loader = workloads.make_loader(ds, w, workers)
    if compress is None:
        t = time.perf_counter()
        train_loop(loader)
        return time.perf_counter() - t
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


STEP = 0.030  # the step-bound loop's simulated accelerator step, seconds (as in bench_record.py)


def step_floor(ds: Any, w: workloads.Workload, workers: int, mode: str) -> tuple[float, float]:
    """``(seconds, copy seconds a batch)`` of one epoch of the step-bound loop (a ``STEP``-second sleep a
    batch, the GIL released): ``"bare"``; ``"copy"``: with only the copy every safe asynchronous recorder
    makes on the training thread (the batch and its raw crops into recycled buffers; nothing is written);
    ``"encode"``: the copy, and a background thread Blosc-LZ4-encoding each copied block (nothing stored)."""
    loader = workloads.make_loader(ds, w, workers)
    buffers: dict[tuple[Any, ...], collections.deque[np.ndarray]] = {}
    encoding: queue.Queue = queue.Queue(maxsize=8)

    in_flight = encoding.maxsize + 1 if mode == "encode" else 0  # blocks the encoder may still read

    def into(rows: np.ndarray) -> np.ndarray:
        kept = buffers.setdefault((rows.shape, rows.dtype.str), collections.deque())
        buf = kept.popleft() if len(kept) > in_flight else np.empty_like(rows)
        np.copyto(buf, rows)
        kept.append(buf)
        return buf

    def encode() -> None:
        while (blocks := encoding.get()) is not None:
            for b in blocks:
                LZ4.encode(b)

    encoder = threading.Thread(target=encode)
    encoder.start()
    copying = batches = 0
    t = time.perf_counter()
    try:
        for images, labels, index in loader:
            if mode != "bare":
                a = time.perf_counter()
                idx = index.numpy()
                blocks = [into(rows) for rows in (images.numpy(), labels.numpy(), idx, ds.crops[idx])]
                if mode == "encode":
                    encoding.put(blocks)
                copying += time.perf_counter() - a
            images.sum()
            time.sleep(STEP)
            batches += 1
    finally:
        encoding.put(None)
        encoder.join()
    return time.perf_counter() - t, copying / max(1, batches)


def _store_slots(name: str, slot_bytes: int, todo: Any, free: Any, path: str) -> None:
    """The writer process of ``recording_floor_process``: encode, checksum and append each slot's blocks."""
    shm = shared_memory.SharedMemory(name=name)
    try:
        with open(path, "wb") as f:
            while (job := todo.recv()) is not None:
                slot, sizes = job
                at = slot * slot_bytes
                for n in sizes:
                    _append(f, shm.buf[at : at + n])
                    at += n
                free.put(slot)
    finally:
        shm.close()


def recording_floor_process(ds: Any, w: workloads.Workload, tmp: str, slots: int = 8) -> float:
    """Seconds for one epoch with the minimal recorder's work in a writer process (``num_workers=0``)."""
    loader = workloads.make_loader(ds, w, 0)
    row = 3 * w.size * w.size
    slot_bytes = w.batch * (row * 4 + row + 2 * 8)  # float32 image, uint8 crop, label, index
    shm = shared_memory.SharedMemory(create=True, size=slot_bytes * slots)
    ctx = multiprocessing.get_context("fork")  # the child imports nothing; its start is not the loop's cost
    todo, send = ctx.Pipe(duplex=False)
    free = ctx.SimpleQueue()
    for s in range(slots):
        free.put(s)
    writer = ctx.Process(target=_store_slots, args=(shm.name, slot_bytes, todo, free, os.path.join(tmp, "floor.bin")))
    writer.start()
    slab = np.ndarray((slots * slot_bytes,), np.uint8, buffer=shm.buf)
    try:
        t = time.perf_counter()
        for images, labels, index in loader:
            images.sum()
            slot = free.get()
            at, sizes = slot * slot_bytes, []
            for a in (images.numpy(), ds.crops[index.numpy()], labels.numpy(), index.numpy()):
                b = a.reshape(-1).view(np.uint8)
                slab[at : at + b.nbytes] = b
                at += b.nbytes
                sizes.append(b.nbytes)
            send.send((slot, sizes))
        send.send(None)
        writer.join()
        return time.perf_counter() - t
    finally:
        del slab
        shm.close()
        shm.unlink()


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
        return recording_floor(ds, w, "", None)
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
        loop: dict[str, list[float]] = {k: [] for k in ("bare", "lz4", "process", "none", "stream", "compute",
                                                        "bare nw=2", "lz4 nw=2")}
        for _ in range(repeat):
            loop["bare"].append(recording_floor(ds, w, tmp, None))
            loop["lz4"].append(recording_floor(ds, w, tmp, True))
            loop["process"].append(recording_floor_process(ds, w, tmp))
            loop["none"].append(recording_floor(ds, w, tmp, False))
            loop["stream"].append(interference(ds, w, "stream"))
            loop["compute"].append(interference(ds, w, "compute"))
            torch.set_num_threads(threads)  # as bench_record.py: one intra-op thread only when the loop fetches too
            loop["bare nw=2"].append(recording_floor(ds, w, tmp, None, 2))
            loop["lz4 nw=2"].append(recording_floor(ds, w, tmp, True, 2))
            torch.set_num_threads(1)
        med = {k: statistics.median(v) for k, v in loop.items()}
        step: dict[int, dict[str, float]] = {}
        for workers in (0, 2):  # bare, copy-only and encoding epochs alternate, twice as many as the other lines
            torch.set_num_threads(1 if workers == 0 else threads)
            runs = [[step_floor(ds, w, workers, mode) for mode in ("bare", "copy", "encode")]
                    for _ in range(2 * repeat)]
            step[workers] = {"ratio": statistics.median(b[0] / c[0] for b, c, _ in runs),
                             "encode ratio": statistics.median(b[0] / e[0] for b, _, e in runs),
                             "copy ms": 1e3 * statistics.median(c[1] for _, c, _ in runs),
                             "batch ms": 1e3 * statistics.median(b[0] for b, _, _ in runs) / -(-w.samples // w.batch)}
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
                       ("none", "loop + copy + background crc32c + write, no compression"),
                       ("stream", "loop + a background thread streaming memory (np.copyto)"),
                       ("compute", "loop + a background thread computing in its cache (np.sort)"),
                       ("bare nw=2", "bare loop"), ("lz4 nw=2", "loop + minimal recorder")]:
        workers, bare = (2, med["bare nw=2"]) if key.endswith("nw=2") else (0, med["bare"])
        p(f"| {label} | {workers} | {w.samples / med[key]:,.0f} | {bare / med[key]:.3f} |")
    p(f"\nStep-bound floor ({STEP * 1e3:.0f} ms step a batch; medians of {2 * repeat} alternating runs):\n")
    p("| num_workers | bare ms a batch | copy only: ratio to bare | copy + background LZ4 encode: ratio to bare "
      "| the copy, ms a batch (training thread) | the copy as a share of the bare batch |\n"
      "| --- | --- | --- | --- | --- | --- |")
    for workers, r in step.items():
        p(f"| {workers} | {r['batch ms']:.1f} | {r['ratio']:.3f} | {r['encode ratio']:.3f} | {r['copy ms']:.2f} "
          f"| {100 * r['copy ms'] / r['batch ms']:.1f} % |")
    p(f"\nbuffered disk write, 2 MiB files, no fsync: {results['disk MB/s']:,.0f} MB/s")
    p("replay ceiling, float32 images, one core: "
      + ", ".join(f"{k} {v:,.0f} samples/s" for k, v in results["replay"].items()))
    p("one cold row: " + ", ".join(f"{k} {v:,.1f} µs" for k, v in results["random"].items()))
    return results


def main(argv: list[str] | None = None) -> int:
    return workloads.cli(run, __doc__, argv, "runs per loop measurement (default 3 full, 1 tiny)")


if __name__ == "__main__":
    raise SystemExit(main())
