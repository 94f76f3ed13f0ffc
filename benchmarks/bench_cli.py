"""How long the ``snapstore`` command takes to answer: ``--version``, ``--help`` and ``info``.

Each command runs ``--repeat`` times in a fresh subprocess (``python -m
snapstore ...``, what a shell does), and the median wall-clock seconds are
printed, next to floors measured the same way: the bare interpreter
(``python -c pass``), ``python -c "import zarr"`` (what reading a snapshot
cannot do without) and ``python -c "import torch"``. ``info`` reads a
small snapshot recorded here first (one stream, 2 epochs of 64 rows).

The last column, modules, says whether torch and zarr were imported by the
command (``-X importtime`` in one extra run): ``--version`` and ``--help``
should import neither; ``info`` needs zarr.

Usage::

    python benchmarks/bench_cli.py               # 7 runs of each command
    python benchmarks/bench_cli.py --repeat 21   # steadier medians
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

import snapstore


def build(path: Path) -> None:
    """Record the small snapshot ``info`` reads: 64 rows of (1, 8, 8) float32 and a label, 2 epochs."""
    data = TensorDataset(torch.rand(64, 1, 8, 8), torch.arange(64) % 10)
    with snapstore.record(DataLoader(data, batch_size=16, shuffle=True), path) as stream:
        for _ in range(2):
            for _ in stream:
                pass


def seconds(argv: Sequence[str], repeat: int) -> list[float]:
    """Wall-clock seconds of ``repeat`` runs of ``argv``, each in a fresh process; it must exit 0."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(list(argv), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    return times


def imported(argv: Sequence[str]) -> list[str]:
    """Which of torch and zarr the command ``python -X importtime ...`` imports."""
    proc = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], check=True, capture_output=True, text=True)
    names = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    return [m for m in ("torch", "zarr") if m in names]


def run(snapshot: Path, repeat: int) -> list[dict]:
    """Time each command; print and return one row per command."""
    python = sys.executable
    commands = [
        ("python -c pass (floor)", [python, "-c", "pass"]),
        ("python -c 'import zarr' (floor)", [python, "-c", "import zarr"]),
        ("python -c 'import torch' (floor)", [python, "-c", "import torch"]),
        ("snapstore --version", [python, "-m", "snapstore", "--version"]),
        ("snapstore --help", [python, "-m", "snapstore", "--help"]),
        ("snapstore info SNAP", [python, "-m", "snapstore", "info", str(snapshot)]),
    ]
    rows = []
    print(f"{'command':<34} {'median s':>9} {'min s':>7} {'max s':>7}  modules ({repeat} runs each)")
    for name, argv in commands:
        times = seconds(argv, repeat)
        mods = imported(argv) if name.startswith("snapstore") else []
        row = {"command": name, "median": statistics.median(times), "min": min(times), "max": max(times),
               "modules": mods}
        rows.append(row)
        print(f"{name:<34} {row['median']:9.3f} {row['min']:7.3f} {row['max']:7.3f}  {', '.join(mods) or '-'}")
    return rows


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="runs of each command (default 7)")
    parser.add_argument("--dir", help="where to record the snapshot (default: a temporary directory, removed)")
    args = parser.parse_args(argv)
    tmp = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench_cli_"))
    try:
        snapshot = tmp / "small.snap"
        build(snapshot)
        return run(snapshot, args.repeat)
    finally:
        if not args.dir:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
