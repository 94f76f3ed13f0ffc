"""The worker side of recording (``record.capture``): raw samples stacked field by field (the fast path)
equal the general per-sample flatten-and-join and cross from a worker through shared memory; the raw
items the transform tee rebuilds are the items with each transform input in its output's place; exact
indices, worker ids and stream positions; raw samples of different sizes."""

from __future__ import annotations

import collections.abc
import pickle
import re
from multiprocessing.reduction import ForkingPickler

import numpy as np
import pytest
import torch
import torch.multiprocessing  # noqa: F401 - registers the tensor reductions a DataLoader uses
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset

from snapstore.core.rows import Ragged
from snapstore.core.schema import flatten
from snapstore.errors import SchemaError
from snapstore.recording.capture import _join, _tee_samples, stack_raw
from tests.support.datasets import Indexed, Stream, image_of
from tests.support.recording import run, same
from tests.support.strategies import Row, raw_sample_lists


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


HOLE = object()  # where an item layout holds its transform's output

_layouts = st.recursive(
    st.one_of(st.integers(0, 9), st.text(max_size=3), st.none()),
    lambda c: st.one_of(st.lists(c, min_size=1, max_size=3).map(tuple), st.lists(c, min_size=1, max_size=3),
                        st.dictionaries(st.sampled_from("abc"), c, min_size=1, max_size=3),
                        st.tuples(c, c).map(lambda t: Row(*t))),
    max_leaves=5,
)


def _holed(layout, k):
    """``layout`` with its ``k``-th leaf (depth first; ``k`` past the last: the layout itself) made ``HOLE``."""
    count = [0]

    def walk(node):
        if isinstance(node, dict):
            return {key: walk(v) for key, v in node.items()}
        if isinstance(node, Row):
            return Row(*map(walk, node))
        if isinstance(node, (list, tuple)):
            return type(node)(map(walk, node))
        count[0] += 1
        return HOLE if count[0] - 1 == k else node

    out = walk(layout)
    return out if count[0] > k else HOLE


def _filled(layout, value):
    """An item laid out as ``layout`` with ``value`` in its hole: what a dataset returns."""
    if layout is HOLE:
        return value
    if isinstance(layout, dict):
        return {key: _filled(v, value) for key, v in layout.items()}
    if isinstance(layout, Row):
        return Row(*(_filled(v, value) for v in layout))
    if isinstance(layout, (list, tuple)):
        return type(layout)(_filled(v, value) for v in layout)
    return layout


def _alike(got, want):
    """Same containers, the transform inputs themselves (not copies) and equal other leaves."""
    assert type(got) is type(want)
    if isinstance(want, dict):
        assert list(got) == list(want)
        for key in want:
            _alike(got[key], want[key])
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            _alike(g, w)
    elif isinstance(want, np.ndarray):
        assert got is want
    else:
        assert got == want


@settings(max_examples=200, deadline=None)
@given(layout=_layouts, hole=st.integers(0, 5), other=st.integers(0, 5), odd=st.integers(-1, 4),
       n=st.integers(1, 5), extra=st.booleans(), data=st.data())
def test_tee_places_each_transform_input_where_its_output_is(layout, hole, other, odd, n, extra, data):
    # items of one layout, or one item (``odd``) laid out with its hole elsewhere; each item made by one call
    # transform(x_k) -> y_k; the raw item is the item with x_k in y_k's place (one call too many: not understood)
    layouts = [_holed(layout, other if k == odd else hole) for k in range(n)]
    given_, made = [np.array([k]) for k in range(n)], [torch.tensor([k]) for k in range(n)]
    items = [_filled(lay, y) for lay, y in zip(layouts, made)]
    calls = list(zip(given_, made)) + ([(np.array([-1]), torch.tensor([-1]))] if extra else [])
    new = np.array(sorted(data.draw(st.sets(st.integers(0, n - 1), min_size=1))))
    raws = _tee_samples(items, calls, new)
    if extra:
        assert raws is None
        return
    assert len(raws) == len(new)
    for raw, k in zip(raws, new.tolist()):
        _alike(raw, _filled(layouts[k], given_[k]))


class Box(collections.abc.Mapping):
    """A mapping that is not a dict: raw capture places transform outputs only in tuples, lists and dicts."""

    def __init__(self, **items) -> None:
        self.items_ = items

    def __getitem__(self, key):
        return self.items_[key]

    def __iter__(self):
        return iter(self.items_)

    def __len__(self) -> int:
        return len(self.items_)


def test_tee_leaves_items_it_cannot_rebuild_to_a_second_fetch():
    # the first item places its output at "x"; the second holds its own at "x" too, but in a container the
    # tee cannot rebuild: not understood (the caller fetches the raw samples again), never an error
    made = [torch.zeros(2), torch.ones(2)]
    items = [{"x": made[0], "i": 0}, Box(x=made[1], i=1)]
    assert _tee_samples(items, [(np.zeros(1), made[0]), (np.ones(1), made[1])], np.arange(2)) is None


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
