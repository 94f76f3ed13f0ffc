"""benchmarks/bench_export.py runs at a tiny size, so it never rots (the numbers are not checked)."""

from __future__ import annotations

import os
import warnings

from benchmarks import bench_export


def test_bench_export_smoke(tmp_path, capsys):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with warnings.catch_warnings():  # TensorFlow's own import-time deprecations, if any, are not ours
        warnings.simplefilter("ignore", DeprecationWarning)
        results = bench_export.main(["--size-mb", "1", "--in-process", "--workdir", str(tmp_path)])
    cases = [r["case"] for r in results]
    expected = [c for c in bench_export.CASES if bench_export._available(c)]
    assert cases == expected
    assert all(r["rows"] == 85 and r["seconds"] > 0 for r in results)
    assert "MB/s" in capsys.readouterr().out


def test_bench_export_one_case_in_a_subprocess(tmp_path):
    results = bench_export.main(["--size-mb", "0.5", "--cases", "memmap", "--workdir", str(tmp_path)])
    assert [r["case"] for r in results] == ["memmap"]
    assert results[0]["peak_anon"] > 0 and results[0]["peak_rss"] >= results[0]["rss0"]
