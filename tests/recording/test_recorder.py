"""``snapstore.Recorder`` (``snapstore.recording.recorder``): recording is transparent and exact for every
loader configuration DESIGN.md lists, and a Recorder refuses what would lose data.

Most tests run the same loader twice from the same seeds, once bare and once
through the recorder, compare the yielded batches, then replay the snapshot
and compare it bitwise with what the loop saw (``tests.support.recording.run``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import zarr
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    RandomSampler,
    Sampler,
    TensorDataset,
    WeightedRandomSampler,
)

import snapstore
from tests.support.datasets import Batched, Indexed, Pairs, Records, Slow, Stream, dict_collate
from tests.support.recording import run, same


def indices_seen(batches: list[Any], field: int = 1) -> np.ndarray:
    return np.concatenate([np.asarray(b[field]).reshape(-1) for b in batches])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_shuffled_order_is_exact(snap_path, num_workers):
    stream, seen = run(lambda: DataLoader(Indexed(50), batch_size=8, shuffle=True, num_workers=num_workers), snap_path)
    for e in stream.epochs:
        ep = stream.epoch(e)
        np.testing.assert_array_equal(ep.order, indices_seen(seen[e]))
        assert sorted(ep.order.tolist()) == list(range(50))
        assert ep.batch_sizes.tolist() == [8] * 6 + [2]
    assert not np.array_equal(stream.epoch(0).order, stream.epoch(1).order)


def test_persistent_workers_prefetch_and_pin_memory(snap_path):
    def make():
        return DataLoader(Indexed(60), batch_size=7, shuffle=True, num_workers=2, persistent_workers=True,
                          prefetch_factor=4, pin_memory=torch.cuda.is_available())

    stream, seen = run(make, snap_path, epochs=3)
    for e in range(3):
        np.testing.assert_array_equal(stream.epoch(e).order, indices_seen(seen[e]))
    # raw samples are recorded once per index even though every epoch fetched them
    assert len(stream.raw.indices) == 60


@pytest.mark.filterwarnings("ignore:.*pin_memory.*:UserWarning")
def test_pin_memory_flag_passes_through(snap_path):
    stream, _ = run(lambda: DataLoader(Pairs(), batch_size=4, pin_memory=True), snap_path, epochs=1)
    assert stream.epoch(0).provenance["loader"]["pin_memory"] is True


def test_drop_last(snap_path):
    stream, seen = run(lambda: DataLoader(Indexed(50), batch_size=8, shuffle=True, drop_last=True, num_workers=2),
                       snap_path)
    ep = stream.epoch(1)
    assert len(ep) == 48 and ep.batch_sizes.tolist() == [8] * 6
    assert len(set(ep.order.tolist())) == 48


def test_out_of_order_delivery_keeps_each_batch_with_its_indices(snap_path):
    def make():
        return DataLoader(Slow(60), batch_size=3, num_workers=2, in_order=False)

    stream, seen = run(make, snap_path, epochs=1, compare_plain=False)
    ep = stream.epoch(0)
    np.testing.assert_array_equal(ep.order, indices_seen(seen[0]))
    assert sorted(ep.order.tolist()) == list(range(60))
    for k in (0, 17, 59):  # each seen row is the sample of the index recorded at its position
        x, i = ep[k]
        assert i.item() == ep.order[k]
        same(x, Indexed(60)[int(ep.order[k])][0])


def test_weighted_sampler_with_replacement_repeats_indices(snap_path):
    weights = torch.tensor([10.0] * 5 + [0.1] * 45)
    def make():
        sampler = WeightedRandomSampler(weights, 80, replacement=True)
        return DataLoader(Indexed(50), batch_size=10, sampler=sampler, num_workers=2)

    stream, seen = run(make, snap_path)
    ep = stream.epoch(0)
    assert len(ep) == 80
    np.testing.assert_array_equal(ep.order, indices_seen(seen[0]))
    assert len(np.unique(ep.order)) < 80
    assert set(stream.raw.indices.tolist()) == set(stream.epoch(0).order.tolist()) | set(stream.epoch(1).order.tolist())


def test_distributed_sampler_set_epoch_passes_through(snap_path):
    def make():
        sampler = DistributedSampler(Indexed(40), num_replicas=2, rank=1, seed=3)
        return DataLoader(Indexed(40), batch_size=4, sampler=sampler)

    stream, seen = run(make, snap_path, set_epoch=True)
    for e in range(2):
        expected = DistributedSampler(Indexed(40), num_replicas=2, rank=1, seed=3)
        expected.set_epoch(e)
        assert stream.epoch(e).order.tolist() == list(expected)
        assert stream.epoch(e).provenance["sampler"]["epoch"] == e


class EvenFirst(Sampler[int]):
    """A custom sampler: even indices, then odd ones."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self):
        return iter([*range(0, self.n, 2), *range(1, self.n, 2)])

    def __len__(self) -> int:
        return self.n


