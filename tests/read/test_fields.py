"""``snapstore.read.fields``: per-row hashes of a snapshot recorded without them are computed on read."""

from __future__ import annotations

import shutil

import numpy as np
from torch.utils.data import DataLoader

import snapstore
from tests.support.datasets import digits
from tests.support.recording import record


def test_snapshots_without_stored_hashes_are_hashed_on_read(tmp_path):
    loader = DataLoader(digits(n=64), batch_size=16, shuffle=True)
    snap = record(tmp_path / "s.snap", loader, 1)
    shutil.copytree(tmp_path / "s.snap", tmp_path / "old.snap")
    shutil.rmtree(tmp_path / "old.snap/train/epochs/0/hashes")
    shutil.rmtree(tmp_path / "old.snap/train/raw/hashes")
    old = snapstore.open(tmp_path / "old.snap")
    for f in ("0", "1"):
        assert np.array_equal(old["train"].epoch(0).hashes(f), snap["train"].epoch(0).hashes(f))
        assert np.array_equal(old["train"].raw.hashes(f), snap["train"].raw.hashes(f))
    assert snapstore.audit(old).ok
    assert snapstore.diff(old, snap).identical
