"""audit and diff over epochs recorded in parts: resumed epochs, torch.distributed ranks, ragged fields."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from audit_support import chunk_file, flip_byte
from test_resume_ranks import Resumable, crash_then_resume
from test_variable import Sentences, ragged_rows
from torch.utils.data import DataLoader

import snapstore
from snapstore.core.hashing import row_hashes


def test_clean_resume_audits_clean(snap_path):
    crash_then_resume(snap_path, resume_from_batch=5)
    report = snapstore.audit(snap_path)
    assert report.ok, str(report)
    assert report.stats["train"]["epochs"][1]["1"].rows == 40  # both parts of epoch 1


def test_resume_from_an_older_checkpoint_repeats_samples(snap_path):
    crash_then_resume(snap_path, resume_from_batch=3)
    perm = list(Resumable(40, seed=1))
    report = snapstore.audit(snap_path)
    assert [(f.check, f.epoch, f.indices) for f in report.findings] == [("coverage", 1, tuple(sorted(perm[12:20])))]


def test_resume_past_the_crash_point_skips_samples(snap_path):
    crash_then_resume(snap_path, resume_from_batch=7)
    perm = list(Resumable(40, seed=1))
    report = snapstore.audit(snap_path)
    assert [(f.check, f.epoch, f.indices) for f in report.findings] == [("coverage", 1, tuple(sorted(perm[20:28])))]


def test_diff_of_resumed_epochs(tmp_path):
    a = crash_then_resume(tmp_path / "a.snap", resume_from_batch=5)
    b = crash_then_resume(tmp_path / "b.snap", resume_from_batch=3)
    assert snapstore.diff(tmp_path / "a.snap", tmp_path / "a.snap").identical
    report = snapstore.diff(a, b)
    d = report.first_divergence
    assert (d.epoch, d.position, d.batch, d.field) == (1, 20, 5, "index")  # b repeats batches 3-4 after its 5 first
    assert np.array_equal(a.hashes("0")[:20], b.hashes("0")[:20])


@pytest.fixture(scope="module")
def ranks_snapshot(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ranks")
    path, world_size = tmp / "ddp.snap", 2
    script = Path(__file__).with_name("ranks_worker.py")
    init = f"file://{tmp / 'pg'}"
    procs = [subprocess.Popen([sys.executable, str(script), str(r), str(world_size), str(path), init])
             for r in range(world_size)]
    assert [p.wait(timeout=300) for p in procs] == [0] * world_size
    return path


def test_ranks_audit_clean_and_diff_identical(ranks_snapshot, tmp_path):
    report = snapstore.audit(ranks_snapshot)
    assert report.ok, str(report)
    assert report.stats["train"]["epochs"][0]["1"].rows == 30
    stream = snapstore.open(ranks_snapshot)["train"]
    ep = stream.epoch(1)
    assert np.array_equal(ep.hashes("1"), row_hashes(ep.to_numpy()["1"]))
    assert snapstore.diff(ranks_snapshot, ranks_snapshot).identical


def test_ranks_flipped_byte_names_the_rank_and_its_indices(ranks_snapshot, tmp_path):
    import shutil

    path = tmp_path / "ddp.snap"
    shutil.copytree(ranks_snapshot, path)
    order = snapstore.open(path)["train"].rank(1).epoch(0).order
    flip_byte(chunk_file(path, "train/rank1/epochs/0/seen/0", 0))
    report = snapstore.audit(path)
    assert [(f.check, f.epoch, f.field, f.indices) for f in report.findings] == [
        ("integrity", 0, "0", tuple(sorted(order.tolist())))], str(report)
    assert "'train/rank1/epochs/0/seen/0' chunk 0" in report.findings[0].message


def test_ragged_fields(tmp_path):
    def run(path):
        loader = DataLoader(Sentences(), batch_size=8, shuffle=True, collate_fn=ragged_rows,
                            generator=torch.Generator().manual_seed(0))
        with snapstore.record(loader, path) as s:
            for _ in range(2):
                list(s)
        return snapstore.open(path)

    a, b = run(tmp_path / "a.snap"), run(tmp_path / "b.snap")
    ep = a["train"].epoch(0)
    assert a["train"].fields["0"].ragged
    assert np.array_equal(ep.hashes("0"), row_hashes(ep.to_numpy()["0"]))  # a list of arrays
    assert np.array_equal(a["train"].raw.hashes("value"), row_hashes(a["train"].raw.to_numpy()["value"]))
    assert snapstore.audit(a).ok
    assert snapstore.diff(a, b).identical
    flip_byte(chunk_file(b.path, "train/epochs/1/ragged/0/values", 0))
    report = snapstore.audit(b.path)
    assert [(f.check, f.epoch, f.field) for f in report.findings] == [("integrity", 1, "0")], str(report)
    assert "'train/epochs/1/ragged/0/values' chunk 0" in report.findings[0].message


def test_compare_and_diff_with_a_ragged_raw_field(tmp_path):
    loader = DataLoader(Sentences(), batch_size=8, collate_fn=ragged_rows)
    with snapstore.record(loader, tmp_path / "s.snap") as s:
        list(s)
    stream = snapstore.open(tmp_path / "s.snap")["train"]
    assert stream.manifest.raw_fields["value"].ragged
    assert snapstore.compare(stream, Sentences(), progress=False).ok

    class Edited(Sentences):
        def __getitem__(self, i):
            x = super().__getitem__(i)
            return x + 1 if i in (5, 40) else x

    report = snapstore.compare(stream, Edited(), progress=False)
    assert [(f.check, f.field, f.indices) for f in report.findings] == [("drift", "value", (5, 40))]
    assert "largest absolute difference 1" in report.findings[0].message


class _Longer(Sentences):
    """Index 9 one token longer, index 20 with other tokens."""

    def __getitem__(self, i):
        x = super().__getitem__(i)
        return torch.cat([x, x[:1]]) if i == 9 else x * 2 if i == 20 else x


def test_diff_locates_ragged_differences(tmp_path):
    def run(path, ds):
        with snapstore.record(DataLoader(ds, batch_size=8, collate_fn=ragged_rows), path) as s:
            list(s)
        return snapstore.open(path)

    report = snapstore.diff(run(tmp_path / "a.snap", Sentences()), run(tmp_path / "b.snap", _Longer()))
    seen = [f for f in report.findings if f.check == "seen"]
    assert [(f.field, f.indices) for f in seen] == [("0", (9, 20)), ("1", (9,))]
    assert "1 row(s) differ in shape" in seen[0].message and "max |a - b| = " in seen[0].message
    d = report.first_divergence
    assert (d.epoch, d.batch, d.position, d.field) == (0, 1, 9, "0")


def test_missing_ragged_offsets_chunk(tmp_path):
    with snapstore.record(DataLoader(Sentences(), batch_size=8, collate_fn=ragged_rows), tmp_path / "s.snap") as s:
        list(s)
    order = snapstore.open(tmp_path / "s.snap")["train"].epoch(0).order
    chunk_file(tmp_path / "s.snap", "train/epochs/0/ragged/0/offsets", 0).unlink()
    report = snapstore.audit(tmp_path / "s.snap")
    assert [(f.check, f.epoch, f.field, f.indices) for f in report.findings] == [
        ("integrity", 0, "0", tuple(sorted(order.tolist())))], str(report)
    assert "missing" in report.findings[0].message
