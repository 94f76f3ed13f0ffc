"""Recording at scale: seen="hash" and sampled epochs against full recording and OLMo-style index files.

One run, one table per workload::

    python benchmarks/bench_scale.py --full    # the README numbers (LLM-like: 100 epochs on 2 ranks)
    python benchmarks/bench_scale.py           # tiny size, seconds (what tests/benchmarks/test_bench_scale.py runs)

LLM-like: packed token sequences (``int32`` x ``seq`` a sample, windows of a
synthetic corpus of Zipf-distributed tokens in documents of random length
separated by an end-of-document token), read by 2 ranks (``torch.distributed``,
gloo, one process each) through a ``DistributedSampler``; the training step
is ``x.sum()``. Each mode runs the same epochs:

* bare: the loop alone;
* ``seen="hash"`` and ``seen="full"`` (``raw=None``: the corpus is on disk already);
* OLMo-style: rank 0 ``np.save``s each epoch's global indices (the sampler's
  permutation, int64), as allenai/OLMo publishes them.

Bytes per sample are the files on disk over the samples seen (all epochs);
overhead is the wall time of the whole job (``Recorder.close()`` included)
over the bare loop's. ``where`` is the median time of ``Stream.where(index=i)``
on the reopened snapshot (and, for the index files, loading each epoch's file
and searching it) over a few indices. ``seen="full"`` runs ``--full-epochs``
epochs only (its bytes grow linearly); its overhead is per epoch.

ImageNet-like (``workloads.py``: float32 3x224x224 augmented photo crops,
batch 16, one process): the bytes of one epoch's group with ``seen="full"``,
with 1 % of batches in full (``seen={"batches": 0.01}``) and ``seen="hash"``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

import snapstore

ROOT = Path(__file__).resolve().parents[1]
RANKS = 2
EOD = 0  # end-of-document token


class PackedTokens(Dataset):
    """Sample ``i``: tokens ``i*seq .. (i+1)*seq`` of the corpus (int32, (seq,))."""

    def __init__(self, samples: int, seq: int, vocab: int = 50_000, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        corpus = np.minimum(rng.zipf(1.2, samples * seq), vocab - 1).astype(np.int32)
        corpus[np.cumsum(rng.integers(50, 4 * seq, samples * seq // 50)) % (samples * seq)] = EOD
        self.tokens, self.seq = corpus, seq

    def __len__(self) -> int:
        return len(self.tokens) // self.seq

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.tokens[i * self.seq : (i + 1) * self.seq])


def global_indices(n: int, epoch: int, seed: int = 0) -> np.ndarray:
    """The permutation ``DistributedSampler(shuffle=True, seed=seed)`` deals out to the ranks in ``epoch``."""
    g = torch.Generator()
    g.manual_seed(seed + epoch)
    return torch.randperm(n, generator=g).numpy().astype(np.int64)


def rank_main(mode: str, rank: int, path: str, init: str, samples: int, seq: int, batch: int, epochs: int) -> None:
    """One rank of one mode; writes its wall time to ``path.rank<r>.json``."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=RANKS)
    ds = PackedTokens(samples, seq)
    sampler = DistributedSampler(ds, num_replicas=RANKS, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(ds, batch_size=batch, sampler=sampler)
    dist.barrier()
    t0 = time.perf_counter()
    if mode in ("hash", "full"):
        with snapstore.Recorder(path) as rec:
            stream = rec.wrap(loader, name="train", raw=None, seen=mode)
            for e in range(epochs):
                sampler.set_epoch(e)
                for x in stream:
                    x.sum()
    else:
        if mode == "olmo" and rank == 0:
            os.makedirs(path, exist_ok=True)
        for e in range(epochs):
            sampler.set_epoch(e)
            if mode == "olmo" and rank == 0:
                np.save(os.path.join(path, f"global_indices_epoch{e}.npy"), global_indices(len(ds), e))
            for x in loader:
                x.sum()
    dist.barrier()
    Path(f"{path}.rank{rank}.json").write_text(json.dumps({"seconds": time.perf_counter() - t0}))
    dist.destroy_process_group()


def run_job(mode: str, path: str, samples: int, seq: int, batch: int, epochs: int) -> float:
    """Wall time of the slowest rank of a 2-rank job."""
    init = f"file://{path}.init"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    procs = [subprocess.Popen([sys.executable, __file__, "_rank", mode, str(r), path, init, str(samples), str(seq),
                               str(batch), str(epochs)], cwd=ROOT, env=env) for r in range(RANKS)]
    if any(p.wait() for p in procs):
        raise RuntimeError(f"a rank of the {mode!r} job failed")
    return max(json.loads(Path(f"{path}.rank{r}.json").read_text())["seconds"] for r in range(RANKS))


def disk_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def where_seconds(path: str, probes: list[int]) -> float:
    stream = snapstore.open(path)["train"]
    times = []
    for i in probes:
        t0 = time.perf_counter()
        stream.where(index=i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def index_files_seconds(path: str, probes: list[int]) -> float:
    files = sorted(Path(path).glob("global_indices_epoch*.npy"))
    times = []
    for i in probes:
        t0 = time.perf_counter()
        [np.flatnonzero(np.load(f, mmap_mode="r") == i) for f in files]
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def llm(out: str, samples: int, seq: int, batch: int, epochs: int, full_epochs: int) -> list[dict]:
    probes = [0, samples // 3, samples - 1]
    rows = []
    bare = run_job("bare", os.path.join(out, "bare"), samples, seq, batch, epochs) / epochs
    for mode, n in (("hash", epochs), ("olmo", epochs), ("full", full_epochs)):
        path = os.path.join(out, mode)
        per_epoch = run_job(mode, path, samples, seq, batch, n) / n
        lookup = index_files_seconds(path, probes) if mode == "olmo" else where_seconds(path, probes)
        rows.append({"mode": {"hash": 'seen="hash"', "full": 'seen="full"', "olmo": "OLMo-style np.save"}[mode],
                     "epochs": n, "bytes_per_sample": disk_bytes(path) / (samples * n),
                     "overhead": per_epoch / bare, "where_ms": 1e3 * lookup})
        shutil.rmtree(path, ignore_errors=True)
    return rows


def imagenet(out: str, full: bool) -> list[dict]:
    if __package__:
        from . import workloads
    else:
        import workloads
    w = workloads.workloads(full)["imagenet"]
    ds = workloads.make_dataset(w)
    rows = []
    for name, seen in (("full", "full"), ("1 % of batches", {"batches": 0.01}), ("hash", "hash")):
        path = os.path.join(out, "imagenet.snap")
        loader = DataLoader(ds, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
        with snapstore.Recorder(path, overwrite=True) as rec:
            for _ in rec.wrap(loader, name="train", raw=None, seen=seen):
                pass
        ep = snapstore.open(path)["train"].epoch(0)
        rows.append({"mode": f"seen={seen!r}" if name != "1 % of batches" else 'seen={"batches": 0.01}',
                     "rows_in_full": int(ep.full.sum()), "rows": len(ep),
                     "epoch_bytes": disk_bytes(os.path.join(path, "train", "epochs", "0"))})
    shutil.rmtree(os.path.join(out, "imagenet.snap"), ignore_errors=True)
    return rows


def table(llm_rows: list[dict], image_rows: list[dict], file=None) -> None:
    file = file or sys.stdout  # looked up when called: a default bound at import misses a redirected stdout
    print("| LLM-like, 2 ranks | epochs | bytes / sample | time / epoch vs bare | where(index=i) |", file=file)
    print("| --- | --- | --- | --- | --- |", file=file)
    for r in llm_rows:
        print(f"| {r['mode']} | {r['epochs']} | {r['bytes_per_sample']:,.1f} | {r['overhead']:.3f}x | "
              f"{r['where_ms']:.1f} ms |", file=file)
    print(file=file)
    print("| ImageNet-like, one epoch | rows in full | bytes of the epoch | vs full |", file=file)
    print("| --- | --- | --- | --- |", file=file)
    for r in image_rows:
        print(f"| {r['mode']} | {r['rows_in_full']:,} of {r['rows']:,} | {r['epoch_bytes']:,} | "
              f"{r['epoch_bytes'] / image_rows[0]['epoch_bytes']:.4f} |", file=file)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="the README sizes (minutes)")
    args = parser.parse_args(argv)
    if args.full:
        sizes = {"samples": 1024, "seq": 2048, "batch": 8, "epochs": 100, "full_epochs": 5}
    else:
        sizes = {"samples": 64, "seq": 64, "batch": 4, "epochs": 3, "full_epochs": 2}
    out = tempfile.mkdtemp(prefix="bench-scale-")
    try:
        print(f"LLM-like: {sizes['samples']:,} packed sequences of {sizes['seq']} int32 tokens, batch {sizes['batch']} "
              f"a rank, {RANKS} ranks (DistributedSampler), {sizes['epochs']} epochs")
        table(llm(out, **sizes), imagenet(out, args.full))
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_rank":
        mode, rank, path, init, *numbers = sys.argv[2:]
        rank_main(mode, int(rank), path, init, *map(int, numbers))
    else:
        main()
