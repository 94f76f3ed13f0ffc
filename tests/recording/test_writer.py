"""``snapstore.recording.writer``: the writer process, fed through a shared-memory ring, writes exactly what
the loop handed over (the ring wrapping around, rows larger than it, several threads at once), tells the loop
why it failed, and does not outlive the training process or hold its lock."""

from __future__ import annotations

import ctypes
import mmap
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

import snapstore
from snapstore import config
from snapstore.recording.writer import WriterProcess
from snapstore.storage import _zarr


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, exited but not yet reaped by its parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=12), row=st.integers(1, 700),
       ring=st.sampled_from([4096, 16384]))
def test_rows_round_trip_through_a_ring_that_wraps(tmp_path_factory, monkeypatch, sizes, row, ring):
    """Batches of any size through a ring of a few KiB: the ring wraps around many times, and a batch larger
    than the ring goes by value; every row reads back bitwise, in order."""
    monkeypatch.setattr(config, "DEFAULT_QUEUE_BYTES", ring)
    n = sum(sizes)
    data = torch.from_numpy(np.random.default_rng(n).standard_normal((n, row), dtype=np.float32))
    batches = [list(range(lo, lo + s)) for lo, s in zip(np.cumsum([0, *sizes[:-1]]).tolist(), sizes)]
    path = tmp_path_factory.mktemp("ring") / "run.snap"
    with snapstore.Recorder(path) as rec:
        stream = rec.wrap(DataLoader(TensorDataset(data), batch_sampler=batches), name="train", raw=None)
        seen = [x.clone() for x, in stream]
    ep = snapstore.open(path)["train"].epoch(0)
    assert ep.complete and ep.order.tolist() == list(range(n))
    np.testing.assert_array_equal(ep.to_numpy()["0"], torch.cat(seen).numpy())


def _slow_writer(monkeypatch, seconds: float) -> torch.Tensor:
    """Make the ring hold two batches of 32 rows of 4 KiB (two chunks each) and every chunk's encoding take
    ``seconds`` longer (the forked writer inherits the slower function); return 1,024 such rows."""
    monkeypatch.setattr(config, "DEFAULT_CHUNK_BYTES", 64 * 1024)  # 16 rows of 4 KiB a chunk
    monkeypatch.setattr(config, "DEFAULT_QUEUE_BYTES", 2 * 32 * 4096 + 4096)  # two batches of 32 rows
    encode = _zarr.encode

    def slow(codecs, block):
        time.sleep(seconds)
        return encode(codecs, block)

    monkeypatch.setattr(_zarr, "encode", slow)
    return torch.from_numpy(np.random.default_rng(0).standard_normal((1024, 1024), dtype=np.float32))


def test_chunks_stored_from_the_ring_are_encoded_before_it_is_reused(tmp_path, monkeypatch):
    """Whole chunks of a batch are stored from the ring itself, not staged: the writer process hands an
    operation's rows back only once every chunk stored from them is encoded. Encoding each chunk is slowed
    (the forked writer inherits the slower function) and the ring holds two batches, so rows handed back
    early would be overwritten by later batches before their chunks are encoded."""
    data = _slow_writer(monkeypatch, 0.005)
    path = tmp_path / "run.snap"
    with snapstore.Recorder(path) as rec:
        for _ in rec.wrap(DataLoader(TensorDataset(data), batch_size=32), name="train", raw=None):
            pass
    np.testing.assert_array_equal(snapstore.open(path)["train"].epoch(0).to_numpy()["0"], data.numpy())


class _Sums:
    """A writer process's target that keeps, for each array each operation hands it, its sum and whether it
    came through the ring (a view of the shared mapping) rather than by value."""

    def __init__(self) -> None:
        self.sums: list[tuple[float, bool]] = []

    def run(self, name, args):
        self.sums.extend((float(a.sum()), isinstance(a.base, mmap.mmap)) for a in args)

    def flush(self, durable=False):
        pass

    def close(self):
        return self.sums


