"""benchmarks/bench_limits.py (the floors: what this machine allows, whatever the recorder) at a tiny size."""

from __future__ import annotations

import io

import pytest

pytest.importorskip("sklearn", reason="the benchmark workloads crop scikit-learn's sample photographs")

from benchmarks import bench_limits  # noqa: E402


def test_floors_at_tiny_size() -> None:
    out = io.StringIO()
    results = bench_limits.run(full=False, repeat=1, out=out)
    assert set(results["loop"]) == {"bare", "lz4", "process", "durable", "none", "stream", "compute", "bare nw=2",
                                    "lz4 nw=2", "durable nw=2"}
    assert all(v > 0 for v in results["loop"].values()) and results["disk MB/s"] > 0
    assert set(results["step"]) == {0, 2}
    for r in results["step"].values():
        assert set(r) == {"bare", "copy", "encode", "durable", "durable, raw", "copy ms", "batch ms"}
        assert r["bare"] == 1 and all(v > 0 for v in r.values())
    text = out.getvalue()
    assert "minimal recorder" in text and "writer process" in text and "one cold row" in text
    assert "chunks stored durably" in text
