"""``snapstore.auditing.scan``: the one pass over every chunk gives the same audit with Dask threads as one by one."""

from __future__ import annotations

import pytest
from torch.utils.data import DataLoader

import snapstore
from tests.support.datasets import DivideBySum, positive_digits
from tests.support.recording import record


def test_sequential_and_threaded_scans_agree(tmp_path):
    dask = pytest.importorskip("dask")
    loader = DataLoader(positive_digits(blank=(13, 77), transform=DivideBySum()), batch_size=32, shuffle=True)
    snap = record(tmp_path / "s.snap", loader, epochs=2)
    threaded = snapstore.audit(snap).to_dict()
    with dask.config.set(scheduler="synchronous"):
        single = snapstore.audit(snap).to_dict()
    for d in (threaded, single):
        d.pop("scanned")
    assert threaded == single
