"""A recording process killed with SIGKILL leaves a readable snapshot that lost only seconds.

Real subprocesses, killed at random points: every completed epoch stays intact,
the interrupted one is marked incomplete and holds every row handed to the
recorder more than 5 seconds before the kill, and no committed row is torn.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import torch

import snapstore

WRITER = textwrap.dedent('''
    import sys, time, torch, snapstore
    from torch.utils.data import DataLoader, Dataset

    class Rows(Dataset):
        def __len__(self): return 400
        def __getitem__(self, i): return torch.full((64,), float(i)), i

    path, mode = sys.argv[1], sys.argv[2]
    rec = snapstore.Recorder(path, mode=mode)
    stream = rec.wrap(DataLoader(Rows(), batch_size=16, shuffle=True), name="train")
    handed = 0
    for epoch in range(int(sys.argv[3])):
        for x, i in stream:
            handed += len(i)
            stream.log(loss=x[:, 0] * 2)
            print(f"{time.monotonic():.3f} {epoch} {handed}", flush=True)
            time.sleep(0.05)
    print("closing", flush=True)
    rec.close()
    print("closed", flush=True)
''')


def check_snapshot(path, log_lines, kill_time):
    """Completed epochs intact; the cut one incomplete with every row handed >5 s before the kill; nothing torn."""
    stream = snapstore.open(path)["train"]
    epochs = [stream.epoch(e) for e in stream.epochs]
    for ep in epochs[:-1]:
        assert ep.complete and len(ep) == 400 and sorted(ep.order.tolist()) == list(range(400))
    last = epochs[-1]
    handed_before = {}
    for line in log_lines:
        t, epoch, handed = line.split()
        if float(t) <= kill_time - 5:
            handed_before[int(epoch)] = int(handed)
    if handed_before and max(handed_before) == last.number and not last.complete:
        assert len(last) >= handed_before[last.number] - (400 * last.number)
    for ep in epochs:
        x = ep.to_numpy()
        np.testing.assert_array_equal(x["0"], np.repeat(ep.order[:, None].astype(np.float32), 64, axis=1))  # no torn rows
        np.testing.assert_array_equal(x["1"], ep.order)
        assert len(ep.batch_sizes) == -(-len(ep) // 16) or not ep.complete
    raw = stream.raw
    for i in raw.indices[:5]:
        assert torch.equal(raw[int(i)][0], torch.full((64,), float(i)))
    return stream


def run_and_kill(path, mode, epochs, delay):
    """Start the writer, SIGKILL it ``delay`` seconds after its first batch; return its progress lines and the kill time."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), mode, str(epochs)], stdout=subprocess.PIPE, text=True)
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            if line[0].isdigit():
                lines.append(line)
                started.set()

    reader = threading.Thread(target=read)
    reader.start()
    assert started.wait(120), "the writer never started"
    time.sleep(delay)
    kill_time = time.monotonic()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    reader.join()
    proc.stdout.close()
    return lines, kill_time


@pytest.mark.parametrize("window", [(0.5, 3.0), (5.5, 7.0), (7.0, 9.0)])
def test_sigkill_mid_epoch_loses_only_recent_rows(tmp_path, window):
    path = tmp_path / "run.snap"
    lines, kill_time = run_and_kill(path, "w", epochs=100, delay=random.uniform(*window))
    stream = check_snapshot(path, lines, kill_time)
    assert not stream.epoch(stream.epochs[-1]).complete

    # a resumed run appends after the crash, and the snapshot stays consistent
    proc = subprocess.run([sys.executable, "-c", WRITER, str(path), "a", "1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    stream = snapstore.open(path)["train"]
    assert stream.epoch(stream.epochs[-1]).complete and len(stream.epochs) >= 2


def test_sigkill_during_the_final_commit(tmp_path):
    path = tmp_path / "run.snap"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), "w", "1"], stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("closing"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    proc.stdout.close()
    stream = snapstore.open(path)["train"]
    ep = stream.epoch(0)
    assert len(ep) <= 400 and ep.complete == (len(ep) == 400 and ep.manifest.ended is not None)
    x = ep.to_numpy()
    np.testing.assert_array_equal(x["1"], ep.order)


def test_concurrent_reader_sees_committed_prefix_never_torn_rows(tmp_path):
    path = tmp_path / "run.snap"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), "w", "100"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline()[0].isdigit()
        seen_rows, deadline = [], time.monotonic() + 5
        while time.monotonic() < deadline:
            stream = snapstore.open(path)["train"]  # this test process is the second, reading process
            if not stream.epochs:
                continue
            total = 0
            for e in stream.epochs:
                ep = stream.epoch(e)
                assert ep.complete or e == stream.epochs[-1]
                x = ep.to_numpy()
                np.testing.assert_array_equal(x["0"][:, 0], ep.order.astype(np.float32))
                if "loss" not in ep.outputs:  # not committed yet: the first batch's log() lags its rows
                    assert len(ep) <= 16
                    continue
                loss = ep.outputs["loss"]  # outputs logged after the last committed batch may lag one batch
                logged = ~np.isnan(loss)
                np.testing.assert_array_equal(loss[logged], ep.order[logged].astype(np.float32) * 2)
                assert logged[: max(0, len(ep) - 16)].all()
                total += len(ep)
            seen_rows.append(total)
            time.sleep(0.3)
        assert seen_rows == sorted(seen_rows) and seen_rows[-1] > seen_rows[0]  # the committed prefix only grows
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
