"""``snapstore export`` (``snapstore.cli.export``): .npz and .npy files equal what the loader yielded;
errors exit 1 or 2 without a traceback."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import snapstore
from snapstore.cli import main as cli
from tests.support.recording import N


def test_cli_export_npz_round_trip(loop_recording, loop_stream, tmp_path):
    path, seen = loop_recording
    out = tmp_path / "epoch1.npz"
    assert cli(["export", str(path), "--stream", "train", "--epoch", "1", "-o", str(out)]) == 0
    with np.load(out) as z:
        assert sorted(z.files) == ["0", "1", "index"]
        np.testing.assert_array_equal(z["0"], seen.x[1])
        np.testing.assert_array_equal(z["1"], seen.y[1])
        np.testing.assert_array_equal(z["index"], loop_stream.epoch(1).order)
    assert [p.name for p in tmp_path.iterdir()] == ["epoch1.npz"]  # no temporary left behind


def test_cli_export_npy_round_trip(loop_recording, loop_tensors, tmp_path):
    path, _ = loop_recording
    x, _ = loop_tensors
    out = tmp_path / "raw"
    argv = ["export", str(path), "--stream", "train", "--raw", "--format", "npy", "--fields", "0", "-o", str(out)]
    assert cli(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["0.npy", "index.npy"]
    np.testing.assert_array_equal(np.load(out / "0.npy"), x.numpy())
    np.testing.assert_array_equal(np.load(out / "index.npy"), np.arange(N))


def test_cli_export_strings_and_nested_fields(dict_recording, tmp_path):
    stream, _, batches = dict_recording
    path = stream.path.rsplit("/", 1)[0]
    out = tmp_path / "d"
    assert cli(["export", path, "--stream", "train", "--epoch", "0", "--format", "npy", "-o", str(out)]) == 0
    assert np.load(out / "meta" / "name.npy").tolist() == [n for b in batches for n in b["meta"]["name"]]
    assert cli(["export", path, "--stream", "train", "--epoch", "0", "-o", str(tmp_path / "d.npz")]) == 0
    with np.load(tmp_path / "d.npz") as z:
        assert sorted(z.files) == ["image", "index", "label", "meta/id", "meta/name"]
        np.testing.assert_array_equal(z["meta/id"], torch.cat([b["meta"]["id"] for b in batches]).numpy())


def test_cli_export_errors(loop_recording, tmp_path, capsys):
    path, _ = loop_recording
    base = ["export", str(path), "-o", str(tmp_path / "o.npz")]
    assert cli([*base, "--stream", "train", "--raw", "--epoch", "0"]) == 2
    assert cli([*base, "--stream", "train"]) == 2
    capsys.readouterr()
    assert cli([*base, "--stream", "nope", "--raw"]) == 1
    assert "no stream 'nope'" in capsys.readouterr().err
    assert cli([*base, "--stream", "train", "--epoch", "9"]) == 1
    assert "no epoch 9" in capsys.readouterr().err
    assert cli([*base, "--stream", "train", "--raw", "--fields", "zz"]) == 1
    err = capsys.readouterr().err
    assert "no field 'zz'" in err and "Traceback" not in err
    missing = tmp_path / "missing.snap"
    assert cli(["export", str(missing), "--stream", "train", "--raw", "-o", str(tmp_path / "o.npz")]) == 1
    (tmp_path / "o.npz").write_bytes(b"keep me")
    assert cli([*base, "--stream", "train", "--raw"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "o.npz").read_bytes() == b"keep me"
    assert cli([*base, "--stream", "train", "--raw", "--overwrite"]) == 0


# -- through the real command line: where -o writes -----------------------------------------------------------


def _cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snapstore", *args], capture_output=True, text=True, cwd=cwd,
                          check=False)


@pytest.fixture(scope="module")
def snap(tmp_path_factory):
    """A 'train' stream: 50 rows of (2, 3) float32 and a label, shuffled batches of 8, 2 epochs."""
    path = tmp_path_factory.mktemp("export") / "run.snap"
    data = TensorDataset(torch.randn(50, 2, 3), torch.arange(50) % 7)
    with snapstore.record(DataLoader(data, batch_size=8, shuffle=True), path) as stream:
        for _ in range(2):
            for _ in stream:
                pass
    return path


def test_out_without_a_suffix_gets_npz_appended_as_numpy_savez_does(snap, tmp_path):
    proc = _cli("export", str(snap), "--stream", "train", "--epoch", "1", "-o", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npz"]  # no file named 'out', no temporary left
    assert proc.stdout.startswith("wrote out.npz: 50 rows of stream 'train' epoch 1")
    expected = snapstore.open(snap)["train"].epoch(1).to_numpy()
    with np.load(tmp_path / "out.npz") as z:
        assert sorted(z.files) == ["0", "1", "index"]
        for key in z.files:
            np.testing.assert_array_equal(z[key], expected[key])


def test_out_ending_in_npz_is_used_as_is(snap, tmp_path):
    proc = _cli("export", str(snap), "--stream", "train", "--raw", "-o", str(tmp_path / "raw.npz"))
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["raw.npz"]
    with np.load(tmp_path / "raw.npz") as z:
        assert z["index"].tolist() == list(range(50))


def test_npy_writes_the_directory_out(snap, tmp_path):
    proc = _cli("export", str(snap), "--stream", "train", "--epoch", "0", "--format", "npy", "-o", "arrays",
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "arrays").iterdir()) == ["0.npy", "1.npy", "index.npy"]
    assert np.load(tmp_path / "arrays" / "0.npy").shape == (50, 2, 3)


def test_an_existing_out_npz_is_refused_without_overwrite(snap, tmp_path):
    (tmp_path / "out.npz").write_bytes(b"keep me")
    proc = _cli("export", str(snap), "--stream", "train", "--raw", "-o", "out", cwd=tmp_path)
    assert proc.returncode == 1
    assert "out.npz exists; pass --overwrite" in proc.stderr and "Traceback" not in proc.stderr
    assert (tmp_path / "out.npz").read_bytes() == b"keep me"
    assert _cli("export", str(snap), "--stream", "train", "--raw", "-o", "out", "--overwrite", "-q",
                cwd=tmp_path).returncode == 0
    with np.load(tmp_path / "out.npz") as z:
        assert len(z["index"]) == 50


def test_help_says_what_is_written_where():
    proc = _cli("export", "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "writes the file OUT.npz (.npz is appended unless OUT ends with it, like numpy.savez)" in text
    assert "--format npy writes the directory OUT, one <field>.npy per field plus index.npy" in text


def test_a_missing_epoch_exits_1_and_writes_nothing(snap, tmp_path):
    proc = _cli("export", str(snap), "--stream", "train", "--epoch", "5", "-o", "out", cwd=tmp_path)
    assert proc.returncode == 1
    assert "no epoch 5" in proc.stderr and "recorded epochs: [0, 1]" in proc.stderr
    assert list(tmp_path.iterdir()) == []
