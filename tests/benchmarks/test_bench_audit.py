"""benchmarks/bench_audit.py runs, at a tiny size, so it never rots (no timings are asserted)."""

from __future__ import annotations

import pytest

from benchmarks import bench_audit


def test_bench_audit_tiny(tmp_path, capsys):
    pytest.importorskip("dask")
    assert bench_audit.main(["--size-mb", "3", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "audit, dask threads" in out and "MB/s stored" in out and "diff against itself" in out
