"""``snapstore.read.plan``: exports of an epoch stored in several parts (cut by a crash, then resumed) follow
the plan of where each row lives.

Each export is compared with the reader's own row-by-row view (``ep.batch(j)``,
``ep[k]``), which stitches the parts independently of the export code. Rows
of 3x32x32 float32 (128 per chunk) make every part span several chunks. The
parts of a distributed run are in ``tests/scenarios/test_ranks.py``.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import snapstore
from tests.support.datasets import Resumable, SeededImages
from tests.support.recording import seen_rows


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    path = tmp_path_factory.mktemp("resume") / "run.snap"
    with snapstore.Recorder(path) as rec:
        loader = DataLoader(SeededImages(400), batch_size=24, sampler=Resumable(400, 1), num_workers=2)
        s = rec.wrap(loader, name="train")
        for j, _ in enumerate(s):
            if j == 9:
                break  # the crash: 10 batches recorded
    with snapstore.Recorder(path, mode="a") as rec:
        loader = DataLoader(SeededImages(400), batch_size=24, sampler=Resumable(400, 1, start=240), num_workers=2)
        list(rec.wrap(loader, name="train", resume_epoch=True))
    return snapstore.open(path)["train"].epoch(0)


def test_resumed_epoch_exports_both_parts_in_seen_order(resumed):
    ep = resumed
    assert len(ep.parts) == 2 and len(ep) == 400 and ep.complete
    x, y, batches = seen_rows(ep)
    out = ep.to_numpy()
    np.testing.assert_array_equal(out["0"], x)
    np.testing.assert_array_equal(out["1"], y)
    np.testing.assert_array_equal(out["index"], list(Resumable(400, 1)))
    np.testing.assert_array_equal(ep.stream.to_tensor_dataset(epoch=0).tensors[0].numpy(), x)
    replay = list(ep.replay_loader())
    assert len(replay) == len(batches)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(replay, batches))
    assert all(np.array_equal(ep[k][0].numpy(), x[k]) for k in (0, 239, 240, 399))
    pytest.importorskip("dask")
    d = ep.to_dask()
    np.testing.assert_array_equal(d["0"].compute(), x)
    np.testing.assert_array_equal(d["index"].compute(), out["index"])


def test_resumed_epoch_to_tf(resumed):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pytest.importorskip("tensorflow")
    x, y, _ = seen_rows(resumed)
    got = list(resumed.stream.to_tf_dataset(epoch=0, channels_last=True).batch(100).as_numpy_iterator())
    np.testing.assert_array_equal(np.concatenate([g[0] for g in got]), x.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(np.concatenate([g[1] for g in got]), y)


def test_where_finds_rows_of_both_parts_of_a_resumed_epoch(resumed):
    order = resumed.order
    for p in (0, 239, 240, 399):  # the last row before the crash, the first after the resume
        assert resumed.stream.where(index=int(order[p])) == [(0, 0, p // 24, p)]
        assert resumed.positions(index=int(order[p])).tolist() == [p]
