"""The audit benchmark runs, at a tiny size, so it never rots (no timings are asserted)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def test_bench_audit_tiny(tmp_path, capsys):
    pytest.importorskip("dask")
    path = Path(__file__).parents[1] / "benchmarks" / "bench_audit.py"
    spec = importlib.util.spec_from_file_location("bench_audit", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--size-mb", "3", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "audit, dask threads" in out and "MB/s stored" in out and "diff against itself" in out
