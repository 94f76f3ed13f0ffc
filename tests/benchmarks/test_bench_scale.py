"""benchmarks/bench_scale.py at a tiny size, so it never rots (no timing assertions: numbers are only printed)."""

from __future__ import annotations

import pytest

pytest.importorskip("sklearn", reason="the ImageNet-like workload crops scikit-learn's sample photographs")

from benchmarks import bench_scale  # noqa: E402


def test_tiny_run_prints_both_tables(capsys) -> None:
    bench_scale.main([])
    out = capsys.readouterr().out
    for row in ('seen="hash"', 'seen="full"', "OLMo-style np.save", 'seen={"batches": 0.01}'):
        assert row in out


def test_packed_tokens_are_windows_of_the_corpus() -> None:
    ds = bench_scale.PackedTokens(8, 16)
    assert len(ds) == 8 and ds[3].dtype.is_floating_point is False
    assert (ds[3].numpy() == ds.tokens[48:64]).all()
    perm = bench_scale.global_indices(8, 1)
    assert sorted(perm.tolist()) == list(range(8))
