"""Recording is transparent and exact for every loader configuration DESIGN.md lists.

Each test runs the same loader twice from the same seeds, once bare and once
through the recorder, compares the yielded batches, then replays the
snapshot and compares it bitwise with what the loop saw.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import zarr
from helpers import (
    Batched,
    Indexed,
    Pairs,
    Records,
    Slow,
    Stream,
    dict_collate,
    same,
    snapshot_batch,
)
from torch.utils.data import (
    BatchSampler,
    ConcatDataset,
    DataLoader,
    DistributedSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
    Subset,
    WeightedRandomSampler,
)

import snapstore


def run(make_loader: Callable[[], DataLoader], path: Any, *, epochs: int = 2, raw: Any = "auto", set_epoch: bool = False,
        compare_plain: bool = True) -> tuple[snapstore.Stream, list[list[Any]]]:
    """Iterate bare and recorded from the same seeds; return the stream and the recorded batches."""
    def iterate(loader: Any) -> list[list[Any]]:
        out = []
        for e in range(epochs):
            if set_epoch:
                loader.sampler.set_epoch(e)
            out.append([snapshot_batch(b) for b in loader])
        return out

    torch.manual_seed(0)
    plain = iterate(make_loader()) if compare_plain else None
    torch.manual_seed(0)
    loader = make_loader()
    with snapstore.Recorder(path) as rec:
        stream = rec.wrap(loader, name="train", raw=raw)
        try:
            expected_len = len(loader)
        except TypeError as e:  # a batch_sampler without __len__: the same error
            with pytest.raises(TypeError, match=str(e)):
                len(stream)
        else:
            assert len(stream) == expected_len
        seen = iterate(stream)
    if plain is not None:
        for e in range(epochs):
            assert len(plain[e]) == len(seen[e])
            for a, b in zip(plain[e], seen[e]):
                same(a, b)
    replay = snapstore.open(path)["train"]
    assert replay.epochs == list(range(epochs))
    for e in range(epochs):
        ep = replay.epoch(e)
        assert ep.complete
        assert len(ep.batch_sizes) == len(seen[e])
        for j, (a, b) in enumerate(zip(seen[e], ep.batches())):
            same(a, b, f"epoch {e} batch {j}")
    return replay, seen


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
    make = lambda: DataLoader(Indexed(60), batch_size=7, shuffle=True, num_workers=2, persistent_workers=True,
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
    stream, seen = run(lambda: DataLoader(Indexed(50), batch_size=8, shuffle=True, drop_last=True, num_workers=2), snap_path)
    ep = stream.epoch(1)
    assert len(ep) == 48 and ep.batch_sizes.tolist() == [8] * 6
    assert len(set(ep.order.tolist())) == 48


def test_out_of_order_delivery_keeps_each_batch_with_its_indices(snap_path):
    make = lambda: DataLoader(Slow(60), batch_size=3, num_workers=2, in_order=False)
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
    make = lambda: DataLoader(Indexed(50), batch_size=10, sampler=WeightedRandomSampler(weights, 80, replacement=True), num_workers=2)
    stream, seen = run(make, snap_path)
    ep = stream.epoch(0)
    assert len(ep) == 80
    np.testing.assert_array_equal(ep.order, indices_seen(seen[0]))
    assert len(np.unique(ep.order)) < 80
    assert set(stream.raw.indices.tolist()) == set(stream.epoch(0).order.tolist()) | set(stream.epoch(1).order.tolist())


def test_distributed_sampler_set_epoch_passes_through(snap_path):
    make = lambda: DataLoader(Indexed(40), batch_size=4, sampler=DistributedSampler(Indexed(40), num_replicas=2, rank=1, seed=3))
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
    stream, seen = run(lambda: DataLoader(Indexed(30), batch_size=4, shuffle=True, collate_fn=dict_collate, num_workers=2), snap_path)
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


def test_subset_and_concat_datasets(snap_path):
    ds = ConcatDataset([Subset(Indexed(30), list(range(10, 20))), Indexed(5)])
    stream, seen = run(lambda: DataLoader(ds, batch_size=4, shuffle=True, num_workers=2), snap_path)
    ep = stream.epoch(0)
    assert sorted(ep.order.tolist()) == list(range(15))
    k = int(np.nonzero(ep.order == 3)[0][0])
    assert ep[k][1].item() == 13  # concat index 3 is Subset index 3 -> base index 13


@pytest.mark.parametrize("num_workers", [0, 2])
def test_iterable_dataset(snap_path, num_workers):
    stream, seen = run(lambda: DataLoader(Stream(40), batch_size=5, num_workers=num_workers), snap_path)
    ep = stream.epoch(0)
    assert len(ep) == 40 and stream.manifest.iterable
    assert sorted(ep.order.tolist()) == list(range(40))  # positions in the stream, each once


def test_spawned_workers(snap_path):
    stream, seen = run(lambda: DataLoader(Indexed(16), batch_size=4, shuffle=True, num_workers=2,
                                          multiprocessing_context="spawn", persistent_workers=True), snap_path, epochs=1)
    np.testing.assert_array_equal(stream.epoch(0).order, indices_seen(seen[0]))


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


def test_loop_modifying_batches_in_place_does_not_change_the_record(snap_path):
    with snapstore.record(DataLoader(Indexed(10), batch_size=5), snap_path) as stream:
        for x, _ in stream:
            x.mul_(0)
    x, i = snapstore.open(snap_path)["train"].epoch(0).batch(1)
    same(x, torch.stack([Indexed(10)[k][0] for k in range(5, 10)]))


def test_outputs_are_aligned_with_order(snap_path):
    with snapstore.Recorder(snap_path) as rec:
        train = rec.wrap(DataLoader(Indexed(30), batch_size=8, shuffle=True, num_workers=2), name="train")
        for _ in range(2):
            for x, i in train:
                train.log(loss=i.float() * 2, logits=torch.stack([i, -i], 1).numpy())
    ep = snapstore.open(snap_path)["train"].epoch(1)
    np.testing.assert_array_equal(ep.outputs["loss"], ep.order.astype(np.float32) * 2)
    np.testing.assert_array_equal(ep.outputs["logits"][:, 1], -ep.order)
    assert sorted(ep.outputs) == ["logits", "loss"]


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


def test_attributes_pass_through(snap_path):
    loader = DataLoader(Indexed(10), batch_size=3, sampler=SequentialSampler(range(10)))
    with snapstore.record(loader, snap_path) as stream:
        assert stream.sampler is loader.sampler and stream.batch_size == 3 and stream.dataset is loader.dataset
        assert stream.name == "train" and stream.loader is loader
        with pytest.raises(AttributeError):
            stream.no_such_attribute


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


def test_provenance(snap_path):
    g = torch.Generator().manual_seed(1234)
    with snapstore.record(DataLoader(Indexed(10), batch_size=3, sampler=RandomSampler(range(10), generator=g), num_workers=2), snap_path) as s:
        list(s)
    ep = snapstore.open(snap_path)["train"].epoch(0)
    p = ep.provenance
    assert p["sampler"]["generator"]["seed"] == 1234
    assert p["loader"]["num_workers"] == 2 and p["loader"]["batch_size"] == 3
    assert p["loader"]["sampler"].endswith("RandomSampler") and p["loader"]["collate_fn"].endswith("default_collate")
    assert p["torch_initial_seed"] == torch.initial_seed()
    assert {"torch", "zarr", "numpy"} <= set(p["versions"]) and p["host"]
    assert ep.manifest.started <= ep.manifest.ended
    # the recorded generator state reproduces the epoch's order
    import base64
    state = torch.frombuffer(bytearray(base64.b64decode(p["sampler"]["generator"]["state"])), dtype=torch.uint8)
    g2 = torch.Generator()
    g2.set_state(state)
    assert list(RandomSampler(range(10), generator=g2)) == ep.order.tolist()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_batch_larger_than_one_hand_off_goes_over_in_slices(snap_path, monkeypatch, num_workers):
    # an Indexed row is 200 bytes (float32 3x4x4 image + int64 index): slices of 2 rows
    monkeypatch.setattr(snapstore.config, "HAND_OFF_BYTES", 450)
    stream, seen = run(lambda: DataLoader(Indexed(23, augment=True), batch_size=5, shuffle=True, num_workers=num_workers), snap_path)
    assert stream.epoch(1).batch_sizes.tolist() == [5, 5, 5, 5, 3]
    for i in (0, 11, 22):
        same(stream.raw[i][0], Indexed(23)[i][0])
    assert snapstore.audit(snap_path).findings == []  # row hashes agree with the rows


def test_commits_cover_whole_batches_when_batches_go_over_in_slices(snap_path, monkeypatch):
    monkeypatch.setattr(snapstore.config, "HAND_OFF_BYTES", 450)
    monkeypatch.setattr(snapstore.config, "DEFAULT_FLUSH_INTERVAL", 0.0)  # a commit after every slice
    commits = []
    real_set = zarr.storage.LocalStore.set

    async def watch(self, key, value):
        if key == "train/epochs/0/zarr.json":
            manifest = json.loads(value.to_bytes())["attributes"].get("epoch")
            if manifest is not None:
                commits.append((manifest["rows"], manifest["batches"]))
        await real_set(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", watch)
    with snapstore.record(DataLoader(Indexed(23), batch_size=5), snap_path) as stream:
        for _ in stream:
            pass
    assert len(commits) > 10
    assert all(rows == min(23, 5 * batches) for rows, batches in commits), commits
    assert commits[-1] == (23, 5)
