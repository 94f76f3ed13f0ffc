"""``snapstore.recording.session``: when recording itself fails (disk full, permission denied, the snapshot
deleted), training gets a clear error (or, with ``on_error="warn"``, one warning) and committed data survives."""

from __future__ import annotations

import shutil
import subprocess
import time
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import snapstore


class Noise(Dataset):
    """Incompressible rows (64 KiB each), so a small filesystem fills up fast."""

    def __len__(self) -> int:
        return 256

    def __getitem__(self, i: int):
        return torch.from_numpy(np.random.default_rng(i).integers(0, 2**31, 16384, dtype=np.int32)), i


@pytest.fixture
def small_disk(tmp_path):
    """A real 3 MiB tmpfs: writes past it fail with ENOSPC."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def record_until_full(path, on_error):
    small = DataLoader(Noise(), batch_size=8, sampler=range(16))
    big = DataLoader(Noise(), batch_size=8)
    yielded = 0
    with snapstore.Recorder(path, on_error=on_error) as rec:
        first, second = rec.wrap(small, name="first"), rec.wrap(big, name="second")
        list(first)
        for _ in range(3):
            for _ in second:
                yielded += 1
    return yielded


def test_disk_full_raises_at_the_next_batch_and_keeps_committed_data(small_disk):
    path = small_disk / "run.snap"
    with pytest.raises(snapstore.RecordingError, match="No space left on device") as err:
        record_until_full(path, "raise")
    assert "everything committed before the failure is readable" in str(err.value)
    snap = snapstore.open(path)
    ep = snap["first"].epoch(0)
    assert ep.complete and ep.order.tolist() == list(range(16))
    for k in (0, 15):
        assert torch.equal(ep[k][0], Noise()[k][0])
    second = snap["second"]
    for e in second.epochs:  # whatever was committed of the big stream reads back exactly
        cut = second.epoch(e)
        assert not cut.complete or len(cut) == 256
        for k in range(len(cut)):
            assert torch.equal(cut[k][0], Noise()[int(cut.order[k])][0])


def test_disk_full_with_on_error_warn_keeps_training(small_disk):
    path = small_disk / "run.snap"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yielded = record_until_full(path, "warn")
    assert yielded == 3 * 32  # every batch of every epoch reached the loop
    ours = [w for w in caught if issubclass(w.category, snapstore.SnapstoreWarning)]
    assert len(ours) == 1 and "No space left on device" in str(ours[0].message)
    assert snapstore.open(path)["first"].epoch(0).complete


def set_immutable(path, on):
    """``chattr +i`` every directory: writes fail with a PermissionError, even for root."""
    flag = "+i" if on else "-i"
    for p in [path, *path.rglob("*")]:
        if p.is_dir() and subprocess.run(["chattr", flag, str(p)], capture_output=True).returncode:
            pytest.skip("chattr is not available on this filesystem")


def test_permission_denied(tmp_path):
    path = tmp_path / "run.snap"
    loader = DataLoader(torch.utils.data.TensorDataset(torch.arange(40.0)), batch_size=4)
    with snapstore.Recorder(path) as rec:
        s = rec.wrap(loader, name="train")
        list(s)
        for _ in range(200):  # wait until a concurrent reader sees epoch 0 committed
            if snapstore.open(path)["train"].epochs and snapstore.open(path)["train"].epoch(0).complete:
                break
            time.sleep(0.05)
        set_immutable(path, True)
        try:
            with pytest.raises(snapstore.RecordingError) as err:
                for _ in range(3):
                    list(s)
        finally:
            set_immutable(path, False)
    assert isinstance(err.value.__cause__, PermissionError)
    ep = snapstore.open(path)["train"].epoch(0)
    assert ep.complete and len(ep) == 40


def test_snapshot_deleted_while_recording(tmp_path):
    """Deleted between epochs, while the writer process is idle (deleted under a write in flight, a folder
    can come back with it), the snapshot's loss is raised in the loop."""
    path = tmp_path / "run.snap"
    loader = DataLoader(torch.utils.data.TensorDataset(torch.arange(400.0)), batch_size=4)
    with pytest.raises(snapstore.RecordingError, match="vanished while recording"):
        with snapstore.record(loader, path) as s:
            for e in range(2):
                if e == 1:
                    shutil.rmtree(path)
                for _ in s:
                    time.sleep(0.001)


def test_on_error_warn_trains_on_after_the_snapshot_is_deleted(tmp_path):
    """A real failure mid-run (the snapshot deleted between epochs, while the writer process is idle, so
    that no write in flight recreates a folder): every later batch, ``log()`` and epoch still works, with
    one warning, and nothing is written where the snapshot was."""
    path = tmp_path / "run.snap"
    loader = DataLoader(torch.utils.data.TensorDataset(torch.arange(400.0)), batch_size=4)
    seen = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with snapstore.Recorder(path, on_error="warn") as rec:
            stream = rec.wrap(loader, name="train")
            for e in range(3):
                if e == 1:  # epoch 0 is committed, and the writer idle
                    shutil.rmtree(path)
                for x, in stream:
                    stream.log(loss=x * 2)
                    seen.append(len(x))
    assert seen == [4] * 300  # every batch of every epoch reached the loop
    ours = [w for w in caught if issubclass(w.category, snapstore.SnapstoreWarning)]
    assert len(ours) == 1 and "vanished while recording" in str(ours[0].message)
    assert not path.exists()  # no stray chunk or group recreated the deleted snapshot


def test_on_error_warn_trains_on_when_the_store_turns_read_only(tmp_path):
    path = tmp_path / "run.snap"
    loader = DataLoader(torch.utils.data.TensorDataset(torch.arange(40.0)), batch_size=4)
    batches = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with snapstore.Recorder(path, on_error="warn") as rec:
            stream = rec.wrap(loader, name="train")
            for (x,) in stream:
                stream.log(loss=x)
            for _ in range(200):  # wait until a concurrent reader sees epoch 0 committed
                if snapstore.open(path)["train"].epochs and snapstore.open(path)["train"].epoch(0).complete:
                    break
                time.sleep(0.05)
            set_immutable(path, True)
            try:
                for _ in range(3):
                    for (x,) in stream:
                        stream.log(loss=x)
                        batches += 1
            finally:
                set_immutable(path, False)
    assert batches == 30
    ours = [w for w in caught if issubclass(w.category, snapstore.SnapstoreWarning)]
    assert len(ours) == 1 and "PermissionError" in str(ours[0].message)
    ep = snapstore.open(path)["train"].epoch(0)
    assert ep.complete and ep.outputs["loss"].tolist() == list(range(40))


def test_a_memory_store_is_refused_before_anything_is_recorded():
    """The writer process cannot write into the training process's memory: ``memory://`` is refused with the fix."""
    with pytest.raises(snapstore.UsageError, match="record into a directory or an object store"):
        snapstore.Recorder("memory://snapstore-test/run.snap")
