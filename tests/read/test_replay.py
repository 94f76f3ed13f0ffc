"""``snapstore.read.replay``: recorded rows back into torch: batch-for-batch replay, a ``TensorDataset``, and a
lazy ``Dataset`` that works in DataLoader workers (forked or spawned)."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import torch
from torch.utils.data import DataLoader

from tests.support.recording import EPOCHS, N


def test_raw_tensor_dataset_equals_the_original_tensors(loop_stream, loop_tensors):
    x, y = loop_tensors
    ds = loop_stream.to_tensor_dataset()
    assert len(ds.tensors) == 2
    assert torch.equal(ds.tensors[0], x) and torch.equal(ds.tensors[1], y)


def test_epoch_tensor_dataset_is_seen_rows(loop_stream, loop_recording):
    _, seen = loop_recording
    ds = loop_stream.to_tensor_dataset(epoch=1)
    assert torch.equal(ds.tensors[0], torch.from_numpy(seen.x[1]))
    assert torch.equal(ds.tensors[1], torch.from_numpy(seen.y[1]))


def test_replay_loader_yields_the_recorded_batches(loop_stream, loop_recording):
    _, seen = loop_recording
    for e in range(EPOCHS):
        replay = loop_stream.epoch(e).replay_loader()
        assert len(replay) == len(seen.batches[e])
        for _ in range(2):  # re-iterable
            got = list(replay)
            assert len(got) == len(seen.batches[e])
            for b, want in zip(got, seen.batches[e]):
                assert type(b) is list and len(b) == 2
                assert b[0].dtype == want[0].dtype and torch.equal(b[0], want[0])
                assert torch.equal(b[1], want[1])
        assert all(torch.equal(a[0], b[0]) for a, b in zip(loop_stream.epoch(e).batches(), seen.batches[e]))


def test_replay_batches_own_their_memory(loop_stream):
    clean = [b[0].clone() for b in loop_stream.epoch(0).replay_loader()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when a tensor wraps read-only memory
        for b, want in zip(loop_stream.epoch(0).replay_loader(), clean):  # batches after a zeroed one share its chunk
            assert torch.equal(b[0], want)
            b[0].zero_()
            b[1].zero_()
    assert all(torch.equal(b[0], want) for b, want in zip(loop_stream.epoch(0).replay_loader(), clean))
    x = loop_stream.epoch(0)[3][0]
    x.zero_()
    assert torch.equal(loop_stream.epoch(0)[3][0], clean[0][3]) and not torch.equal(x, clean[0][3])


def test_as_dataset_in_a_dataloader_with_workers(loop_stream, loop_recording, loop_tensors):
    _, seen = loop_recording
    ds = loop_stream.as_dataset(epoch=1)
    assert len(ds) == N
    xs, ys = [], []
    for xb, yb in DataLoader(ds, batch_size=64, num_workers=2):
        xs.append(xb.numpy())
        ys.append(yb.numpy())
    np.testing.assert_array_equal(np.concatenate(xs), seen.x[1])
    np.testing.assert_array_equal(np.concatenate(ys), seen.y[1])
    x, y = loop_tensors
    raw = loop_stream.as_dataset()
    order = torch.randperm(N, generator=torch.Generator().manual_seed(0))
    got = list(DataLoader(raw, batch_size=100, num_workers=2, sampler=order.tolist()))
    assert torch.equal(torch.cat([b[0] for b in got]), x[order])
    assert torch.equal(torch.cat([b[1] for b in got]), y[order])


def test_as_dataset_pickles_without_an_open_store(loop_stream, loop_recording):
    _, seen = loop_recording
    ds = loop_stream.as_dataset(epoch=0)
    ds[3]  # opens the snapshot in this process
    state = pickle.dumps(ds)
    assert len(state) < 2000  # path, names and numbers only
    again = pickle.loads(state)
    np.testing.assert_array_equal(again[3][0].numpy(), seen.x[0][3])


def test_as_dataset_with_spawned_workers(loop_stream, loop_recording):
    _, seen = loop_recording
    loader = DataLoader(loop_stream.as_dataset(epoch=0), batch_size=250, num_workers=2, multiprocessing_context="spawn")
    np.testing.assert_array_equal(np.concatenate([b[0].numpy() for b in loader]), seen.x[0])
