"""Hypothesis strategies shared by the tests: raw samples, batch structures, Python values.

``batch_schemas`` draws the *shape* of a batch (a tree of containers whose
leaves say kind, dtype and row shape); ``build(schema, rows, rng)`` makes a
batch of that shape with random values, so a collate function can rebuild
the same batch from its indices.
"""

from __future__ import annotations

import collections
from typing import Any

import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

#: dtypes of raw samples' arrays
RAW_DTYPES = ["uint8", "int32", "int64", "float32", "float64", "bool"]


@st.composite
def raw_sample_lists(draw: st.DrawFn) -> list[Any]:
    """A list of raw samples that mostly share the first one's layout; sometimes one differs."""
    n = draw(st.integers(1, 6))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, max_side=4))
    dtype = draw(st.sampled_from(RAW_DTYPES))
    as_dict = draw(st.booleans())
    as_tensor = draw(st.booleans())
    out = []
    for k in range(n):
        s = shape if not draw(st.integers(0, 9)) == 0 else (*shape, 2)  # now and then a different shape
        a = draw(hnp.arrays(np.dtype(dtype), s))
        x = torch.from_numpy(a) if as_tensor else a
        other = k and draw(st.booleans())
        label = draw(st.one_of(st.integers(-5, 5), st.floats(allow_nan=False, width=32))) if other else k
        out.append({"x": x, "meta": (label, None)} if as_dict else (x, label))
    return out


# -- batch structures ------------------------------------------------------------------------------

TENSOR_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.uint8,
                 torch.int8, torch.bool, torch.complex64]
ARRAY_DTYPES = ["float32", "float64", "int64", "int16", "uint16", "bool", "complex128"]
Row = collections.namedtuple("Row", ["a", "b"])

_shapes = st.lists(st.integers(1, 3), max_size=2).map(tuple)
_leaves = st.one_of(
    st.tuples(st.just("tensor"), st.sampled_from(TENSOR_DTYPES), _shapes),
    st.tuples(st.just("ndarray"), st.sampled_from(ARRAY_DTYPES), _shapes),
    st.tuples(st.just("list"), st.sampled_from([str, int, float, bool]), st.just(())),
    st.tuples(st.just("rows"), st.sampled_from(TENSOR_DTYPES), st.integers(1, 2)),  # list of ragged per-row tensors
    st.tuples(st.just("padded"), st.sampled_from(TENSOR_DTYPES), st.integers(1, 2)),  # trailing size varies per batch
)
batch_schemas = st.recursive(
    _leaves,
    lambda children: st.one_of(
        st.lists(children, min_size=1, max_size=3).map(lambda c: ("tuple", c)),
        st.lists(children, min_size=1, max_size=3).map(lambda c: ("listof", c)),
        st.dictionaries(st.sampled_from(["image", "label", "meta", "x", "y"]), children, min_size=1, max_size=3)
        .map(lambda d: ("dict", d)),
        st.tuples(children, children).map(lambda c: ("named", c)),
    ),
    max_leaves=6,
)


def build(schema: Any, rows: int, rng: np.random.Generator) -> Any:
    """A batch of ``rows`` rows following ``schema``, with random values (NaN and inf included)."""
    kind = schema[0]
    if kind in ("tensor", "ndarray"):
        _, dtype, shape = schema
        values = rng.normal(0, 1e3, size=(rows, *shape))
        values.flat[:: 7] = np.nan
        values.flat[3:: 11] = np.inf
        if kind == "ndarray":
            if np.dtype(dtype).kind in "fc":
                return values.astype(dtype)
            return np.nan_to_num(values, posinf=7).astype(dtype)
        t = torch.from_numpy(values)
        return t.to(dtype) if dtype.is_floating_point or dtype.is_complex else torch.nan_to_num(t, posinf=7).to(dtype)
    if kind == "rows":  # rows at least 5 long, so a row is never mistaken for a batch of <= 4
        _, dtype, ndim = schema
        return [build(("tensor", dtype, tuple(rng.integers(1, 3, ndim - 1))), int(rng.integers(5, 9)), rng)
                for _ in range(rows)]
    if kind == "padded":
        _, dtype, ndim = schema
        return build(("tensor", dtype, tuple(rng.integers(1, 6, ndim))), rows, rng)
    if kind == "list":
        make = {str: lambda: rng.choice(["", "cat", "é✓ naïve", "a/b.png"]) + str(rng.integers(9)),
                int: lambda: int(rng.integers(-2**40, 2**40)),
                float: lambda: float(rng.normal()), bool: lambda: bool(rng.integers(2))}[schema[1]]
        return [make() for _ in range(rows)]
    if kind == "tuple":
        return tuple(build(c, rows, rng) for c in schema[1])
    if kind == "listof":
        return [build(c, rows, rng) for c in schema[1]]
    if kind == "dict":
        return {k: build(c, rows, rng) for k, c in schema[1].items()}
    return Row(*(build(c, rows, rng) for c in schema[1]))


#: Python values as a dataset returns them: numbers, strings, None, NumPy scalars, in tuples, lists and dicts.
python_samples = st.recursive(
    st.one_of(st.integers(-2**62, 2**62), st.floats(allow_nan=True), st.booleans(), st.text(max_size=5), st.none(),
              st.sampled_from([np.float32(1.5), np.int16(-3), np.bool_(True)])),
    lambda c: st.one_of(st.tuples(c, c), st.lists(c, min_size=1, max_size=3),
                        st.dictionaries(st.sampled_from(["a", "b", "c"]), c, min_size=1)),
    max_leaves=5,
)
