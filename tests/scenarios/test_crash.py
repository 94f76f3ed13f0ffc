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
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from torch.utils.data import DataLoader

import snapstore
from snapstore import storage

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
        # no torn rows
        np.testing.assert_array_equal(x["0"], np.repeat(ep.order[:, None].astype(np.float32), 64, axis=1))
        np.testing.assert_array_equal(x["1"], ep.order)
        assert len(ep.batch_sizes) == -(-len(ep) // 16) or not ep.complete
    raw = stream.raw
    for i in raw.indices[:5]:
        assert torch.equal(raw[int(i)][0], torch.full((64,), float(i)))
    return stream


def run_and_kill(path, mode, epochs, delay):
    """Start the writer, SIGKILL it ``delay`` seconds after its first batch; return its progress lines and the
    kill time once its writer process has left too (it may finish the operation it was running: a reader
    right after the kill could list an epoch fewer than the snapshot ends with)."""
    command = [sys.executable, "-c", WRITER, str(path), mode, str(epochs)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
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
    storage.SnapshotLock(str(path)).release()  # taken once the writer process has let go of it
    return lines, kill_time


@pytest.mark.parametrize("window", [(0.5, 3.0), (5.5, 7.0), (7.0, 9.0)])
def test_sigkill_mid_epoch_loses_only_recent_rows(tmp_path, window):
    path = tmp_path / "run.snap"
    lines, kill_time = run_and_kill(path, "w", epochs=100, delay=random.uniform(*window))
    stream = check_snapshot(path, lines, kill_time)
    last = stream.epoch(stream.epochs[-1])
    if last.complete:  # killed after its last batch, before the writer process started the next epoch
        handed = [int(line.split()[2]) for line in lines if int(line.split()[1]) == last.number]
        assert len(last) == 400 and max(handed) == 400 * (last.number + 1)

    # a resumed run appends after the crash, and the snapshot stays consistent
    command = [sys.executable, "-c", WRITER, str(path), "a", "1"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
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
            epochs = stream.epochs  # listed now: a later listing may hold the next epoch already
            if not epochs:
                continue
            total = 0
            for e in epochs:
                ep = stream.epoch(e)
                assert ep.complete or e == epochs[-1]
                if len(ep) == 0:  # just started: nothing committed, perhaps not even the schema
                    continue
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


def test_no_node_is_written_before_its_parent(tmp_path, monkeypatch):
    """zarr writes a node's zarr.json and its missing parents' concurrently: a kill between the two
    left `epochs/1/seen/0/zarr.json` under a `seen/` with none, which readers take for damage.
    Every zarr.json the recorder writes must find its parent's already on disk."""
    orphans = []
    real_set = zarr.storage.LocalStore.set

    async def set_after_parent(self, key, value):
        if key.endswith("/zarr.json"):
            parent = key.rsplit("/", 2)[0] + "/zarr.json" if key.count("/") > 1 else "zarr.json"
            if not (Path(self.root) / parent).exists():
                orphans.append(key)
        await real_set(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", set_after_parent)
    texts = [torch.arange(n) for n in (3, 5, 2, 7, 4, 6, 1, 8)]
    items = [{"image": {"pixels": torch.full((4,), float(i))}, "text": t} for i, t in enumerate(texts)]
    def collate(b):
        return {"pixels": torch.stack([x["image"]["pixels"] for x in b]), "text": [x["text"] for x in b]}

    loader = DataLoader(items, batch_size=2, collate_fn=collate)
    with snapstore.Recorder(tmp_path / "run.snap") as rec:
        stream = rec.wrap(loader, name="train")
        for epoch in range(2):
            for step, batch in enumerate(stream):
                stream.log(score=batch["pixels"].mean(1))
                if epoch == 1 and step == 1:
                    break  # epoch 1 is left incomplete, then continued
    with snapstore.Recorder(tmp_path / "run.snap", mode="a") as rec:
        stream = rec.wrap(loader, name="train", resume_epoch=True)
        for batch in stream:
            pass
    assert snapstore.open(tmp_path / "run.snap")["train"].epochs == [0, 1]
    assert orphans == []