def _resident_kib(address: int) -> int:
    """KiB resident of this process's mapping that holds ``address`` (Linux: ``/proc/self/smaps``)."""
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            first = line.split()[0]
            if "-" in first and not first.endswith(":"):  # a mapping starts: "start-end perms offset ..."
                lo, hi = (int(x, 16) for x in first.split("-"))
                inside = lo <= address < hi
            elif inside and first == "Rss:":
                return int(line.split()[1])
    raise LookupError(f"no mapping holds {address:#x}")


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="resident pages per mapping are Linux's /proc")
def test_a_loop_its_writer_keeps_up_with_hands_every_batch_over_through_the_start_of_the_ring():
    """Where the writer process has read every row handed over before the next batch (a step-bound loop), the
    next batch goes to the start of the ring again: 48 batches of 1 MiB through a 64 MiB ring leave a few MiB
    of it resident, not 48 (each page touched is a page fault in both processes and a cache miss). Every
    batch still reaches the writer whole."""
    writer = WriterProcess(_Sums, interval=60.0, ring_bytes=64 * 1024 * 1024)
    batches = [np.full((32, 8192), k, dtype=np.float32) for k in range(48)]  # 1 MiB each
    try:
        for batch in batches:
            writer.send("put", batch)
            writer.drain()
        view = ctypes.c_char.from_buffer(writer._ring)
        resident = _resident_kib(ctypes.addressof(view))
        del view  # the ring cannot close while a view of it is alive
    finally:
        sums = writer.close()
    assert sums == [(float(b.sum()), True) for b in batches]
    assert resident < 8 * 1024, f"{resident} KiB of the ring resident after 48 MiB handed over"


def test_rows_after_the_ring_starts_over_have_the_whole_ring():
    """The ring starts over while most of it lies past the head (40 of 64 MiB handed over, all read); the
    next operation's second array, 50 MiB, still goes through the ring: the end skipped is free at once, not
    once the operation is read (which would send it by value, or make the loop wait for room it has)."""
    writer = WriterProcess(_Sums, interval=60.0, ring_bytes=64 * 1024 * 1024)
    first = np.full(40 * 1024 * 256, 1, dtype=np.float32)
    small, large = np.full(1024 * 256, 2, dtype=np.float32), np.full(50 * 1024 * 256, 3, dtype=np.float32)
    try:
        writer.send("put", first)
        writer.drain()
        writer.send("put", small, large)
    finally:
        sums = writer.close()
    assert sums == [(float(a.sum()), True) for a in (first, small, large)]


def _sleeps() -> int:
    """How many times the calling thread has gone to sleep of its own accord (Linux: voluntary context switches)."""
    with open(f"/proc/self/task/{threading.get_native_id()}/status") as f:
        return int(next(line for line in f if line.startswith("voluntary_ctxt_switches")).split()[1])


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="per-thread switch counts are Linux's /proc")
def test_the_training_thread_sleeps_until_the_writer_frees_room_in_the_ring(tmp_path, monkeypatch):
    """A loop faster than its writer waits for room in the ring asleep, woken as the writer process frees
    rows (about once a batch), not every fraction of a millisecond. Encoding is slowed (the forked writer
    inherits the slower function) and the ring holds two batches of 32 rows (two chunks each), so the loop waits
    at nearly every one of its 32 batches, some 10 ms each: polling the ring every 0.2 ms slept 1,233-1,265
    times, woken by the writer 33."""
    data = _slow_writer(monkeypatch, 0.01)
    path = tmp_path / "run.snap"
    with snapstore.Recorder(path) as rec:
        stream = rec.wrap(DataLoader(TensorDataset(data), batch_size=32), name="train", raw=None)
        before = _sleeps()
        for _ in stream:
            pass
        slept = _sleeps() - before
    assert slept < 8 * 32, f"the training thread slept {slept} times in 32 batches"
    np.testing.assert_array_equal(snapstore.open(path)["train"].epoch(0).to_numpy()["0"], data.numpy())


def test_a_loop_waiting_for_room_learns_at_once_that_the_writer_process_was_killed(tmp_path, monkeypatch):
    """The writer process killed (SIGKILL: the kernel's OOM killer) while the loop waits for room in the ring:
    the loop's next batch raises ``RecordingError`` instead of waiting for a writer that is gone. The
    writer is slowed so that the ring, two batches long, is full whenever it dies."""
    data = _slow_writer(monkeypatch, 0.05)
    rec = snapstore.Recorder(tmp_path / "run.snap")
    stream = rec.wrap(DataLoader(TensorDataset(data), batch_size=32), name="train", raw=None)
    outcome: list[BaseException | int] = []

    def loop():
        batches = 0
        try:
            for _ in stream:
                batches += 1
                if batches == 4:
                    os.kill(rec._session.writer_pid, signal.SIGKILL)
            outcome.append(batches)
        except BaseException as e:  # noqa: BLE001 - checked below, in the test's thread
            outcome.append(e)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    thread.join(60)  # a loop that waited for the dead writer would still be waiting
    assert not thread.is_alive(), "the loop still waits for room from a writer process that was killed"
    assert len(outcome) == 1 and isinstance(outcome[0], snapstore.RecordingError), outcome
    assert "stopped unexpectedly" in str(outcome[0])
    rec.close()  # already raised: closing does not raise it again