class Growing(Sampler[list[int]]):
    """A custom batch_sampler whose batches grow: 1, 2, 3, ... indices."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self):
        start, size = 0, 1
        while start < self.n:
            yield list(range(start, min(self.n, start + size)))
            start, size = start + size, size + 1


def test_custom_sampler(snap_path):
    stream, _ = run(lambda: DataLoader(Indexed(21), batch_size=5, sampler=EvenFirst(21), num_workers=2), snap_path)
    assert stream.epoch(0).order.tolist() == list(EvenFirst(21))


def test_custom_batch_sampler_with_varying_batch_sizes(snap_path):
    stream, _ = run(lambda: DataLoader(Indexed(21), batch_sampler=Growing(21), num_workers=2), snap_path)
    ep = stream.epoch(1)
    assert ep.batch_sizes.tolist() == [1, 2, 3, 4, 5, 6]
    assert ep.order.tolist() == list(range(21))
    same(ep.batch(3), [torch.stack([Indexed(21)[i][0] for i in range(6, 10)]), torch.arange(6, 10)])


def test_batch_sampler_object(snap_path):
    bs = BatchSampler(RandomSampler(range(30)), batch_size=4, drop_last=False)
    stream, _ = run(lambda: DataLoader(Indexed(30), batch_sampler=bs), snap_path)
    assert sorted(stream.epoch(0).order.tolist()) == list(range(30))


def test_unbatched_loader(snap_path):
    stream, seen = run(lambda: DataLoader(Indexed(12), batch_size=None, shuffle=True, num_workers=2), snap_path)
    ep = stream.epoch(0)
    assert ep.batch_sizes.tolist() == [1] * 12
    assert ep.order.tolist() == [i for _, i in seen[0]]
    same(ep[3], seen[0][3])


def test_custom_collate_with_arrays_and_strings(snap_path):
    stream, seen = run(lambda: DataLoader(Indexed(30), batch_size=4, shuffle=True, collate_fn=dict_collate,
                                          num_workers=2), snap_path)
    assert stream.fields["names"].kind == "list" and stream.fields["names"].dtype == "str"
    assert stream.fields["x"].kind == "ndarray"
    ep = stream.epoch(0)
    assert ep[5]["names"] == f"item-{ep.order[5]}"


def test_dict_batches_with_nested_metadata_and_strings(snap_path):
    stream, seen = run(lambda: DataLoader(Records(), batch_size=6, shuffle=True, num_workers=2), snap_path)
    assert set(stream.fields) == {"image", "meta/id", "meta/path", "meta/weight", "meta/flag", "label"}
    ep = stream.epoch(1)
    i = int(ep.order[0])
    assert ep[0]["meta"]["path"] == f"images/{i:04d}.png"
    raw = stream.raw[i]
    same(raw, Records()[i])


def test_namedtuple_batches(snap_path):
    stream, seen = run(lambda: DataLoader(Pairs(), batch_size=4, shuffle=True), snap_path)
    batch = next(stream.epoch(0).batches())
    assert type(batch).__name__ == "Pair" and batch._fields == ("image", "label")
    assert stream.fields["label"].kind == "tensor"


def test_batched_fetch_with_getitems(snap_path):
    stream, _ = run(lambda: DataLoader(Batched(25), batch_size=4, shuffle=True, num_workers=2), snap_path)
    assert sorted(stream.epoch(0).order.tolist()) == list(range(25))
    same(stream.raw[7], Batched(25)[7])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_iterable_dataset(snap_path, num_workers):
    stream, seen = run(lambda: DataLoader(Stream(40), batch_size=5, num_workers=num_workers), snap_path)
    ep = stream.epoch(0)
    assert len(ep) == 40 and stream.manifest.iterable
    assert sorted(ep.order.tolist()) == list(range(40))  # positions in the stream, each once


def test_spawned_workers(snap_path):
    stream, seen = run(lambda: DataLoader(Indexed(16), batch_size=4, shuffle=True, num_workers=2,
                                          multiprocessing_context="spawn", persistent_workers=True),
                       snap_path, epochs=1)
    np.testing.assert_array_equal(stream.epoch(0).order, indices_seen(seen[0]))


def test_two_streams_in_one_recorder(snap_path):
    with snapstore.Recorder(snap_path) as rec:
        train = rec.wrap(DataLoader(Indexed(20), batch_size=4, shuffle=True), name="train")
        test = rec.wrap(DataLoader(Records(10), batch_size=5), name="test")
        for _ in range(2):
            list(train)
            for b in test:
                test.log(pred=b["label"] + 1)
    snap = snapstore.open(snap_path)
    assert snap.streams == ["test", "train"]
    np.testing.assert_array_equal(snap["test"].epoch(1).outputs["pred"], np.arange(10) % 7 + 1)


def test_append_mode_numbers_epochs_after_existing_ones(snap_path):
    with snapstore.record(DataLoader(Indexed(10), batch_size=3, shuffle=True), snap_path) as s:
        list(s)
    with snapstore.Recorder(snap_path, mode="a") as rec:
        s = rec.wrap(DataLoader(Indexed(10), batch_size=3, shuffle=True), name="train")
        list(s)
        list(s)
    stream = snapstore.open(snap_path)["train"]
    assert stream.epochs == [0, 1, 2]
    assert len(stream.raw.indices) == 10 and stream.raw._rows == 10  # raw not recorded twice
    assert all(stream.epoch(e).complete for e in stream.epochs)


# -- what a Recorder refuses ---------------------------------------------------------------------


def test_mode_w_refuses_to_overwrite_a_snapshot(snap_path):
    with snapstore.record(DataLoader(Indexed(6), batch_size=3), snap_path) as s:
        list(s)
    with pytest.raises(snapstore.SnapshotExistsError, match="overwrite=True or mode='a'"):
        snapstore.Recorder(snap_path)
    assert snapstore.open(snap_path)["train"].epochs == [0]  # untouched
    with snapstore.Recorder(snap_path, overwrite=True) as rec:
        assert rec  # replaced
    assert snapstore.open(snap_path).streams == []


def test_other_data_is_never_overwritten(tmp_path):
    victim = tmp_path / "results"
    victim.mkdir()
    (victim / "model.pt").write_bytes(b"weights")
    with pytest.raises(snapstore.SnapshotExistsError, match="not a snapshot"):
        snapstore.Recorder(victim, overwrite=True)
    assert (victim / "model.pt").read_bytes() == b"weights"
    assert isinstance(snapstore.SnapshotExistsError("x"), FileExistsError)


def test_bad_arguments(snap_path):
    loader = DataLoader(Indexed(4), batch_size=2)
    with pytest.raises(snapstore.UsageError, match="mode='x'"):
        snapstore.Recorder(snap_path, mode="x")
    with pytest.raises(snapstore.UsageError, match="compressor"):
        snapstore.Recorder(snap_path, compressor="brotli")
    with snapstore.Recorder(snap_path) as rec:
        rec.wrap(loader, name="train")
        with pytest.raises(snapstore.UsageError, match="already recorded"):
            rec.wrap(loader, name="train")
        with pytest.raises(snapstore.UsageError, match="not usable"):
            rec.wrap(loader, name="a/b")
        with pytest.raises(snapstore.UsageError, match="DataLoader"):
            rec.wrap([1, 2], name="x")
        with pytest.raises(snapstore.UsageError, match="raw="):
            rec.wrap(loader, name="y", raw="everything")


def test_recorder_is_closed_after_exit(snap_path):
    with snapstore.Recorder(snap_path) as rec:
        s = rec.wrap(DataLoader(Indexed(4), batch_size=2), name="train")
    with pytest.raises(snapstore.UsageError, match="closed"):
        list(s)
    with pytest.raises(snapstore.UsageError, match="closed"):
        rec.wrap(DataLoader(Indexed(4)), name="more")


def test_append_with_a_different_dataset_is_refused(snap_path):
    with snapstore.record(DataLoader(Indexed(10), batch_size=3), snap_path) as s:
        list(s)
    with snapstore.Recorder(snap_path, mode="a") as rec:
        with pytest.raises(snapstore.UsageError, match="dataset of 10 samples; this loader's dataset has 6"):
            rec.wrap(DataLoader(Indexed(6), batch_size=3), name="train")


def test_append_recovers_a_stream_and_an_epoch_left_without_manifest(tmp_path):
    """A writer killed in its first milliseconds leaves a stream's group (or an epoch's) created and its
    manifest not yet written: readers skip it, and ``mode="a"`` records into it instead of failing."""
    path = tmp_path / "run.snap"
    loader = DataLoader(TensorDataset(torch.arange(12.0)), batch_size=4)
    with snapstore.Recorder(path) as rec:
        list(rec.wrap(loader, name="test"))
    root = zarr.open_group(str(path), mode="r+")
    root.create_group("train")  # what the killed writer left: the group, no "stream" attribute
    root["test/epochs"].create_group("1")  # and an epoch group without its "epoch" attribute
    assert snapstore.open(path).streams == ["test"] and snapstore.open(path)["test"].epochs == [0]
    with snapstore.Recorder(path, mode="a") as rec:
        train, test = rec.wrap(loader, name="train"), rec.wrap(loader, name="test")
        for _ in range(2):
            list(train)
        list(test)
    snap = snapstore.open(path)
    assert snap.streams == ["test", "train"]
    assert snap["train"].epochs == [0, 1] and snap["test"].epochs == [0, 1]
    for stream, e in (("train", 0), ("train", 1), ("test", 1)):
        ep = snap[stream].epoch(e)
        assert ep.complete and ep.order.tolist() == list(range(12))
    assert snapstore.audit(path).ok
