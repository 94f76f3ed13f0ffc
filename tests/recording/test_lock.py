"""One writer per snapshot: a ``Recorder`` locks a local snapshot for its life, and a second writer
(in this process or another) is refused with ``SnapshotLockedError`` instead of interleaving epochs or
emptying the snapshot."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
import zarr
from torch.utils.data import DataLoader, TensorDataset

import snapstore

WRITER = textwrap.dedent("""
    import sys
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    import snapstore

    loader = DataLoader(TensorDataset(torch.arange(12.0)), batch_size=4)
    with snapstore.Recorder(sys.argv[1], mode=sys.argv[2]) as rec:
        stream = rec.wrap(loader, name="train")
        list(stream)
        print("recording", flush=True)
        sys.stdin.readline()  # hold the Recorder open until the test says so
        list(stream)
    print("closed", flush=True)
""")


def loader() -> DataLoader:
    return DataLoader(TensorDataset(torch.arange(12.0)), batch_size=4)


@pytest.fixture
def other_process(tmp_path):
    """Start a process recording into a snapshot; yields (path, process) once it holds its Recorder."""
    started = []

    def start(path, mode="w"):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), mode], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        started.append(proc)
        assert proc.stdout.readline().strip() == "recording"
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def finish(proc) -> None:
    out, _ = proc.communicate("\n", timeout=120)
    assert proc.returncode == 0 and out.strip() == "closed"


def test_a_second_process_cannot_append_or_overwrite_while_one_records(tmp_path, other_process):
    path = tmp_path / "run.snap"
    proc = other_process(path)
    with pytest.raises(snapstore.SnapshotLockedError, match="being recorded by another Recorder") as err:
        snapstore.Recorder(path, mode="a")
    assert str(path) in str(err.value) and "close that Recorder first" in str(err.value)
    with pytest.raises(snapstore.SnapshotLockedError):
        snapstore.Recorder(path, overwrite=True)
    with pytest.raises(snapstore.SnapshotLockedError):
        snapstore.record(loader(), path, overwrite=True)
    finish(proc)
    stream = snapstore.open(path)["train"]  # nothing of the refused writers reached the snapshot
    assert stream.epochs == [0, 1] and all(stream.epoch(e).complete for e in (0, 1))
    with snapstore.Recorder(path, mode="a") as rec:  # the lock went with the Recorder
        list(rec.wrap(loader(), name="train"))
    assert snapstore.open(path)["train"].epochs == [0, 1, 2]


def test_this_process_cannot_write_a_snapshot_another_process_appends_to(tmp_path, other_process):
    path = tmp_path / "run.snap"
    with snapstore.Recorder(path) as rec:
        list(rec.wrap(loader(), name="train"))
    proc = other_process(path, "a")
    with pytest.raises(snapstore.SnapshotLockedError):
        snapstore.Recorder(path, mode="a")
    finish(proc)
    assert snapstore.open(path)["train"].epochs == [0, 1, 2]


def test_two_recorders_in_one_process(tmp_path):
    path = tmp_path / "run.snap"
    with snapstore.Recorder(path) as rec:
        list(rec.wrap(loader(), name="train"))
        for kwargs in ({"mode": "a"}, {"overwrite": True}):
            with pytest.raises(snapstore.SnapshotLockedError):
                snapstore.Recorder(path, **kwargs)
    with snapstore.Recorder(path, overwrite=True) as rec:  # released at close
        with pytest.raises(snapstore.SnapshotLockedError):
            snapstore.Recorder(path, mode="a")
        list(rec.wrap(loader(), name="other"))
    assert snapstore.open(path).streams == ["other"]


def test_a_refused_recorder_releases_nothing_it_did_not_take(tmp_path):
    path = tmp_path / "run.snap"
    with pytest.raises(snapstore.SnapshotNotFoundError):
        snapstore.Recorder(path, mode="a")
    (tmp_path / "file").write_text("x")
    with pytest.raises(snapstore.SnapshotExistsError):
        snapstore.Recorder(tmp_path / "file", overwrite=True)
    with snapstore.Recorder(path) as rec:
        list(rec.wrap(loader(), name="train"))


def test_the_lock_leaves_nothing_in_the_snapshot(tmp_path):
    """The lock is on the directory, not a file in it: plain zarr and ``audit`` see the same snapshot."""
    path = tmp_path / "run.snap"
    with snapstore.Recorder(path) as rec:
        list(rec.wrap(loader(), name="train"))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # zarr warns about entries that are no node
            root = zarr.open_group(str(path), mode="r")
            assert sorted(name for name, _ in root.members()) == ["train"]
            assert snapstore.open(path)["train"].epochs == [0]
    assert snapstore.audit(path).ok