@pytest.mark.skipif(not hasattr(os, "sched_getscheduler"), reason="scheduling policies are Linux's")
def test_the_writer_process_and_its_threads_do_not_preempt_the_training_thread(tmp_path):
    """The writer process runs at SCHED_BATCH, and so does every thread it started to encode and store chunks:
    a batch handed over does not put the writer on the CPU ahead of the training thread that sent it."""
    data = torch.from_numpy(np.random.default_rng(0).standard_normal((4096, 1024), dtype=np.float32))
    policy = os.sched_getscheduler(0)
    with snapstore.Recorder(tmp_path / "run.snap") as rec:
        for _ in rec.wrap(DataLoader(TensorDataset(data), batch_size=512), name="train", raw=None):
            pass
        pid = rec._session.writer_pid
        threads = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        assert len(threads) > 1  # its encoders
        assert {os.sched_getscheduler(t) for t in threads} == {os.SCHED_BATCH}
    assert os.sched_getscheduler(0) == policy  # the training process's own policy is left alone


REUSING = textwrap.dedent('''
    import sys
    import numpy as np, torch
    from torch.utils.data import DataLoader, TensorDataset
    import snapstore

    def minor_faults(pid):  # pages the process has touched for the first time: /proc/<pid>/stat field 10
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rpartition(")")[2].split()[7])

    data = torch.from_numpy(np.random.default_rng(0).integers(0, 16, (6144, 3072)).astype(np.float32))
    with snapstore.Recorder(sys.argv[1]) as rec:
        stream = rec.wrap(DataLoader(TensorDataset(data), batch_size=256), name="train", raw=None)
        pid = rec._session.writer_pid
        for _ in stream:  # epoch 0: the writer's buffers are made
            pass
        before = minor_faults(pid)
        for _ in range(2):  # epoch 1 is all stored once epoch 2's last batch is handed over
            for _ in stream:
                pass
        print(minor_faults(pid) - before)
''')


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "mallopt") or not os.path.exists("/proc/self/stat"),
                    reason="glibc's allocator, and /proc to count page faults")
