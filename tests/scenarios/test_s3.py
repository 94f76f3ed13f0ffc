"""Snapshots on object storage: record and read s3:// URLs against a real S3-compatible
server (moto) on 127.0.0.1, started and stopped by the module's fixture."""

from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

import snapstore
from tests.support.datasets import Indexed
from tests.support.recording import same, snapshot_batch

pytest.importorskip("s3fs", reason="object storage needs s3fs: pip install 'snapstore[s3]'")
pytest.importorskip("moto.server", reason="the S3 tests need moto[server]: pip install 'snapstore[test]'")
from benchmarks.bench_s3 import CREDENTIALS, _free_port, moto_server, record_throughput  # noqa: E402

BUCKET = "snapstore-test"
REPO = Path(__file__).resolve().parents[2]
#: One attempt and short timeouts, so that a failing request fails at once instead of being retried.
NO_RETRIES = {"config_kwargs": {"connect_timeout": 2, "read_timeout": 5, "retries": {"max_attempts": 1}}}


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``storage_options`` for a moto server on loopback holding an empty bucket ``BUCKET``."""
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with pytest.MonkeyPatch.context() as mp:
        for k, v in CREDENTIALS.items():
            mp.setenv(k, v)
        with moto_server(BUCKET, log=str(log)) as storage_options:
            yield storage_options


def loader() -> DataLoader:
    return DataLoader(Indexed(40, augment=True), batch_size=6, shuffle=True, num_workers=2)


def record(url: str, so: dict[str, Any], epochs: int, **kw: Any) -> list[list[Any]]:
    seen = []
    with snapstore.Recorder(url, storage_options=so, **kw) as rec:
        stream = rec.wrap(loader(), name="train")
        for _ in range(epochs):
            batches = []
            for batch in stream:
                batches.append(snapshot_batch(batch))
                stream.log(loss=batch[0].double().sum((1, 2, 3)))
            seen.append(batches)
    return seen


@pytest.fixture(scope="module")
def s3_with_auth(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Like ``s3``, on a moto server that checks credentials: no key is known to it, so every request
    after the bucket's creation is refused (403), as with wrong credentials on a real store."""
    log = tmp_path_factory.mktemp("moto-auth") / "moto.log"
    with pytest.MonkeyPatch.context() as mp:
        for k, v in CREDENTIALS.items():
            mp.setenv(k, v)
        mp.setenv("INITIAL_NO_AUTH_ACTION_COUNT", "1")  # the server lets the bucket's creation through, no more
        with moto_server(BUCKET, log=str(log)) as storage_options:
            mp.delenv("INITIAL_NO_AUTH_ACTION_COUNT")
            yield storage_options


def test_record_a_real_loader_to_s3_and_replay_it_bitwise(s3):
    url = f"s3://{BUCKET}/replay.snap"
    torch.manual_seed(0)
    seen = record(url, s3, epochs=2)
    snap = snapstore.open(url, storage_options=s3)
    stream = snap["train"]
    assert snap.streams == ["train"] and stream.epochs == [0, 1]
    for e, batches in enumerate(seen):
        ep = stream.epoch(e)
        assert ep.complete and len(ep) == 40
        for got, want in zip(ep.batches(), batches, strict=True):
            same(got, want)
        order = torch.cat([y for _, y in batches]).numpy()
        assert ep.order.tolist() == order.tolist()
        want_loss = torch.cat([x.double().sum((1, 2, 3)) for x, _ in batches]).numpy()
        assert ep.outputs["loss"].tobytes() == want_loss.tobytes()
    for i in (0, 17, 39):  # raw samples: the items with the dataset's transform disabled
        x, index = stream.raw[i]
        assert index == i and torch.equal(x, Indexed(40).__getitem__(i)[0])
    assert snap.info()["streams"]["train"]["raw_samples"] == 40


def test_append_mode_continues_epoch_numbers_on_s3(s3):
    url = f"s3://{BUCKET}/append.snap"
    first = record(url, s3, epochs=1)
    more = record(url, s3, epochs=1, mode="a")
    stream = snapstore.open(url, storage_options=s3)["train"]
    assert stream.epochs == [0, 1]
    for e, batches in enumerate(first + more):
        for got, want in zip(stream.epoch(e).batches(), batches, strict=True):
            same(got, want)


def test_overwrite_is_refused_on_s3_unless_asked(s3):
    url = f"s3://{BUCKET}/overwrite.snap"
    record(url, s3, epochs=1)
    with pytest.raises(snapstore.SnapshotExistsError, match="overwrite=True"):
        snapstore.Recorder(url, storage_options=s3)
    assert snapstore.open(url, storage_options=s3)["train"].epochs == [0]
    with snapstore.Recorder(url, storage_options=s3, overwrite=True) as rec:
        rec.wrap(loader(), name="test")  # a new snapshot with another stream, no epoch recorded
    assert snapstore.open(url, storage_options=s3).streams == ["test"]


