"""``snapstore.core.datasets``: recording through Subset and ConcatDataset, torchvision-style transforms,
and what ``raw=`` resolves to."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import ConcatDataset, DataLoader, Subset

import snapstore
from tests.support.datasets import Indexed, Pairs, Stream
from tests.support.recording import run, same


def test_subset_and_concat_datasets(snap_path):
    ds = ConcatDataset([Subset(Indexed(30), list(range(10, 20))), Indexed(5)])
    stream, seen = run(lambda: DataLoader(ds, batch_size=4, shuffle=True, num_workers=2), snap_path)
    ep = stream.epoch(0)
    assert sorted(ep.order.tolist()) == list(range(15))
    k = int(np.nonzero(ep.order == 3)[0][0])
    assert ep[k][1].item() == 13  # concat index 3 is Subset index 3 -> base index 13


def test_nested_subset_and_concat_record_base_indices(snap_path):
    a, b = Indexed(30), Indexed(8, shape=(3, 4, 4))
    ds = ConcatDataset([Subset(Subset(a, list(range(5, 25))), list(range(0, 20, 2))), b])
    stream, _ = run(lambda: DataLoader(ds, batch_size=3, shuffle=True, num_workers=2), snap_path, epochs=1)
    ep = stream.epoch(0)
    assert len(stream.manifest.base_datasets) == 2
    assert stream.manifest.base_datasets[0] == "tests.support.datasets.Indexed"
    for k in range(len(ep)):
        i = int(ep.order[k])
        if i < 10:
            assert (ep.base_dataset[k], ep.base_order[k]) == (0, 5 + 2 * i)
        else:
            assert (ep.base_dataset[k], ep.base_order[k]) == (1, i - 10)
        assert ep[k][1].item() == ep.base_order[k]  # Indexed returns its own (base) index


def test_raw_is_untransformed_and_seen_is_augmented(snap_path):
    stream, seen = run(lambda: DataLoader(Indexed(20, augment=True), batch_size=5, shuffle=True, num_workers=2),
                       snap_path, compare_plain=True)
    for i in (0, 7, 19):
        raw_x, raw_i = stream.raw[i]
        same(raw_x, Indexed(20)[i][0])  # the image before the transform
        assert raw_i == i
        seen0 = stream.epoch(0).sample(index=i)[0]
        seen1 = stream.epoch(1).sample(index=i)[0]
        assert not torch.equal(seen0, raw_x) and not torch.equal(seen0, seen1)
    # the user's dataset still has its transform after raw capture in the main process
    ds = Indexed(5, augment=True)
    with snapstore.record(DataLoader(ds, batch_size=2), snap_path.with_name("b.snap")) as s:
        list(s)
    assert ds.transform is not None


def test_raw_from_callable_and_dataset_and_none(snap_path, tmp_path):
    ds = Indexed(10)
    for raw, expected in [(lambda i: {"id": i}, {"id": 4}), (Pairs(), Pairs()[4])]:
        path = tmp_path / f"{type(raw).__name__}.snap"
        with snapstore.record(DataLoader(ds, batch_size=3), path, raw=raw) as s:
            list(s)
        same(snapstore.open(path)["train"].raw[4], expected)
    with snapstore.record(DataLoader(ds, batch_size=3), snap_path, raw=None) as s:
        list(s)
    raw = snapstore.open(snap_path)["train"].raw
    assert len(raw.indices) == 0
    with pytest.raises(KeyError, match="no raw sample"):
        raw[0]


def test_iterable_dataset_raw_callable(snap_path):
    with snapstore.record(DataLoader(Stream(10), batch_size=5), snap_path, raw=lambda k: {"k": k}) as s:
        list(s)
    assert snapstore.open(snap_path)["train"].raw[7] == {"k": 7}
