"""benchmarks/bench_stages.py (snapstore's write path with its stages switched off one by one) at a tiny size."""

from __future__ import annotations

import io

import pytest

pytest.importorskip("sklearn", reason="the benchmark workloads crop scikit-learn's sample photographs")

from benchmarks import bench_stages  # noqa: E402


def test_stages_at_tiny_size() -> None:
    originals = [getattr(owner, name) for _, replaced in bench_stages.STAGES for owner, name, _ in replaced]
    out = io.StringIO()
    results = bench_stages.run(full=False, repeat=1, out=out)
    assert list(results) == ["bare", *(label for label, _ in bench_stages.STAGES), "minimal recorder"]
    assert all(r["ratio"] > 0 for r in results.values())
    shipped, unencoded = (results[line]["cpu"]["writer threads"]
                          for line in ("snapstore as shipped", "no chunk encoded"))
    assert shipped > 0  # the writer process's encoders, read while they live
    assert unencoded < shipped
    # every replaced function is snapstore's own again
    assert [getattr(owner, name) for _, replaced in bench_stages.STAGES for owner, name, _ in replaced] == originals
    assert "no rows staged" in out.getvalue() and "minimal recorder" in out.getvalue()
