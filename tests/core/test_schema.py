"""``snapstore.core.schema``: whatever batch structure a loader yields (ragged leaves and string lists
included), it flattens to fields and rebuilds, so replay gives it back bitwise (property tests)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset

import snapstore
from tests.support.datasets import Sentences, ragged_rows
from tests.support.recording import run, same, snapshot_batch
from tests.support.strategies import batch_schemas, build, python_samples


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
@given(schema=batch_schemas, sizes=st.lists(st.integers(1, 4), min_size=1, max_size=4))
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


class Constant(Dataset):
    def __init__(self, sample: Any) -> None:
        self.sample = sample

    def __len__(self) -> int:
        return 3

    def __getitem__(self, i: int) -> Any:
        return self.sample


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sample=python_samples)
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


def test_list_of_ragged_tensors(snap_path):
    stream, seen = run(lambda: DataLoader(Sentences(), batch_size=5, shuffle=True, collate_fn=ragged_rows,
                                          num_workers=2), snap_path)
    info = stream.fields["0"]
    assert info.kind == "tensor-list" and info.ragged
    ep = stream.epoch(0)
    same(ep.sample(index=9)[0], Sentences()[9])
    batch = ep.batch(2)
    assert isinstance(batch[0], list) and len(batch[0]) == 5
