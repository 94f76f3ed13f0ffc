"""benchmarks/bench_cli.py runs, once per command, so it never rots (no timings are asserted)."""

from __future__ import annotations

from benchmarks import bench_cli


def test_bench_cli_tiny(tmp_path, capsys):
    rows = bench_cli.main(["--repeat", "1", "--dir", str(tmp_path)])
    by = {r["command"]: r for r in rows}
    assert list(by) == ["python -c pass (floor)", "python -c 'import zarr' (floor)",
                        "python -c 'import torch' (floor)", "snapstore --version", "snapstore --help",
                        "snapstore info SNAP"]
    assert all(r["median"] > 0 for r in rows)
    assert by["snapstore --version"]["modules"] == by["snapstore --help"]["modules"] == []  # neither torch nor zarr
    assert "zarr" in by["snapstore info SNAP"]["modules"]
    assert (tmp_path / "small.snap").is_dir()
    out = capsys.readouterr().out
    assert "median s" in out and "snapstore info SNAP" in out
