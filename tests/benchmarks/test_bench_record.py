"""benchmarks/bench_record.py at a tiny size, so it never rots (no timing assertions: numbers are only printed)."""

from __future__ import annotations

import importlib.util
import io
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="the benchmark workloads crop scikit-learn's sample photographs")

from benchmarks import bench_record  # noqa: E402
from benchmarks.bench_record import peers, workloads  # noqa: E402

OPTIONAL = {"h5py": ("h5py", "'.[bench]'"), "WebDataset": ("webdataset", "'.[bench]'"),
            "MosaicML": ("streaming", "mosaicml-streaming (it pins numpy<2.2 and a CUDA torchvision)")}


def _module_of(peer: str) -> tuple[str, str] | None:
    return next((m for k, m in OPTIONAL.items() if peer.startswith(k)), None)


@pytest.fixture(scope="module")
def batches() -> list[peers.Batch]:
    return workloads.premade_batches(workloads.Workload("tiny", 96, 8, 32, 2))


def test_workload_is_real_photographs_augmented() -> None:
    w = workloads.workloads(full=False)["cifar"]
    ds = workloads.make_dataset(w)
    x, label, index = ds[3]
    assert x.dtype == __import__("torch").float32 and tuple(x.shape) == (3, w.size, w.size)
    assert ds.crops.dtype == np.uint8 and ds.crops.std() > 10  # photographs, not constants
    assert (label, index) == (int(ds.labels[3]), 3)


# webdataset's own reader pipeline leaves its tar file for the garbage collector to close
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning", "ignore::ResourceWarning")
@pytest.mark.parametrize("name", ["snapstore", *peers.PEERS])
def test_writer_and_reader_round_trip(name: str, batches: list[peers.Batch], tmp_path: Path) -> None:
    needs = _module_of(name)
    if needs is not None and importlib.util.find_spec(needs[0]) is None:
        pytest.skip(f"{needs[0]} is not installed: pip install {needs[1]}")
    if name == "snapstore":
        write, reader = peers.write_snapstore, lambda o, b: peers.SnapstoreReader(o)
    else:
        write, reader = peers.PEERS[name]
    try:
        write(batches, str(tmp_path))
    except peers.Unavailable as e:
        pytest.skip(str(e))
    r = reader(str(tmp_path), len(batches[0][0]))
    assert bench_record._count(r.replay()) == 96
    r.sample(5)
    r.close()
    stats = bench_record.measure_reader(lambda: reader(str(tmp_path), len(batches[0][0])), str(tmp_path), 1, 3, 96)
    assert set(stats) == {"replay cold", "replay warm", "random cold us", "random warm us", "random again us"}


def test_whole_table_at_tiny_size(tmp_path: Path) -> None:
    out = io.StringIO()
    results = bench_record.run(full=False, repeat=1, reads=3, tmp=str(tmp_path), only=[], out=out)
    text = out.getvalue()
    assert "## The training loop, recorded" in text and "## Writers" in text and "## Reading back" in text
    # every loop of issue 17: loader-bound and step-bound (10 and 30 ms), num_workers 0 and 2, both workloads
    assert set(results["loops"]) == {("CIFAR-like", step, nw) for step in (0.0, 0.010, 0.030) for nw in (0, 2)} | {
        ("ImageNet-like", 0.0, nw) for nw in (0, 2)}
    recorders = {"snapstore epoch 0", "snapstore epoch 1", "torch.save per batch", "preallocated NumPy",
                 "minimal recorder", "durable floor", "hashed floor"}
    recorders |= {"h5py"} if importlib.util.find_spec("h5py") else set()
    for (name, step, nw), lines in results["loops"].items():
        assert set(lines) == {"bare"} | recorders
        for line, r in lines.items():
            assert set(r) == {"samples/s", "ratio", "inside ms", "thread ms", "cpu s/GB", "cpu / minimal",
                              "cpu / minimal q1", "cpu / minimal q3", "pss"}
            assert r["samples/s"] > 0 and (line == "bare") == (r["cpu s/GB"] != r["cpu s/GB"])  # nan: bare only
        assert f"| {name} | {step * 1e3:.0f} ms | {nw} | snapstore epoch 1 |" in text
        over = lines["minimal recorder"]["cpu / minimal"]  # each run's own ratio: 1 (NaN where its CPU read 0)
        assert over != over or over == 1.0
        assert lines["hashed floor"]["cpu / minimal q1"] != lines["hashed floor"]["cpu / minimal q1"]  # one run: NaN
    assert "CPU-s per GB" in text and "/ minimal recorder's" in text and "ms/batch in recorder" in text
    assert "snapstore" in results["writers"] and "snapstore" in results["readers"]


def test_loop_lines_rotate_and_quartiles_come_from_four_runs(tmp_path: Path) -> None:
    w = workloads.Workload("tiny", 64, 16, 32, 2)
    ds = workloads.make_dataset(w)
    firsts = []
    for shift in range(3):
        run = bench_record.loop_lines(ds, w, 0, 0.0, str(tmp_path), ("minimal recorder", "durable floor"), shift)
        assert list(run) == ["bare", "minimal recorder", "durable floor"]  # one order returned, whichever ran first
        firsts.append(min(run, key=lambda line: run[line][0]["start"]))  # noqa: B023
    assert firsts == ["bare", "minimal recorder", "durable floor"]
    lines = bench_record.loops(w, ds, 0, 0.0, 4, str(tmp_path), {}, bench_record.CPU_RECORDERS)
    assert set(lines) == {"bare", "snapstore epoch 0", "snapstore epoch 1", "minimal recorder", "durable floor",
                          "hashed floor"}
    q1, q3 = lines["hashed floor"]["cpu / minimal q1"], lines["hashed floor"]["cpu / minimal q3"]
    assert q1 <= q3  # not NaN: four runs (at this size, CPU over bare is noise, of either sign)


PIN = """
import resource, sys
import numpy as np
from benchmarks.bench_record import pin_malloc
if sys.argv[1] == "pinned":
    pin_malloc()
def two_batches():  # freed top-down: glibc's adaptive trim threshold hands the heap back each time
    a = np.ones(3 << 20, np.uint8)
    b = np.ones(3 << 20, np.uint8)
    del b, a
two_batches()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    two_batches()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="pin_malloc sets glibc's mallopt")
def test_pin_malloc_reuses_freed_batches_instead_of_faulting_in_fresh_pages() -> None:
    root = Path(__file__).parents[2]
    faults = {how: int(subprocess.run([sys.executable, "-c", PIN, how], cwd=root, capture_output=True, text=True,
                                      check=True).stdout) for how in ("adaptive", "pinned")}
    assert faults["adaptive"] > 20 * 1000  # ~1,500 a round: the 6 MiB faulted in afresh
    assert faults["pinned"] < 1000
