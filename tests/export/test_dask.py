"""``to_dask`` (``snapstore.export.dask``): recorded rows as chunk-aligned ``dask.array``s equal ``to_numpy``."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import snapstore
from tests.support.recording import CHUNK_ROWS, N, capture_order


def test_to_dask_equals_to_numpy_and_is_chunk_aligned(loop_stream):
    pytest.importorskip("dask")
    ep = loop_stream.epoch(0)
    d = ep.to_dask()
    expected = ep.to_numpy()
    assert list(d) == list(expected)
    assert set(d["0"].chunks[0][:-1]) == {CHUNK_ROWS} and sum(d["0"].chunks[0]) == N
    for k, v in expected.items():
        assert d[k].dtype == v.dtype and d[k].shape == v.shape
        np.testing.assert_array_equal(d[k].compute(), v)
    assert float(d["0"].sum().compute()) == pytest.approx(float(expected["0"].sum(dtype=np.float64)), rel=1e-4)
    assert list(ep.to_dask(fields=["1"])) == ["index", "1"]


def test_raw_to_dask_is_capture_order_with_index(loop_stream, loop_tensors):
    pytest.importorskip("dask")
    x, _ = loop_tensors
    d = loop_stream.raw.to_dask()
    index = d["index"].compute()
    np.testing.assert_array_equal(index, capture_order(loop_stream.raw))
    np.testing.assert_array_equal(d["0"].compute(), x.numpy()[index])
    np.testing.assert_array_equal(d["0"].compute()[np.argsort(index)], loop_stream.raw.to_numpy()["0"])


def test_dask_missing_gives_the_install_hint(loop_stream, monkeypatch):
    monkeypatch.setitem(sys.modules, "dask.array", None)
    with pytest.raises(snapstore.SnapstoreError, match=r"pip install 'snapstore\[dask\]'"):
        loop_stream.epoch(0).to_dask()