def test_foreign_data_on_s3_is_never_overwritten(s3):
    import fsspec

    fs = fsspec.filesystem("s3", skip_instance_cache=True, **s3)
    fs.pipe_file(f"{BUCKET}/foreign/data.bin", b"not a snapshot")
    url = f"s3://{BUCKET}/foreign"
    with pytest.raises(snapstore.SnapshotExistsError, match="not a snapshot"):
        snapstore.Recorder(url, storage_options=s3, overwrite=True)
    with pytest.raises(snapstore.NotASnapshotError):
        snapstore.open(url, storage_options=s3)
    assert fs.cat_file(f"{BUCKET}/foreign/data.bin") == b"not a snapshot"


def test_missing_s3_paths_are_snapshot_not_found(s3):
    with pytest.raises(snapstore.SnapshotNotFoundError, match="no snapshot at s3://"):
        snapstore.open(f"s3://{BUCKET}/never-written.snap", storage_options=s3)
    with pytest.raises(snapstore.SnapshotNotFoundError):
        snapstore.open("s3://no-such-bucket-here/run.snap", storage_options=s3)
    with pytest.raises(snapstore.SnapshotNotFoundError):
        snapstore.Recorder(f"s3://{BUCKET}/never-written.snap", mode="a", storage_options=s3)


def test_a_url_without_its_fsspec_implementation_names_the_package(monkeypatch):
    registry = importlib.import_module("fsspec.registry")  # the module (fsspec.registry is also a mapping)
    monkeypatch.delitem(registry._registry, "s3", raising=False)
    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if s3fs were not installed
    with pytest.raises(snapstore.SnapstoreError, match=r"pip install 'snapstore\[s3\]'"):
        snapstore.open("s3://bucket/run.snap")
    with pytest.raises(snapstore.SnapstoreError, match=r"pip install 'snapstore\[s3\]'"):
        snapstore.Recorder("s3://bucket/run.snap")
    with pytest.raises(snapstore.UsageError, match="nosuchproto"):
        snapstore.open("nosuchproto://bucket/run.snap")


def test_storage_options_are_refused_for_local_paths(tmp_path):
    with pytest.raises(snapstore.UsageError, match="storage_options"):
        snapstore.Recorder(tmp_path / "run.snap", storage_options={"key": "x"})


def test_recording_throughput_to_s3_is_measured(s3, capsys):
    """The benchmark's function at a tiny size (run benchmarks/bench_s3.py for the real number)."""
    r = record_throughput(f"s3://{BUCKET}/bench.snap", samples=300, batch_size=64, storage_options=s3)
    assert r["mb_per_s"] > 0
    with capsys.disabled():
        print(f"\nS3 (moto on loopback) recording: {r['mb']:.1f} MB in {r['seconds']:.2f} s = {r['mb_per_s']:.1f} MB/s")
    assert len(snapstore.open(f"s3://{BUCKET}/bench.snap", storage_options=s3)["train"].epoch(0)) == 300


def test_damage_on_s3_is_a_corruption_error(s3):
    import fsspec

    url = f"s3://{BUCKET}/damaged.snap"
    record(url, s3, epochs=1)
    fs = fsspec.filesystem("s3", skip_instance_cache=True, **s3)
    fs.rm(f"{BUCKET}/damaged.snap/train/epochs/0/order/c.0")  # a committed chunk lost
    with pytest.raises(snapstore.CorruptionError, match="missing from the store"):
        snapstore.open(url, storage_options=s3)["train"].epoch(0).order
    fs.pipe_file(f"{BUCKET}/damaged.snap/train/epochs/0/zarr.json", b'{"zarr_format": 3, "node_type": "gr')  # truncated
    with pytest.raises(snapstore.CorruptionError, match="damaged"):
        snapstore.open(url, storage_options=s3)["train"].epochs


APPEND = """
import json, sys
from tests.scenarios.test_s3 import record
record(sys.argv[1], json.loads(sys.argv[2]), epochs=1, mode="a")
"""


