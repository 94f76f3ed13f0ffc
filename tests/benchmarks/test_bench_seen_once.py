"""benchmarks/bench_seen_once.py runs at a tiny size so it never rots."""

from __future__ import annotations

from benchmarks import bench_seen_once


def test_seen_once_benchmark_runs(tmp_path):
    r = bench_seen_once.measure(200, tmp_path)
    assert r["once"]["raw"] > 200 * 3 * 32 * 32 * 4 > r["once"]["epoch"] * 10  # the rows live in raw/ only
    assert r["copied"]["epoch"] > 200 * 3 * 32 * 32 * 4  # before: each epoch copied them
