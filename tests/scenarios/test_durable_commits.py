"""The end of an epoch commits before the iteration returns: a process killed right after an epoch ended
keeps that whole epoch (rows, raw samples, outputs), and the run continues with ``mode="a"``."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import snapstore
from snapstore import storage


class Rows(Dataset):
    def __len__(self) -> int:
        return 400

    def __getitem__(self, i: int):
        return torch.full((64,), float(i)), i


def check_epoch(ep) -> None:
    assert ep.complete and len(ep) == 400 and sorted(ep.order.tolist()) == list(range(400))
    x, i = ep.to_numpy()["0"], ep.to_numpy()["1"]
    np.testing.assert_array_equal(x[:, 0], ep.order.astype(np.float32))
    np.testing.assert_array_equal(i, ep.order)
    np.testing.assert_array_equal(ep.outputs["loss"], ep.order.astype(np.float32) * 2)


def test_a_kill_right_after_an_epoch_returned_keeps_the_epoch_and_the_run_continues(tmp_path):
    path = tmp_path / "run.snap"
    kill_at(path, "w", "epoch 0 returned")  # at once: nothing is given time to finish
    stream = snapstore.open(path)["train"]
    assert stream.epochs == [0]
    check_epoch(stream.epoch(0))
    assert len(stream.raw) == 400 and float(stream.raw[123][0][0]) == 123.0
    with snapstore.Recorder(path, mode="a") as rec:  # the killed writer's lock went with it
        train = rec.wrap(DataLoader(Rows(), batch_size=16, shuffle=True), name="train")
        for x, _ in train:
            train.log(loss=x[:, 0] * 2)
    stream = snapstore.open(path)["train"]
    assert stream.epochs == [0, 1]
    check_epoch(stream.epoch(1))
    assert snapstore.audit(path).ok


def test_a_reader_sees_the_epoch_committed_as_soon_as_its_iteration_returns(tmp_path):
    path = tmp_path / "run.snap"
    with snapstore.Recorder(path) as rec:
        train = rec.wrap(DataLoader(Rows(), batch_size=16, shuffle=True), name="train")
        for e in range(2):
            for x, _ in train:
                train.log(loss=x[:, 0] * 2)
            stream = snapstore.open(path)["train"]  # no waiting: the commit is done
            assert stream.epochs == list(range(e + 1))
            check_epoch(stream.epoch(e))


STAGES = textwrap.dedent('''
    import sys, torch, snapstore
    from torch.utils.data import DataLoader, Dataset

    class Rows(Dataset):
        def __len__(self): return 400
        def __getitem__(self, i): return torch.full((64,), float(i)), i

    rec = snapstore.Recorder(sys.argv[1], mode=sys.argv[2])
    print("opened", flush=True)
    stream = rec.wrap(DataLoader(Rows(), batch_size=16, shuffle=True), name="train")
    print("wrapped", flush=True)
    for e in range(2):
        for b, (x, i) in enumerate(stream):
            stream.log(loss=x[:, 0] * 2)
            print(f"batch {e} {b}", flush=True)
        print(f"epoch {e} returned", flush=True)
    print("closing", flush=True)
    rec.close()
    print("closed", flush=True)
    sys.stdin.readline()
''')


def kill_at(path, mode: str, marker: str) -> list[str]:
    """Run STAGES, SIGKILL it as soon as it prints ``marker``, and return the lines it printed once its writer
    process has left too: that runs one more operation before it notices (``recording.writer``), so the
    snapshot is read once the lock it inherited is free, as the next ``Recorder`` takes it."""
    proc = subprocess.Popen([sys.executable, "-c", STAGES, str(path), mode], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line.strip())
            if lines[-1] == marker:
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
        proc.stdout.close()
    assert lines[-1] == marker
    storage.SnapshotLock(str(path)).release()
    return lines


#: Epochs of the second run whose loop had returned when it was killed at each stage: those are whole.
RETURNED = {"opened": 0, "wrapped": 0, "batch 0 3": 0, "epoch 0 returned": 1, "batch 1 20": 1, "closing": 2,
            "closed": 2}


@pytest.mark.parametrize("marker", list(RETURNED))
def test_a_run_killed_at_any_stage_continues_with_mode_a(tmp_path, marker):
    path = tmp_path / "run.snap"
    kill_at(path, "w", "closed")  # a first run of two whole epochs, then a resumed one killed at the stage
    kill_at(path, "a", marker)
    before = list(snapstore.open(path)["train"].epochs)
    assert before[: 2 + RETURNED[marker]] == list(range(2 + RETURNED[marker]))
    stream = snapstore.open(path)["train"]
    for e in range(2 + RETURNED[marker]):
        check_epoch(stream.epoch(e))
    for e in before[2 + RETURNED[marker]:]:  # the epoch the kill cut: incomplete, its committed rows readable
        ep = stream.epoch(e)
        assert not ep.complete
        np.testing.assert_array_equal(ep.to_numpy()["0"][:, 0], ep.order.astype(np.float32))
    with snapstore.Recorder(path, mode="a") as rec:
        train = rec.wrap(DataLoader(Rows(), batch_size=16, shuffle=True), name="train")
        for x, _ in train:
            train.log(loss=x[:, 0] * 2)
    after = snapstore.open(path)["train"]
    assert after.epochs == [*before, len(before)]
    check_epoch(after.epoch(len(before)))
    findings = snapstore.audit(path).findings  # nothing but the epoch the kill cut, reported as incomplete
    cut = before[2 + RETURNED[marker]:]
    assert len(findings) == len(cut)
    assert all(f.check == "completeness" and f"epoch {e} is incomplete" in str(f) for f, e in zip(findings, cut))


UNCOMMITTED = textwrap.dedent('''
    import sys, torch, snapstore
    from snapstore import config
    from torch.utils.data import DataLoader, Dataset

    class Rows(Dataset):
        def __len__(self): return 3000
        def __getitem__(self, i): return torch.full((4096,), float(i)), i  # 16 KiB rows: 128 a chunk

    config.DEFAULT_FLUSH_INTERVAL = 3600.0  # no commit but the epoch's first record: stored chunks stay unnamed
    rec = snapstore.Recorder(sys.argv[1])
    stream = rec.wrap(DataLoader(Rows(), batch_size=64, shuffle=True), name="train")
    for b, (x, i) in enumerate(stream):
        if b == 40:
            print("chunks stored", flush=True)
            sys.stdin.readline()  # killed here
''')


class Wide(Dataset):
    def __len__(self):
        return 3000

    def __getitem__(self, i):
        return torch.full((4096,), float(i)), i


def chunks(folder):
    """The chunk files under ``folder``."""
    return [p for p in folder.rglob("*") if p.is_file() and p.name != "zarr.json"]


def test_chunks_a_killed_writer_never_committed_are_swept_by_mode_a(tmp_path):
    path = tmp_path / "run.snap"
    with subprocess.Popen([sys.executable, "-c", UNCOMMITTED, str(path)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout.readline() == "chunks stored\n"
            deadline = time.monotonic() + 60  # 2,560 rows handed off: the writer stores whole chunks of 128
            while not chunks(path / "train/raw") and time.monotonic() < deadline:  # raw chunks fill (epochs: one chunk)
                time.sleep(0.05)
        finally:
            proc.kill()
    strays = chunks(path / "train")
    assert chunks(path / "train/raw")
    assert len(snapstore.open(path)["train"].epoch(0)) == 0  # stored, never committed
    with snapstore.Recorder(path, mode="a") as rec:
        assert not any(p.exists() for p in strays) and not chunks(path)  # swept before anything is recorded
        train = rec.wrap(DataLoader(Wide(), batch_size=64, shuffle=True), name="train")
        for _ in train:
            pass
    stream = snapstore.open(path)["train"]
    assert stream.epochs == [0, 1]
    ep = stream.epoch(1)
    assert ep.complete and len(ep) == 3000
    np.testing.assert_array_equal(ep.to_numpy()["0"][:, 0], ep.order.astype(np.float32))
    findings = snapstore.audit(path).findings
    assert [f.check for f in findings] == ["completeness"] and "epoch 0 is incomplete" in str(findings[0])
