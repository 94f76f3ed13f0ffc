"""Recording overhead, writer throughput and read-back speed of snapstore against the ways people do it today.

One run, one generated workload, one table::

    python benchmarks/bench_record.py --full      # the README numbers (about 10 minutes on 2 cores)
    python benchmarks/bench_record.py             # tiny size, seconds (what tests/benchmarks/test_bench_record.py runs)

What is measured (medians of ``--repeat`` runs; bare and recorded runs alternate so machine noise hits both):

* recording overhead: samples/s of a training loop over a ``DataLoader`` with
  snapstore recording it (``Recorder`` + ``wrap(raw="auto")``: augmented rows,
  label, index, order and the raw uint8 crop once per index; the time includes
  ``Recorder.close()``, i.e. every row committed) divided by the same loop bare.
  The loop's own work per batch is ``images.sum()`` (it reads every element
  once). ``num_workers=0`` runs with ``torch.set_num_threads(1)``.
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
* bytes on disk (sum of file sizes) per sample, files created, and peak RSS
  (this process and its worker processes, sampled every 50 ms) above the bare loop.
"""

from __future__ import annotations

import argparse
import os
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


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (FileNotFoundError, ProcessLookupError):
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


class PeakRss:
    """Peak resident memory of this process plus its child processes while the block runs (bytes)."""

    def __enter__(self) -> PeakRss:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        me = os.getpid()
        while True:
            self.peak = max(self.peak, _rss(me) + sum(_rss(c) for c in _children(me)))
            if self._stop.wait(0.05):  # sampling /proc every 5 ms cost the bare loop ~1/3 of its speed
                return

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# -- 1. recording overhead ----------------------------------------------------
def train_loop(iterable: Any) -> int:
    """The benchmark's training step: touch every element of the images once."""
    n = 0
    for images, _labels, _index in iterable:
        images.sum()
        n += len(images)
    return n


def run_bare(ds: Any, w: Workload, workers: int) -> tuple[float, int]:
    """(seconds, peak RSS) of one epoch of the bare loop."""
    loader = workloads.make_loader(ds, w, workers)
    with PeakRss() as rss:
        t = time.perf_counter()
        n = train_loop(loader)
        dt = time.perf_counter() - t
    assert n == w.samples
    return dt, rss.peak


def run_recorded(ds: Any, w: Workload, workers: int, path: str, **options: Any) -> tuple[float, int]:
    """(seconds, peak RSS) of one epoch of the loop recorded by snapstore, ``close()`` included."""
    loader = workloads.make_loader(ds, w, workers)
    shutil.rmtree(path, ignore_errors=True)  # deleting the previous run is not the recorder's cost
    with PeakRss() as rss:
        t = time.perf_counter()
        with snapstore.Recorder(path, **options) as rec:
            n = train_loop(rec.wrap(loader, name="train"))
        dt = time.perf_counter() - t
    assert n == w.samples
    return dt, rss.peak


def overhead(w: Workload, ds: Any, workers: int, repeat: int, tmp: str) -> dict[str, float]:
    threads = torch.get_num_threads()
    if workers == 0:
        torch.set_num_threads(1)
    try:
        bare, rec, bare_rss, rec_rss = [], [], [], []
        for r in range(repeat + 1):  # run 0 warms caches and imports; not counted
            b, b_rss = run_bare(ds, w, workers)
            path = os.path.join(tmp, f"overhead-{w.size}-{workers}.snap")
            s, s_rss = run_recorded(ds, w, workers, path)
            if r:
                bare.append(b)
                rec.append(s)
                bare_rss.append(b_rss)
                rec_rss.append(s_rss)
    finally:
        torch.set_num_threads(threads)
    ratios = [b / s for b, s in zip(bare, rec)]
    return {
        "bare": w.samples / median(bare),
        "snapstore": w.samples / median(rec),
        "ratio": median(ratios),
        "rss_over_bare": max(0.0, median([s - b for s, b in zip(rec_rss, bare_rss)])),
    }


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
            base = _rss(os.getpid())
            try:
                with PeakRss() as rss:
                    t = time.perf_counter()
                    write(batches, where[name])
                    dt = time.perf_counter() - t
            except peers.Unavailable as e:
                skipped[name] = str(e)
                continue
            times.setdefault(name, []).append(dt)
            peaks.setdefault(name, []).append(rss.peak - base)
    n = sum(len(b[0]) for b in batches)
    data = sum(t.numel() * t.element_size() for b in batches for t in b)
    results = {}
    for name, ts in times.items():
        size, files = disk_usage(where[name])
        dt = median(ts)
        results[name] = {"MB/s": data / dt / MB, "samples/s": n / dt, "bytes/sample": size / n, "files": files,
                         "seconds": dt, "rss": median(peaks[name])}
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
        reads: int | None = None, out: Any = sys.stdout) -> dict[str, Any]:
    """Run every measurement and print the table; returns the numbers (``only``: a subset of the peers)."""
    repeat = repeat or (3 if full else 1)
    reads = reads or (1000 if full else 20)
    own_tmp = tmp is None
    tmp = tmp or tempfile.mkdtemp(prefix="snapstore-bench-")
    results: dict[str, Any] = {"overhead": {}, "writers": {}, "readers": {}, "skipped": {}}
    p = lambda *a: print(*a, file=out, flush=True)  # noqa: E731
    try:
        ws = workloads.workloads(full)
        for key, w in ws.items():
            ds = workloads.make_dataset(w)
            for nw in (0, 2):
                results["overhead"][(w.name, nw)] = overhead(w, ds, nw, repeat, tmp)
                print(f"[bench] overhead {w.name} num_workers={nw}: {results['overhead'][(w.name, nw)]}",
                      file=sys.stderr, flush=True)
            del ds
        raw_lat = raw_latency(ws["cifar"], tmp, reads)

        w = ws["cifar"]
        batches = workloads.premade_batches(w)
        chosen = {name: wr for name, wr in writers().items()
                  if only is None or name in only or name.startswith(("snapstore", CEILING))}
        results["writers"], where, results["skipped"] = measure_writers({k: v[0] for k, v in chosen.items()}, batches,
                                                                        repeat, tmp)
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
        print_table(results, ws, repeat, reads, p)
    finally:
        if own_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return results


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


