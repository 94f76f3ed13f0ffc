"""``snapstore export`` (``snapstore.cli.export``): .npz and .npy files equal what the loader yielded;
errors exit 1 or 2 without a traceback."""

from __future__ import annotations

import numpy as np
import torch

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
