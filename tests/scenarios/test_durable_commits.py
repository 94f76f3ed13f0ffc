"""The end of an epoch commits before the iteration returns: a process killed right after an epoch ended
keeps that whole epoch (rows, raw samples, outputs), and the run continues with ``mode="a"``."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

import snapstore

WRITER = textwrap.dedent('''
    import sys, torch, snapstore
    from torch.utils.data import DataLoader, Dataset

    class Rows(Dataset):
        def __len__(self): return 400
        def __getitem__(self, i): return torch.full((64,), float(i)), i

    rec = snapstore.Recorder(sys.argv[1])
    stream = rec.wrap(DataLoader(Rows(), batch_size=16, shuffle=True), name="train")
    for x, i in stream:
        stream.log(loss=x[:, 0] * 2)
    print("epoch 0 returned", flush=True)
    sys.stdin.readline()  # killed here, the Recorder never closed
''')


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
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "epoch 0 returned"
        proc.send_signal(signal.SIGKILL)  # at once: nothing is given time to finish
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
        proc.stdout.close()
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
