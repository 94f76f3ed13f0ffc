"""Issue 3: variable-length fields, iterable datasets, duplicates, wrapped datasets, GPU and rank views."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import Indexed, Stream, image_of, same
from test_recorder import run
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler, RandomSampler, Subset, WeightedRandomSampler

import snapstore


class Sentences(Dataset):
    """Token-id sequences of length 3..17, like tokenised text."""

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(i)
        return torch.randint(1, 1000, (3 + (i * 7) % 15,), generator=g)


def pad_with_lengths(items):
    return pad_sequence(items, batch_first=True), torch.tensor([len(x) for x in items])


def ragged_rows(items):
    return list(items), torch.tensor([len(x) for x in items])


class Photos(Dataset):
    """Images of different sizes per sample (uint8 HxWx3), as raw photographs come."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return np.full((4 + i % 3, 5 + i % 2, 3), i, dtype=np.uint8), i % 2


@pytest.mark.parametrize("num_workers", [0, 2])
def test_padded_sequences_round_trip_and_unpad(snap_path, num_workers):
    stream, seen = run(lambda: DataLoader(Sentences(), batch_size=8, shuffle=True, collate_fn=pad_with_lengths,
                                          num_workers=num_workers), snap_path)
    info = stream.fields["0"]
    assert info.ragged and info.shape == (None,) and info.kind == "tensor"
    assert not stream.fields["1"].ragged
    ep = stream.epoch(1)
    assert ep.manifest.ragged == ["0"]
    for k in (0, 13, 63):
        i = int(ep.order[k])
        same(ep.unpadded("0", lengths="1", position=k), Sentences()[i])
    rows = ep.unpadded("0", lengths="1")
    assert len(rows) == 64 and all(torch.equal(r, Sentences()[int(i)]) for r, i in zip(rows, ep.order))


def test_list_of_ragged_tensors(snap_path):
    stream, seen = run(lambda: DataLoader(Sentences(), batch_size=5, shuffle=True, collate_fn=ragged_rows, num_workers=2), snap_path)
    info = stream.fields["0"]
    assert info.kind == "tensor-list" and info.ragged
    ep = stream.epoch(0)
    same(ep.sample(index=9)[0], Sentences()[9])
    batch = ep.batch(2)
    assert isinstance(batch[0], list) and len(batch[0]) == 5


def test_raw_samples_of_different_sizes(snap_path):
    stream, _ = run(lambda: DataLoader(Photos(), batch_size=None, shuffle=True), snap_path)
    assert stream.manifest.raw_fields["0"].ragged
    for i in range(12):
        same(stream.raw[i], Photos()[i])


def test_field_turning_ragged_in_a_later_epoch_keeps_earlier_epochs(snap_path):
    class Growing(Dataset):
        def __init__(self):
            self.long = False

        def __len__(self):
            return 6

        def __getitem__(self, i):
            return torch.arange(4 if not self.long or i < 3 else 9)

    ds = Growing()
    loader = DataLoader(ds, batch_size=3, collate_fn=lambda items: pad_sequence(items, batch_first=True))
    with snapstore.record(loader, snap_path, raw=None) as s:
        first = [b.clone() for b in s]
        ds.long = True
        second = [b.clone() for b in s]
    stream = snapstore.open(snap_path)["train"]
    assert stream.fields["value"].ragged
    assert stream.epoch(0).manifest.ragged == [] and stream.epoch(1).manifest.ragged == ["value"]
    for e, batches in enumerate([first, second]):
        for a, b in zip(batches, stream.epoch(e).batches()):
            same(a, b)
    assert not (snap_path / "train/epochs/1/seen/value").exists()  # the fixed copy was replaced


def test_ragged_layout_is_values_offsets_shapes(snap_path):
    with snapstore.record(DataLoader(Sentences(), batch_size=8, collate_fn=pad_with_lengths), snap_path) as s:
        list(s)
    import zarr

    group = zarr.open_group(snap_path / "train/epochs/0/ragged/0", mode="r")
    lengths = [len(Sentences()[i]) for i in range(64)]
    padded = [max(lengths[j:j + 8]) for j in range(0, 64, 8) for _ in range(8)]
    offsets, shapes = group["offsets"][:64], group["shapes"][:64]
    np.testing.assert_array_equal(shapes[:, 0], padded)
    np.testing.assert_array_equal(offsets, np.concatenate([[0], np.cumsum(padded)[:-1]]))
    values = group["values"][: sum(padded)]
    np.testing.assert_array_equal(values[offsets[5] : offsets[5] + lengths[5]], Sentences()[5].numpy())


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


