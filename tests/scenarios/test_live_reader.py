"""A Stream opened while a recording runs reads epochs committed after it was opened, schema included."""

from __future__ import annotations

import time

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

import snapstore


def test_stream_opened_before_the_first_batch_reads_later_epochs(snap_path):
    loader = DataLoader(TensorDataset(torch.arange(40.0).reshape(40, 1), torch.arange(40)), batch_size=8)
    with snapstore.Recorder(snap_path) as rec:
        train = rec.wrap(loader, name="train")
        deadline = time.monotonic() + 30
        while "train" not in snapstore.open(snap_path) and time.monotonic() < deadline:
            time.sleep(0.05)
        stream = snapstore.open(snap_path)["train"]  # no batch yet: the stream has no schema
        assert stream.manifest.structure is None
        for _ in train:
            pass
    ep = stream.epoch(0)
    assert len(ep) == 40 and list(stream.fields) == ["0", "1"]
    first = ep.batch(0)
    assert torch.equal(first[1], torch.arange(8))
    np.testing.assert_array_equal(ep.to_numpy()["1"], np.arange(40))


def test_a_stream_lists_epochs_appended_after_it_was_opened(snap_path):
    loader = DataLoader(TensorDataset(torch.arange(16.0).reshape(16, 1), torch.arange(16)), batch_size=8)
    for mode in ("w", "a"):
        with snapstore.Recorder(snap_path, mode=mode) as rec:
            for _ in rec.wrap(loader, name="train"):
                pass
        if mode == "w":
            stream = snapstore.open(snap_path)["train"]
            assert stream.epochs == [0]
    assert stream.epochs == [0, 1]  # listed again, not kept from the first access
    assert len(stream.epoch(1)) == 16 and len(stream.epoch(-1)) == 16