def test_reopening_sees_epochs_another_process_appended(s3):
    url = f"s3://{BUCKET}/reopen.snap"
    record(url, s3, epochs=1)
    stream = snapstore.open(url, storage_options=s3)["train"]
    assert stream.epochs == [0]
    subprocess.run([sys.executable, "-c", APPEND, url, json.dumps(s3)], cwd=REPO, check=True, timeout=300,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    again = snapstore.open(url, storage_options=s3)["train"]
    assert again.epochs == [0, 1] and len(again.epoch(1)) == 40
    assert stream.epochs == [0, 1]  # the stream opened before lists its epochs again, as committed now
    assert len(stream.epoch(1)) == 40


def test_a_dead_endpoint_is_a_snapstore_error_naming_the_url(s3):
    url = f"s3://{BUCKET}/dead.snap"
    dead = {**s3, **NO_RETRIES, "endpoint_url": f"http://127.0.0.1:{_free_port()}"}  # nothing listens there
    with pytest.raises(snapstore.StoreAccessError, match="s3://snapstore-test/dead.snap.*cannot be reached") as caught:
        snapstore.open(url, storage_options=dead)
    assert not isinstance(caught.value, (FileNotFoundError, snapstore.CorruptionError))  # neither absent nor damaged
    assert "Could not connect" in str(caught.value.__cause__)
    with pytest.raises(snapstore.StoreAccessError, match="s3://snapstore-test/dead.snap") as caught:
        snapstore.Recorder(url, storage_options=dead)
    assert caught.value.__cause__ is not None


def test_a_store_going_away_while_reading_is_a_snapstore_error(s3):  # s3: for the credentials it sets
    url = "s3://gone/run.snap"
    with moto_server("gone") as so:  # a server of its own, stopped while a stream read from it is open
        record(url, so, epochs=1)
        stream = snapstore.open(url, storage_options={**so, **NO_RETRIES})["train"]
        epoch = stream.epoch(0)
    with pytest.raises(snapstore.StoreAccessError, match="s3://gone/run.snap.*cannot be reached") as caught:
        stream.epochs
    assert caught.value.__cause__ is not None
    with pytest.raises(snapstore.StoreAccessError, match="s3://gone/run.snap.*cannot be reached") as caught:
        epoch.order  # a chunk read: not mistaken for a missing or damaged chunk
    assert not isinstance(caught.value, snapstore.CorruptionError)


def test_an_option_the_filesystem_does_not_take_is_a_usage_error(s3):
    with pytest.raises(snapstore.UsageError, match="s3://snapstore-test/any.snap.*storage_options") as caught:
        snapstore.open(f"s3://{BUCKET}/any.snap", storage_options={**s3, "retries": 1})  # not an s3fs option
    assert isinstance(caught.value.__cause__, TypeError)


def test_wrong_credentials_are_a_snapstore_error_naming_the_url(s3_with_auth):
    url = f"s3://{BUCKET}/refused.snap"
    wrong = {**s3_with_auth, **NO_RETRIES, "key": "wrong", "secret": "wrong"}
    with pytest.raises(snapstore.StoreAccessError, match="s3://snapstore-test/refused.snap.*credentials") as caught:
        snapstore.open(url, storage_options=wrong)
    assert not isinstance(caught.value, (FileNotFoundError, snapstore.CorruptionError))
    assert isinstance(caught.value.__cause__, PermissionError)
    with pytest.raises(snapstore.StoreAccessError, match="s3://snapstore-test/refused.snap.*credentials"):
        snapstore.Recorder(url, storage_options=wrong)


def test_no_credentials_at_all_are_a_snapstore_error_naming_the_url(s3, monkeypatch, tmp_path):
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
              "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(k, raising=False)
    for k in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "BOTO_CONFIG"):  # botocore finds nothing on disk
        monkeypatch.setenv(k, str(tmp_path / "none"))
    bare = {k: v for k, v in s3.items() if k not in ("key", "secret")}
    with pytest.raises(snapstore.StoreAccessError, match="s3://snapstore-test/anon.snap.*credentials") as caught:
        snapstore.open(f"s3://{BUCKET}/anon.snap", storage_options={**bare, **NO_RETRIES})
    assert caught.value.__cause__ is not None


def lock_object(url: str, so: dict[str, Any]) -> str:
    return f"{url.removeprefix('s3://')}/.snapstore-lock"


def test_a_second_writer_on_s3_is_refused_naming_the_holder(s3):
    import fsspec

    url = f"s3://{BUCKET}/locked.snap"
    fs = fsspec.filesystem("s3", skip_instance_cache=True, use_listings_cache=False, **s3)
    with snapstore.Recorder(url, storage_options=s3) as rec:
        stream = rec.wrap(loader(), name="train")
        for _ in stream:
            pass
        assert fs.exists(lock_object(url, s3))
        for kw in ({"mode": "a"}, {"overwrite": True}):  # overwrite=True would empty the snapshot being recorded
            with pytest.raises(snapstore.SnapshotLockedError, match=rf"pid {os.getpid()}.*taken over") as caught:
                snapstore.Recorder(url, storage_options=s3, **kw)
            assert ".snapstore-lock" in str(caught.value)
        snap = snapstore.open(url, storage_options=s3)  # readers and the audit skip the lock object
        assert snap["train"].epochs == [0] and snapstore.audit(snap, progress=False).ok
    assert not fs.exists(lock_object(url, s3))  # deleted at close
    assert snapstore.open(url, storage_options=s3)["train"].epochs == [0]
    record(url, s3, epochs=1, mode="a")  # the next writer gets the lock
    assert snapstore.open(url, storage_options=s3)["train"].epochs == [0, 1]


