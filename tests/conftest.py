"""Fixtures shared by the tests; helpers and datasets are in ``tests/support``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

import snapstore
from tests.support.datasets import DictItems, Records, as_row_list, brightened
from tests.support.recording import N, record_loop, record_sequences


@pytest.fixture
def snap_path(tmp_path: Path) -> Path:
    """Where a test records its snapshot."""
    return tmp_path / "run.snap"


# -- a small snapshot to damage ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def records_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 'train' stream of ``Records(10)`` in shuffled batches of 4, two epochs, a ``score`` logged. Never modified."""
    path = tmp_path_factory.mktemp("bad") / "run.snap"
    torch.manual_seed(0)
    with snapstore.Recorder(path) as rec:  # augmented: the seen rows are stored in their epochs, not once in raw/
        train = rec.wrap(DataLoader(Records(10), batch_size=4, shuffle=True, collate_fn=brightened), name="train")
        for _ in range(2):
            for batch in train:
                train.log(score=batch["image"].sum((1, 2)).double())
    return path


@pytest.fixture
def snap_copy(records_snapshot: Path, tmp_path: Path) -> Path:
    """A fresh copy of ``records_snapshot``, to damage."""
    copy = tmp_path / "run.snap"
    shutil.copytree(records_snapshot, copy)
    return copy


# -- the export tests' recordings: read-only, shared by read/, export/ and cli/ tests -----------------


@pytest.fixture(scope="session")
def loop_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """``N`` images (3, 32, 32) float32 and labels 0..9."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, 3, 32, 32, generator=g), torch.randint(0, 10, (N,), generator=g)


@pytest.fixture(scope="session")
def loop_recording(tmp_path_factory: pytest.TempPathFactory, loop_tensors):
    """``(path, seen)``: ``loop_tensors`` recorded by ``record_loop``, and what the loop saw."""
    path = tmp_path_factory.mktemp("export") / "run.snap"
    return path, record_loop(path, *loop_tensors)


@pytest.fixture(scope="session")
def loop_stream(loop_recording) -> snapstore.Stream:
    """The 'train' stream of ``loop_recording``."""
    return snapstore.open(loop_recording[0])["train"]


@pytest.fixture(scope="session")
def dict_recording(tmp_path_factory: pytest.TempPathFactory):
    """``(stream, dataset, batches)``: one epoch of ``DictItems(300)`` (dict batches, nested, strings)."""
    ds = DictItems(300)
    loader = DataLoader(ds, batch_size=32, shuffle=True, num_workers=2, generator=torch.Generator().manual_seed(3))
    path = tmp_path_factory.mktemp("dict") / "run.snap"
    with snapstore.record(loader, path) as train:
        batches = list(train)
    return snapstore.open(path)["train"], ds, batches


@pytest.fixture(scope="session")
def ragged_lists(tmp_path_factory: pytest.TempPathFactory):
    """``(stream, batches)``: ``Sequences`` collated as lists of rows, a field stored ragged from the start."""
    return record_sequences(tmp_path_factory.mktemp("ragged") / "lists.snap", as_row_list)
