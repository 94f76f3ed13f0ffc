"""The worker side of recording (``record.capture``): raw samples stacked field by field (the fast path)
equal the general per-sample flatten-and-join and cross from a worker through shared memory; exact
indices, worker ids and stream positions; raw samples of different sizes."""

from __future__ import annotations

import pickle
import re
from multiprocessing.reduction import ForkingPickler

import numpy as np
import pytest
import torch
import torch.multiprocessing  # noqa: F401 - registers the tensor reductions a DataLoader uses
from hypothesis import given, settings
from torch.utils.data import DataLoader, Dataset

from snapstore.core.rows import Ragged
from snapstore.core.schema import flatten
from snapstore.errors import SchemaError
from snapstore.recording.capture import _join, stack_raw
from tests.support.datasets import Indexed, Stream, image_of
from tests.support.recording import run, same
from tests.support.strategies import raw_sample_lists


def _rows(v):
    return [np.asarray(r) for r in v.rows()] if isinstance(v, Ragged) else list(np.asarray(v))


@settings(max_examples=150, deadline=None)
@given(raw_sample_lists())
def test_stack_raw_equals_the_general_path(raw):
    indices = np.arange(len(raw), dtype=np.int64) * 3
    try:
        slow = _join([(indices[k : k + 1], *flatten(s, None)) for k, s in enumerate(raw)])
    except SchemaError as e:  # samples that cannot share a schema are refused the same way
        with pytest.raises(SchemaError, match=re.escape(str(e))):
            stack_raw(indices, raw)
        return
    fast = stack_raw(indices, raw)
    np.testing.assert_array_equal(fast.indices, slow.indices)
    assert fast.structure == slow.structure
    assert fast.fields.keys() == slow.fields.keys()
    for path, (info, values) in slow.fields.items():
        fast_info, fast_values = fast.fields[path]
        assert fast_info == info
        got, want = _rows(fast_values), _rows(values)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.dtype == w.dtype and g.shape == w.shape
            np.testing.assert_array_equal(g, w)


def test_raw_blocks_cross_from_workers_through_shared_memory():
    # what a DataLoader worker sends: large numeric arrays as shared-memory handles, the rest by value
    n = 64
    samples = [{"image": np.full((3, 64, 64), k, np.uint8), "name": f"img{k}", "id": k} for k in range(n)]
    block = stack_raw(np.arange(n), samples)
    sent = ForkingPickler.dumps(block)
    assert len(sent) < 16 * 1024 < block.fields["image"][1].nbytes  # 786 KB of pixels not in the message
    back = pickle.loads(sent)
    assert back.structure == block.structure and set(back.fields) == set(block.fields)
    for p, (info, rows) in block.fields.items():
        assert back.fields[p][0] == info
        assert isinstance(back.fields[p][1], np.ndarray)
        np.testing.assert_array_equal(back.fields[p][1], rows)
    wide = stack_raw(np.arange(2), [np.full(8192, k, np.longdouble) for k in range(2)])  # no tensor type: by value
    np.testing.assert_array_equal(pickle.loads(ForkingPickler.dumps(wide)).fields["value"][1], wide.fields["value"][1])


class Photos(Dataset):
    """Images of different sizes per sample (uint8 HxWx3), as raw photographs come."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return np.full((4 + i % 3, 5 + i % 2, 3), i, dtype=np.uint8), i % 2


def test_raw_samples_of_different_sizes(snap_path):
    stream, _ = run(lambda: DataLoader(Photos(), batch_size=None, shuffle=True), snap_path)
    assert stream.manifest.raw_fields["0"].ragged
    for i in range(12):
        same(stream.raw[i], Photos()[i])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_iterable_dataset_records_worker_and_position(snap_path, num_workers):
    stream, seen = run(lambda: DataLoader(Stream(40), batch_size=4, num_workers=num_workers), snap_path)
    ep = stream.epoch(0)
    workers = max(num_workers, 1)
    ks = torch.cat([b[1] for b in seen[0]]).numpy()
    # Stream yields k = w, w + W, ...: the p-th item of worker w has k = p * W + w = its recorded order
    np.testing.assert_array_equal(ep.order, ks)
    if num_workers:
        np.testing.assert_array_equal(ep.workers, ks % workers)
    else:
        assert (ep.workers == -1).all()
    assert sorted(stream.raw.indices.tolist()) == list(range(40))
    same(stream.raw[6], (image_of(6, (2,)), 6))


def test_map_style_worker_ids(snap_path):
    stream, _ = run(lambda: DataLoader(Indexed(40), batch_size=5, num_workers=2), snap_path, epochs=1)
    ep = stream.epoch(0)
    # with in-order delivery, batch j comes from worker j % 2
    np.testing.assert_array_equal(ep.workers, np.repeat(np.arange(8) % 2, 5))