HOLD = """
import json, os, sys, time
import snapstore
from snapstore import config
from tests.scenarios.test_s3 import loader
config.WRITER_LEASE_SECONDS = 4.0
rec = snapstore.Recorder(sys.argv[1], storage_options=json.loads(sys.argv[2]))
stream = rec.wrap(loader(), name="train")
for _ in stream:
    pass
print("recorded", flush=True)
time.sleep(600)  # killed here, holding the lock
"""


def test_a_killed_writers_lock_on_s3_is_taken_over_once_its_lease_has_run_out(s3):
    url = f"s3://{BUCKET}/killed.snap"
    with subprocess.Popen([sys.executable, "-c", HOLD, url, json.dumps(s3)], cwd=REPO, stdout=subprocess.PIPE,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)}) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "recorded\n"
        finally:
            proc.kill()  # SIGKILL: no close(), the lock object stays
    with pytest.raises(snapstore.SnapshotLockedError, match=rf"pid {proc.pid}.*once it is 4 s old"):
        snapstore.Recorder(url, mode="a", storage_options=s3)
    deadline = time.monotonic() + 60  # the lease runs out by the store's clock (whole seconds)
    while True:
        try:
            rec = snapstore.Recorder(url, mode="a", storage_options=s3)
            break
        except snapstore.SnapshotLockedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    with rec:
        stream = rec.wrap(loader(), name="train")
        for _ in stream:
            pass
    snap = snapstore.open(url, storage_options=s3)
    assert snap["train"].epochs == [0, 1] and snapstore.audit(snap, progress=False).ok


def test_a_writer_whose_lock_was_taken_over_stops_writing(s3, monkeypatch):
    import fsspec

    url = f"s3://{BUCKET}/taken.snap"
    fs = fsspec.filesystem("s3", skip_instance_cache=True, use_listings_cache=False, **s3)
    monkeypatch.setattr(snapstore.config, "WRITER_LEASE_SECONDS", 0.001)  # refreshed at every flush
    rec = snapstore.Recorder(url, storage_options=s3)
    stream = rec.wrap(loader(), name="train")
    for _ in stream:
        pass
    fs.pipe_file(lock_object(url, s3), b'{"host": "elsewhere", "pid": 1}')  # another writer took it over
    with pytest.raises(snapstore.RecordingError) as caught:
        rec.close()
    assert isinstance(caught.value.__cause__, snapstore.SnapshotLockedError)
    assert "taken over" in str(caught.value.__cause__)
    assert fs.cat_file(lock_object(url, s3)) == b'{"host": "elsewhere", "pid": 1}'  # not deleted at close


def test_the_lease_the_writer_process_refreshed_is_released_at_close(s3, monkeypatch):
    """The writer process refreshes the lock, which changes its ETag; ``close()`` takes that lease back, so
    the lock object is deleted and the next Recorder takes the snapshot at once."""
    import fsspec

    url = f"s3://{BUCKET}/refreshed.snap"
    fs = fsspec.filesystem("s3", skip_instance_cache=True, use_listings_cache=False, **s3)
    monkeypatch.setattr(snapstore.config, "WRITER_LEASE_SECONDS", 0.001)  # refreshed at every flush
    rec = snapstore.Recorder(url, storage_options=s3)
    taken = fs.info(lock_object(url, s3))["ETag"]
    list(rec.wrap(loader(), name="train"))
    time.sleep(1.1)  # the lock's body names the second it was refreshed in: the last refresh writes a new one
    rec.close()
    assert not fs.exists(lock_object(url, s3)), f"the lock written as {taken} was left behind"
    with snapstore.Recorder(url, mode="a", storage_options=s3) as again:
        list(again.wrap(loader(), name="train"))
    assert snapstore.open(url, storage_options=s3)["train"].epochs == [0, 1]


def test_a_store_without_conditional_writes_records_unlocked_with_one_warning(caplog, tmp_path):
    url = f"file://{tmp_path}/unlocked.snap"  # fsspec's local file system: no conditional writes
    with caplog.at_level(logging.WARNING, logger="snapstore"):
        record(url, {"auto_mkdir": True}, epochs=1)
    warned = [r for r in caplog.records if "no writer lock" in r.getMessage()]
    assert len(warned) == 1 and "one writer per snapshot" in warned[0].getMessage()
    assert snapstore.open(url)["train"].epochs == [0]
