"""benchmarks/bench_ragged.py runs at a tiny size so it never rots."""

from __future__ import annotations

from benchmarks import bench_ragged


def test_ragged_benchmark_runs(tmp_path):
    r = bench_ragged.measure(64, tmp_path)
    assert r["rows"] == 64 and r["stored_total"] > 0
    assert r["unpadded_bytes"] <= r["padded_row_bytes"]
