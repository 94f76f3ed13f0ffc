"""The benchmarks, runnable as scripts (``python benchmarks/bench_record.py``) and importable as modules
(``from benchmarks import bench_record``), as their smoke tests in ``tests/benchmarks`` do."""
