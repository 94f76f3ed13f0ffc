"""Raw samples stacked field by field (the fast path) equal the general per-sample flatten-and-join,
and cross from a worker to the training process through shared memory."""

from __future__ import annotations

import pickle
import re
from multiprocessing.reduction import ForkingPickler

import numpy as np
import pytest
import torch
import torch.multiprocessing  # noqa: F401 - registers the tensor reductions a DataLoader uses
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from snapstore.record.capture import _join, stack_raw
from snapstore.errors import SchemaError
from snapstore.core.rows import Ragged
from snapstore.core.schema import flatten

DTYPES = ["uint8", "int32", "int64", "float32", "float64", "bool"]


@st.composite
def samples(draw):
    """A list of raw samples that mostly share the first one's layout; sometimes one differs."""
    n = draw(st.integers(1, 6))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, max_side=4))
    dtype = draw(st.sampled_from(DTYPES))
    as_dict = draw(st.booleans())
    as_tensor = draw(st.booleans())
    out = []
    for k in range(n):
        s = shape if not draw(st.integers(0, 9)) == 0 else (*shape, 2)  # now and then a different shape
        a = draw(hnp.arrays(np.dtype(dtype), s))
        x = torch.from_numpy(a) if as_tensor else a
        label = draw(st.one_of(st.integers(-5, 5), st.floats(allow_nan=False, width=32))) if k and draw(st.booleans()) else k
        out.append({"x": x, "meta": (label, None)} if as_dict else (x, label))
    return out


def _rows(v):
    return [np.asarray(r) for r in v.rows()] if isinstance(v, Ragged) else list(np.asarray(v))


@settings(max_examples=150, deadline=None)
@given(samples())
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
    block = stack_raw(np.arange(n), [{"image": np.full((3, 64, 64), k, np.uint8), "name": f"img{k}", "id": k} for k in range(n)])
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