def test_the_writer_process_reuses_the_memory_of_chunks_it_has_stored(tmp_path):
    """Epochs of 2 MiB chunks (12 KiB rows, ~2x compressible) after the first: the writer touches almost no
    new pages, reusing the memory of the chunks it has stored (140-190 page faults here). With glibc's
    default, which mapped its chunk-sized blocks afresh and unmapped them once freed, 14,500 (200-400 a
    chunk). In a script of its own: run inside this test process after the file's other tests, the writer
    took about 13 thousand in one run of the file in four; in a fresh interpreter, as a training script
    runs, 140-190 in every run."""
    chunks = 6144 * 3072 * 4 // config.DEFAULT_CHUNK_BYTES  # 36 an epoch
    run = subprocess.run([sys.executable, "-c", REUSING, str(tmp_path / "run.snap")], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    faults = int(run.stdout)
    assert faults < 20 * chunks, f"{faults} page faults in the writer for {chunks}-{2 * chunks} chunks stored"


def test_streams_recorded_from_two_threads_at_once(tmp_path, monkeypatch):
    """Two loaders of one Recorder iterated by two threads at the same time (a validation loop beside the
    training loop): the rows each thread handed over are interleaved in a small ring that wraps around
    often, and each stream reads back bitwise."""
    monkeypatch.setattr(config, "DEFAULT_QUEUE_BYTES", 64 * 1024)
    path = tmp_path / "run.snap"
    make = lambda k: TensorDataset(torch.full((600, 256), float(k)) + torch.arange(600.0)[:, None])  # noqa: E731
    failures: list[BaseException] = []
    with snapstore.Recorder(path) as rec:
        streams = [rec.wrap(DataLoader(make(k), batch_size=7, shuffle=True), name=f"s{k}", raw=None)
                   for k in range(2)]

        def loop(stream):
            try:
                for _ in range(3):
                    for _ in stream:
                        pass
            except BaseException as e:  # noqa: BLE001 - raised below, in the test's thread
                failures.append(e)

        threads = [threading.Thread(target=loop, args=(s,)) for s in streams]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not failures
    snap = snapstore.open(path)
    for k in range(2):
        for e in range(3):
            ep = snap[f"s{k}"].epoch(e)
            assert ep.complete and sorted(ep.order.tolist()) == list(range(600))
            np.testing.assert_array_equal(ep.to_numpy()["0"], make(k).tensors[0][ep.order].numpy())


def test_a_failure_names_where_it_happened_in_the_writer_process(tmp_path):
    """The writer process's exception reaches the loop as the cause of ``RecordingError``, with the
    traceback it had there in its notes."""
    path = tmp_path / "run.snap"
    epochs = path / "train" / "epochs"
    loader = DataLoader(TensorDataset(torch.arange(40.0)), batch_size=4)
    with pytest.raises(snapstore.RecordingError, match="writer process") as err:
        with snapstore.record(loader, path) as stream:
            list(stream)
            if subprocess.run(["chattr", "+i", str(epochs)], capture_output=True).returncode:
                pytest.skip("chattr is not available on this filesystem")
            try:  # epoch 1's group cannot be made, even by root
                list(stream)
            finally:
                subprocess.run(["chattr", "-i", str(epochs)], check=True)
    assert isinstance(err.value.__cause__, PermissionError)
    notes = "".join(err.value.__cause__.__notes__)
    assert "in snapstore's writer process" in notes and "open_epoch" in notes


KILLED = textwrap.dedent('''
    import sys, torch, snapstore
    from torch.utils.data import DataLoader, TensorDataset

    rec = snapstore.Recorder(sys.argv[1])
    stream = rec.wrap(DataLoader(TensorDataset(torch.randn(100000, 256)), batch_size=64), name="train")
    for b, _ in enumerate(stream):
        if b == 20:
            print(rec._session.writer_pid, flush=True)
            sys.stdin.readline()  # killed here
''')


def test_the_writer_process_does_not_outlive_a_killed_training_process(tmp_path):
    """SIGKILL to the training process: its writer process leaves within moments, commits nothing more, and
    lets go of the snapshot's lock, so the next run can append."""
    path = tmp_path / "run.snap"
    with subprocess.Popen([sys.executable, "-c", KILLED, str(path)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as proc:
        try:
            writer = int(proc.stdout.readline())
            assert alive(writer)
        finally:
            proc.kill()
    deadline = time.monotonic() + 10
    while alive(writer) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive(writer)
    with snapstore.Recorder(path, mode="a") as rec:  # the lock is free
        list(rec.wrap(DataLoader(TensorDataset(torch.randn(100000, 256)), batch_size=64), name="train"))
    assert snapstore.open(path)["train"].epoch(1).complete


INTERRUPTED = textwrap.dedent('''
    import signal, sys, time, torch, snapstore
    from torch.utils.data import DataLoader, TensorDataset

    def stop(signum, frame):  # what a job scheduler's notice does in a training script
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    # Ctrl-C's KeyboardInterrupt, even where this test runs with SIGINT ignored (a shell's background job),
    # which Python would otherwise keep ignoring in this child
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with snapstore.Recorder(sys.argv[1]) as rec:
        stream = rec.wrap(DataLoader(TensorDataset(torch.arange(1000.0)), batch_size=10), name="train")
        for b, _ in enumerate(stream):
            if b == 30:
                print("interrupt me", flush=True)
                time.sleep(60)
''')


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_process_group_stops_the_loop_and_the_writer_commits_what_it_was_handed(tmp_path, signum):
    """Ctrl-C (SIGINT) or a scheduler's SIGTERM reaches the whole process group: the writer process ignores
    it (it does not run the training script's handler), and the training process, leaving the ``with``
    block, has it commit the 31 batches handed over, as an incomplete epoch."""
    path = tmp_path / "run.snap"
    with subprocess.Popen([sys.executable, "-c", INTERRUPTED, str(path)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True) as proc:
        assert proc.stdout.readline() == "interrupt me\n"
        os.killpg(proc.pid, signum)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    ep = snapstore.open(path)["train"].epoch(0)
    assert not ep.complete and len(ep) == 310
    np.testing.assert_array_equal(ep.to_numpy()["0"], np.arange(310.0, dtype=np.float32))
