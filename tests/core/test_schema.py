"""Property: whatever batch structure a loader yields (ragged leaves and string lists
included), replay gives it back bitwise."""

from __future__ import annotations

import collections
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from helpers import same, snapshot_batch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset

import snapstore

TENSOR_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.uint8,
                 torch.int8, torch.bool, torch.complex64]
ARRAY_DTYPES = ["float32", "float64", "int64", "int16", "uint16", "bool", "complex128"]
Row = collections.namedtuple("Row", ["a", "b"])

shapes = st.lists(st.integers(1, 3), max_size=2).map(tuple)
leaves = st.one_of(
    st.tuples(st.just("tensor"), st.sampled_from(TENSOR_DTYPES), shapes),
    st.tuples(st.just("ndarray"), st.sampled_from(ARRAY_DTYPES), shapes),
    st.tuples(st.just("list"), st.sampled_from([str, int, float, bool]), st.just(())),
    st.tuples(st.just("rows"), st.sampled_from(TENSOR_DTYPES), st.integers(1, 2)),  # list of ragged per-row tensors
    st.tuples(st.just("padded"), st.sampled_from(TENSOR_DTYPES), st.integers(1, 2)),  # trailing size varies per batch
)
schemas = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, min_size=1, max_size=3).map(lambda c: ("tuple", c)),
        st.lists(children, min_size=1, max_size=3).map(lambda c: ("listof", c)),
        st.dictionaries(st.sampled_from(["image", "label", "meta", "x", "y"]), children, min_size=1, max_size=3).map(lambda d: ("dict", d)),
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
            return values.astype(dtype) if np.dtype(dtype).kind in "fc" else np.nan_to_num(values, posinf=7).astype(dtype)
        t = torch.from_numpy(values)
        return t.to(dtype) if dtype.is_floating_point or dtype.is_complex else torch.nan_to_num(t, posinf=7).to(dtype)
    if kind == "rows":  # rows at least 5 long, so a row is never mistaken for a batch of <= 4
        _, dtype, ndim = schema
        return [build(("tensor", dtype, tuple(rng.integers(1, 3, ndim - 1))), int(rng.integers(5, 9)), rng) for _ in range(rows)]
    if kind == "padded":
        _, dtype, ndim = schema
        return build(("tensor", dtype, tuple(rng.integers(1, 6, ndim))), rows, rng)
    if kind == "list":
        make = {str: lambda: rng.choice(["", "cat", "é✓ naïve", "a/b.png"]) + str(rng.integers(9)), int: lambda: int(rng.integers(-2**40, 2**40)),
                float: lambda: float(rng.normal()), bool: lambda: bool(rng.integers(2))}[schema[1]]
        return [make() for _ in range(rows)]
    if kind == "tuple":
        return tuple(build(c, rows, rng) for c in schema[1])
    if kind == "listof":
        return [build(c, rows, rng) for c in schema[1]]
    if kind == "dict":
        return {k: build(c, rows, rng) for k, c in schema[1].items()}
    return Row(*(build(c, rows, rng) for c in schema[1]))


class Ints(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class Collate:
    def __init__(self, schema: Any) -> None:
        self.schema = schema

    def __call__(self, items: list[int]) -> Any:
        return build(self.schema, len(items), np.random.default_rng(items))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema=schemas, sizes=st.lists(st.integers(1, 4), min_size=1, max_size=4))
def test_replay_is_bitwise(schema, sizes):
    starts = np.cumsum([0, *sizes])
    batches = [list(range(a, b)) for a, b in zip(starts[:-1], starts[1:])]
    loader = DataLoader(Ints(int(starts[-1])), batch_sampler=batches, collate_fn=Collate(schema))
    root = Path(tempfile.mkdtemp())
    try:
        with snapstore.record(loader, root / "r.snap", raw=None) as stream:
            seen = [snapshot_batch(b) for b in stream]
        ep = snapstore.open(root / "r.snap")["train"].epoch(0)
        assert ep.batch_sizes.tolist() == sizes
        replayed = list(ep.batches())
        assert len(replayed) == len(seen)
        for a, b in zip(seen, replayed):
            same(a, b)
    finally:
        shutil.rmtree(root)


samples = st.recursive(
    st.one_of(st.integers(-2**62, 2**62), st.floats(allow_nan=True), st.booleans(), st.text(max_size=5), st.none(),
              st.sampled_from([np.float32(1.5), np.int16(-3), np.bool_(True)])),
    lambda c: st.one_of(st.tuples(c, c), st.lists(c, min_size=1, max_size=3),
                        st.dictionaries(st.sampled_from(["a", "b", "c"]), c, min_size=1)),
    max_leaves=5,
)


class Constant(Dataset):
    def __init__(self, sample: Any) -> None:
        self.sample = sample

    def __len__(self) -> int:
        return 3

    def __getitem__(self, i: int) -> Any:
        return self.sample


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sample=samples)
def test_raw_samples_of_python_values_round_trip(sample):
    root = Path(tempfile.mkdtemp())
    try:
        loader = DataLoader(Constant(sample), batch_size=None)
        with snapstore.record(loader, root / "r.snap") as stream:
            seen = list(stream)  # default_convert turns tuples into lists
        s = snapstore.open(root / "r.snap")["train"]
        same(s.raw[2], sample)
        same(s.epoch(0)[1], seen[1])
    finally:
        shutil.rmtree(root)
