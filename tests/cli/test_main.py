"""The command line, called as ``main([...])`` on snapshots recorded here."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import zarr
from torch.utils.data import DataLoader, TensorDataset

import snapstore
from snapstore.cli import main


@pytest.fixture
def snapshot(tmp_path):
    """A snapshot with a 'train' stream (2 epochs, loss logged) and a 'test' stream (pred logged)."""
    path = tmp_path / "run.snap"
    data = TensorDataset(torch.randn(40, 1, 4, 4), torch.arange(40) % 5)
    with snapstore.Recorder(path) as rec:
        train = rec.wrap(DataLoader(data, batch_size=16, shuffle=True), name="train")
        test = rec.wrap(DataLoader(data, batch_size=32), name="test")
        for _ in range(2):
            for x, y in train:
                train.log(loss=x.flatten(1).sum(1))
        for x, y in test:
            test.log(pred=y)
    return path


def test_info_prints_streams_epochs_fields_and_bytes(snapshot, capsys):
    assert main(["info", str(snapshot)]) == 0
    out = capsys.readouterr().out
    info = snapstore.open(snapshot).info()
    assert f"snapshot {snapshot}" in out
    assert f"{info['bytes_stored']:,} bytes" in out
    assert "stream 'train': map-style dataset of 40 samples, 40 raw samples recorded" in out
    assert "stream 'test'" in out
    train = out[out.index("stream 'train'"):]
    assert "float32   (1, 4, 4)" in train and "int64     ()" in train
    assert "loss  float32" in train
    assert "epoch 0: 40 rows in 3 batches, complete" in train
    assert "epoch 1: 40 rows in 3 batches, complete" in train
    assert "epoch 0: 40 rows in 2 batches, complete" in out[: out.index("stream 'train'")]


def test_info_json_is_snapshot_info(snapshot, capsys):
    assert main(["info", str(snapshot), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(snapstore.open(snapshot).info()))
    assert printed["streams"]["train"]["epochs"][1] == {"epoch": 1, "rows": 40, "batches": 3, "complete": True}


def test_info_shows_ragged_fields(tmp_path, capsys):
    def collate(items):  # padded to each batch's longest sequence: the row shape varies
        return torch.nn.utils.rnn.pad_sequence(items, batch_first=True)

    path = tmp_path / "ragged.snap"
    data = [torch.ones(1 + i % 3) for i in range(9)]
    with snapstore.record(DataLoader(data, batch_size=2, collate_fn=collate), path) as stream:
        for _ in stream:
            pass
    assert main(["info", str(path)]) == 0
    assert "value  float32   (*,)          tensor  ragged" in capsys.readouterr().out


def test_info_marks_an_incomplete_epoch(tmp_path, capsys):
    path = tmp_path / "cut.snap"
    with snapstore.record(DataLoader(TensorDataset(torch.arange(10)), batch_size=4), path) as stream:
        for _ in stream:
            break
    assert main(["info", str(path)]) == 0
    assert "epoch 0: 4 rows in 1 batch, incomplete (cut short)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "no snapshot at"),
        (lambda p: p.mkdir() or (p / "notes.txt").write_text("hello"), "holds data but no Zarr v3 group"),
        (lambda p: zarr.create_group(str(p), zarr_format=3), "is missing or damaged"),
    ],
    ids=["missing", "directory", "plain-zarr-group"],
)
def test_info_on_what_is_not_a_snapshot_exits_1_with_the_message(tmp_path, capsys, make, message):
    path = tmp_path / "thing"
    make(path)
    assert main(["info", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("snapstore info: error: ")
    assert message in captured.err
    assert "Traceback" not in captured.err


@pytest.mark.parametrize(
    "argv",
    [[], ["bogus"], ["info"], ["info", "a", "b"], ["info", "x.snap", "--bogus"], ["demo", "--out"]],
)
def test_usage_errors_exit_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "usage: snapstore" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv", [["--help"], ["info", "--help"], ["demo", "--help"], ["--version"]])
def test_help_and_version_exit_0(argv, capsys):
    assert main(argv) == 0
    assert capsys.readouterr().out


def test_demo_refuses_an_existing_out(tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["demo", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "exists; pass --overwrite" in err and "Traceback" not in err
    # --overwrite replaces snapshots only, never other data
    assert main(["demo", "--out", str(out), "--overwrite"]) == 1
    assert "not a snapshot" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"


def test_python_dash_m_snapstore(snapshot):
    command = [sys.executable, "-m", "snapstore", "info", str(snapshot)]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "stream 'train'" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "snapstore", "info"], capture_output=True, text=True, check=False)
    assert proc.returncode == 2


def test_audit_export_diff_are_wired_into_the_cli(tmp_path, capsys):
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    path = tmp_path / "wired.snap"
    with snapstore.record(DataLoader(TensorDataset(torch.randn(20, 2), torch.arange(20)), batch_size=5), path) as s:
        list(s)
    assert main(["audit", str(path)]) == 0
    assert main(["diff", str(path), str(path)]) == 0
    assert main(["export", str(path), "--stream", "train", "--epoch", "0", "-o", str(tmp_path / "e0.npz")]) == 0
    import numpy as np

    with np.load(tmp_path / "e0.npz") as z:
        assert z["index"].tolist() == list(range(20))


# -- startup: what the command imports before it answers (timings are for benchmarks/bench_cli.py) ---------------


def _imported(*argv: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``python -X importtime -m snapstore *argv``; the process and the top-level packages it imported."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "snapstore", *argv], capture_output=True,
                          text=True, check=False)
    names = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in proc.stderr.splitlines()
             if line.startswith("import time:")}
    return proc, names


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["export", "--help"], ["show", "--help"]])
def test_version_and_help_import_neither_torch_nor_zarr_nor_numpy(argv):
    proc, names = _imported(*argv)
    assert proc.returncode == 0 and proc.stdout
    assert "snapstore" in names
    assert not names & {"torch", "zarr", "numpy", "PIL", "tqdm"}


def test_info_imports_the_reader_not_the_audit_the_recorder_or_the_demo(snapshot):
    proc, names = _imported("info", str(snapshot))
    assert proc.returncode == 0 and "stream 'train'" in proc.stdout
    assert "zarr" in names
    modules = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()}
    assert not {"snapstore.auditing", "snapstore.recording", "snapstore.cli.demo"} & modules


def test_version_is_the_installed_distributions():
    from importlib import metadata

    proc = subprocess.run([sys.executable, "-m", "snapstore", "--version"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0
    assert proc.stdout == f"snapstore {metadata.version('snapstore')}\n"


def test_the_package_root_loads_its_names_on_first_use():
    code = ("import sys, snapstore; before = 'torch' in sys.modules; import snapstore.auditing.report, "
            "snapstore.recording.capture; "
            "print(before, callable(snapstore.audit), callable(snapstore.record), snapstore.Recorder.__name__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # importing the layers (snapstore.auditing, snapstore.recording) leaves the functions audit and record in place
    assert proc.stdout.split() == ["False", "True", "True", "Recorder"]