def test_iterable_dataset_raw_callable(snap_path):
    with snapstore.record(DataLoader(Stream(10), batch_size=5), snap_path, raw=lambda k: {"k": k}) as s:
        list(s)
    assert snapstore.open(snap_path)["train"].raw[7] == {"k": 7}


def test_map_style_worker_ids(snap_path):
    stream, _ = run(lambda: DataLoader(Indexed(40), batch_size=5, num_workers=2), snap_path, epochs=1)
    ep = stream.epoch(0)
    # with in-order delivery, batch j comes from worker j % 2
    np.testing.assert_array_equal(ep.workers, np.repeat(np.arange(8) % 2, 5))


def test_replacement_sampler_positions(snap_path):
    def make():
        sampler = RandomSampler(range(10), replacement=True, num_samples=30, generator=torch.Generator().manual_seed(0))
        return DataLoader(Indexed(10), batch_size=7, sampler=sampler)

    stream, seen = run(make, snap_path)
    ep = stream.epoch(0)
    assert len(ep) == 30
    counts = np.bincount(ep.order, minlength=10)
    i = int(np.argmax(counts))
    where = ep.positions(index=i)
    assert len(where) == counts[i] > 1 and (ep.order[where] == i).all()
    same(ep.sample(index=i), ep[int(where[0])])
    assert stream.raw._rows == len(np.unique(np.concatenate([stream.epoch(e).order for e in stream.epochs])))


def test_weighted_sampler_duplicates_stored_at_each_position(snap_path):
    sampler = WeightedRandomSampler([1.0, 50.0, 1.0, 1.0], num_samples=20, replacement=True)
    stream, seen = run(lambda: DataLoader(Indexed(4), batch_size=4, sampler=sampler), snap_path, epochs=1)
    ep = stream.epoch(0)
    for k in ep.positions(index=1):
        assert ep[int(k)][1].item() == 1


def test_nested_subset_and_concat_record_base_indices(snap_path):
    a, b = Indexed(30), Indexed(8, shape=(3, 4, 4))
    ds = ConcatDataset([Subset(Subset(a, list(range(5, 25))), list(range(0, 20, 2))), b])
    stream, _ = run(lambda: DataLoader(ds, batch_size=3, shuffle=True, num_workers=2), snap_path, epochs=1)
    ep = stream.epoch(0)
    assert len(stream.manifest.base_datasets) == 2 and stream.manifest.base_datasets[0].endswith("helpers.Indexed")
    for k in range(len(ep)):
        i = int(ep.order[k])
        if i < 10:
            assert (ep.base_dataset[k], ep.base_order[k]) == (0, 5 + 2 * i)
        else:
            assert (ep.base_dataset[k], ep.base_order[k]) == (1, i - 10)
        assert ep[k][1].item() == ep.base_order[k]  # Indexed returns its own (base) index


def test_distributed_sampler_records_rank_view(snap_path):
    orders = []
    for rank in (0, 1):
        path = snap_path.with_name(f"rank{rank}.snap")
        sampler = DistributedSampler(Indexed(20), num_replicas=2, rank=rank, shuffle=True, seed=5)
        with snapstore.record(DataLoader(Indexed(20), batch_size=4, sampler=sampler), path) as s:
            for e in range(2):
                s.sampler.set_epoch(e)
                list(s)
        ep = snapstore.open(path)["train"].epoch(1)
        assert ep.provenance["rank"] == rank and ep.provenance["world_size"] == 2
        orders.append(ep.order)
    assert sorted(np.concatenate(orders).tolist()) == list(range(20))


def test_process_group_rank_in_provenance(snap_path, tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        with snapstore.record(DataLoader(Indexed(6), batch_size=3), snap_path) as s:
            list(s)
    finally:
        dist.destroy_process_group()
    p = snapstore.open(snap_path)["train"].epoch(0).provenance
    assert (p["rank"], p["world_size"]) == (0, 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_batches_and_outputs(snap_path):
    seen = []
    with snapstore.record(DataLoader(Indexed(40), batch_size=8, shuffle=True, pin_memory=True), snap_path) as s:
        for x, i in s:
            x, i = x.cuda(non_blocking=True), i.cuda(non_blocking=True)
            s.log(pred=(x.sum((1, 2, 3)) * 2).to(torch.bfloat16), idx=i)
            seen.append((x * 2).sum((1, 2, 3)).to(torch.bfloat16).cpu())
    ep = snapstore.open(snap_path)["train"].epoch(0)
    np.testing.assert_array_equal(ep.outputs["idx"], ep.order)
    assert ep.outputs["pred"].dtype == np.uint16
    np.testing.assert_array_equal(ep.outputs["pred"], torch.cat(seen).view(torch.uint16).numpy())