def _fmt(x: float, digits: int = 0) -> str:
    if x != x:  # nan
        return "-"
    return f"{x:,.{digits}f}"


def print_table(results: dict[str, Any], ws: dict[str, Workload], repeat: int, reads: int,
                p: Callable[..., None]) -> None:
    load = os.getloadavg()[0]
    p(f"\nsnapstore {snapstore.__version__}, torch {torch.__version__}, {os.cpu_count()} CPUs, "
      f"load average {load:.1f}; medians of {repeat} runs (one run where a run takes over {SLOW:.0f} s); "
      "loop work per batch: images.sum(); num_workers=0 runs use torch.set_num_threads(1)")
    p("\n## Recording overhead (samples/s of the loop; ratio = with snapstore / bare, higher is better, 1.00 = free)\n")
    p("| workload | num_workers | bare samples/s | with snapstore samples/s | ratio | overhead | peak RSS over bare |")
    p("| --- | --- | --- | --- | --- | --- | --- |")
    for (name, nw), r in results["overhead"].items():
        p(f"| {name} ({ws['cifar' if name.startswith('CIFAR') else 'imagenet'].samples:,} samples) | {nw} "
          f"| {_fmt(r['bare'])} | {_fmt(r['snapstore'])} | {r['ratio']:.3f} | {100 * (1 - r['ratio']):.1f} % "
          f"| {r['rss_over_bare'] / MB:.0f} MB |")

    wr = results["writers"]
    best = max((v["MB/s"] for k, v in wr.items() if not k.startswith(("snapstore", CEILING))), default=float("nan"))
    w = ws["cifar"]
    p(f"\n## Writers: the {w.name} epoch as {len(range(0, w.samples, w.batch))} pre-made batches of {w.batch} "
      f"(image float32 + raw uint8 + label + index, {w.sample_bytes:,} B/sample)\n")
    p("| writer | MB/s | samples/s | bytes on disk / sample | files | peak RSS over start | snapstore / this |")
    p("| --- | --- | --- | --- | --- | --- | --- |")
    ss = wr.get("snapstore", {}).get("MB/s", float("nan"))
    for name, r in wr.items():
        p(f"| {name} | {_fmt(r['MB/s'])} | {_fmt(r['samples/s'])} | {_fmt(r['bytes/sample'])} | {r['files']} "
          f"| {r['rss'] / MB:.0f} MB | {ss / r['MB/s']:.2f}x |")
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
    for name, why in results["skipped"].items():
        p(f"\nskipped {name}: {why}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="full size (50,000 CIFAR-like samples, 2,000 ImageNet-like)")
    ap.add_argument("--repeat", type=int, help="runs per measurement (default 3 full, 1 tiny)")
    ap.add_argument("--reads", type=int, help="random single-sample reads (default 1000 full, 20 tiny)")
    ap.add_argument("--tmp",
                    help="directory for the stores (default: a fresh temporary directory on the same disk as /tmp)")
    args = ap.parse_args(argv)
    run(full=args.full, repeat=args.repeat, tmp=args.tmp, reads=args.reads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
