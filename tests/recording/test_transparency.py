"""The loader you wrap is the loader that runs: a matrix of DataLoader configurations, bare vs recorded.

Built from PyTorch's own ``test/test_dataloader.py``: every sampler and batch
sampler, ``worker_init_fn`` seeding, ``generator=``, the fork/spawn/forkserver
contexts, persistent workers over 3 epochs, ``pin_memory``,
``prefetch_factor``, ``in_order=False``, ``timeout``, iterable sharding
through ``get_worker_info``, ``ChainDataset``/``StackDataset``/
``ConcatDataset``/``random_split``, ``default_convert`` and the collate
output types it exercises. Every dataset here draws randomness in
``__getitem__`` or in its transform from torch's, NumPy's and ``random``'s
global RNGs and from a generator it owns, and carries its index in the item.

Each case runs bare and recorded from the same seeds, compares the epochs
batch for batch, bitwise, then reopens the snapshot and checks that it
replays the recorded batches and that each epoch's ``order`` is the indices
the samples carry.
"""

from __future__ import annotations

import collections
import math
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import (
    BatchSampler,
    ChainDataset,
    ConcatDataset,
    DataLoader,
    Dataset,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    StackDataset,
    SubsetRandomSampler,
    WeightedRandomSampler,
    get_worker_info,
    random_split,
)

import snapstore
from snapstore.core.datasets import locate
from tests.support.recording import same, snapshot_batch

Point = collections.namedtuple("Point", ["x", "index"])


class Noisy(Dataset):
    """``(x float32 (3,), index)``: x mixes draws from torch, NumPy, ``random`` and the dataset's own generator."""

    def __init__(self, n: int = 24) -> None:
        self.n = n
        self.rng = np.random.default_rng(7)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        noise = torch.rand(1).item() + np.random.rand() + random.random() + self.rng.random()
        return torch.tensor([i, noise, i * 2.0], dtype=torch.float32), int(i)


class AddNoise:
    """A torchvision-style transform drawing from torch's global RNG."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.randn_like(x)


class Transformed(Dataset):
    """``(transform(image), index)`` with ``transform`` set, torchvision style: raw="auto" tees its input."""

    def __init__(self, n: int = 24) -> None:
        self.images = torch.arange(n * 4, dtype=torch.float32).reshape(n, 4)
        self.transform = AddNoise()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.images[i] * float(np.random.rand() > 2) + self.images[i]  # a draw that must not be repeated
        return (self.transform(x) if self.transform is not None else x), int(i)


class Untraceable(Transformed):
    """The dataset changes the transform's output before returning it: the tee cannot place it, so raw
    capture fetches again, and must leave every global RNG where it was."""

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.images[i] + float(np.random.rand()) + torch.rand(1) + random.random()  # draws a refetch repeats
        return (self.transform(x) if self.transform is not None else x) * 2, int(i)


class Scalars(Noisy):
    """Items of NumPy scalars and a Python float: default_collate turns them into float64/int64 tensors."""

    def __getitem__(self, i: int) -> tuple[np.float64, float, int]:
        x, i = super().__getitem__(i)
        return np.float64(x[1]), float(random.random()), int(i)


class Meta(dict):
    """A dict subclass default_collate keeps (replayed as a plain dict: docs/INTEGRATIONS.md)."""


def as_dict_subclass(items: list[tuple[torch.Tensor, int]]) -> Meta:
    x, index = torch.utils.data.default_collate(items)
    return Meta(x=x, index=index)


class Shardable(IterableDataset):
    """PyTorch's documented iterable recipe: ``worker_init_fn`` narrows ``start``/``end`` per worker."""

    def __init__(self, start: int = 0, end: int = 20) -> None:
        self.start, self.end = start, end

    def __iter__(self):
        for i in range(self.start, self.end):
            yield torch.tensor([float(i), torch.rand(1).item()]), i


def shard(worker_id: int) -> None:
    info = get_worker_info()
    ds = info.dataset  # the user's dataset object, not a wrapper
    per = math.ceil((ds.end - ds.start) / info.num_workers)
    ds.start, ds.end = ds.start + worker_id * per, min(ds.end, ds.start + (worker_id + 1) * per)


def seed_worker(worker_id: int) -> None:  # the reproducibility recipe of PyTorch's docs
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class Pairs(BatchSampler):
    """A custom batch sampler: pairs of indices, reversed."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self):
        for i in range(self.n - 2, -1, -2):
            yield [i + 1, i]

    def __len__(self) -> int:
        return self.n // 2


class IndexLists(torch.utils.data.Sampler):
    """A sampler yielding lists of indices, for ``batch_size=None`` loaders over datasets that take lists."""

    def __iter__(self):
        return iter([[3, 1, 2], [0, 5, 4]])

    def __len__(self) -> int:
        return 2


class ListIndexed(Dataset):
    """``dataset[[i, j, ...]]`` returns the batch ``(x (n, 2), index (n,))``."""

    def __len__(self) -> int:
        return 6

    def __getitem__(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.tensor(idx)
        return torch.stack([t.float(), torch.rand(len(idx))], 1), t


def as_namedtuple(items: list[tuple[torch.Tensor, int]]) -> Point:
    x, index = torch.utils.data.default_collate(items)
    return Point(x, index)


def as_dict_with_strings(items: list[tuple[torch.Tensor, int]]) -> dict[str, Any]:
    x, index = torch.utils.data.default_collate(items)
    return {"x": x, "index": index, "name": [f"s{int(i)}" for i in index], "np": x.numpy() * 2}


def stacked(n: int = 24) -> StackDataset:
    return StackDataset(a=Noisy(n), b=Noisy(n))


def split(n: int = 24) -> Dataset:
    return random_split(Noisy(n), [0.5, 0.5], generator=torch.Generator().manual_seed(3))[1]


G = lambda: torch.Generator().manual_seed(11)  # noqa: E731

CASES: dict[str, Callable[[], DataLoader]] = {
    "sequential": lambda: DataLoader(Noisy(), batch_size=5),
    "shuffle": lambda: DataLoader(Noisy(), batch_size=4, shuffle=True),
    "shuffle-generator": lambda: DataLoader(Noisy(), batch_size=4, shuffle=True, generator=G()),
    "sequential-sampler-drop-last": lambda: DataLoader(Noisy(), batch_size=5, sampler=SequentialSampler(range(24)),
                                                       drop_last=True),
    "random-replacement": lambda: DataLoader(Noisy(), batch_size=4,
                                             sampler=RandomSampler(range(24), replacement=True, num_samples=30)),
    "subset-random": lambda: DataLoader(Noisy(), batch_size=3, sampler=SubsetRandomSampler([1, 5, 7, 11, 13, 20])),
    "weighted": lambda: DataLoader(Noisy(), batch_size=4, sampler=WeightedRandomSampler([0.1] * 12 + [1.0] * 12, 20)),
    "distributed": lambda: DataLoader(Noisy(), batch_size=4,
                                      sampler=DistributedSampler(range(24), num_replicas=2, rank=1, seed=5)),
    "batch-sampler": lambda: DataLoader(Noisy(), batch_sampler=BatchSampler(RandomSampler(range(24)), 5, False)),
    "custom-batch-sampler": lambda: DataLoader(Noisy(), batch_sampler=Pairs(24)),
    "no-batching-default-convert": lambda: DataLoader(Noisy(), batch_size=None, shuffle=True),
    "index-list-sampler": lambda: DataLoader(ListIndexed(), batch_size=None, sampler=IndexLists()),
    "workers-fork": lambda: DataLoader(Noisy(), batch_size=4, shuffle=True, num_workers=2),
    "workers-seeded": lambda: DataLoader(Noisy(), batch_size=4, shuffle=True, num_workers=2,
                                         worker_init_fn=seed_worker, generator=G()),
    "workers-spawn": lambda: DataLoader(Noisy(), batch_size=6, num_workers=2, multiprocessing_context="spawn"),
    "workers-forkserver": lambda: DataLoader(Noisy(), batch_size=6, num_workers=1,
                                             multiprocessing_context="forkserver"),
    "persistent-workers": lambda: DataLoader(Noisy(), batch_size=4, shuffle=True, num_workers=2,
                                             persistent_workers=True),
    "prefetch-timeout": lambda: DataLoader(Noisy(), batch_size=3, num_workers=2, prefetch_factor=4, timeout=60),
    "iterable-sharded": lambda: DataLoader(Shardable(), batch_size=3, num_workers=2, worker_init_fn=shard),
    "iterable-chain": lambda: DataLoader(ChainDataset([Shardable(0, 7), Shardable(10, 15)]), batch_size=4),
    "stack-dataset": lambda: DataLoader(stacked(), batch_size=4, shuffle=True),
    "concat-dataset": lambda: DataLoader(ConcatDataset([Noisy(10), Noisy(14)]), batch_size=4, shuffle=True,
                                         num_workers=2),
    "random-split": lambda: DataLoader(split(), batch_size=4, shuffle=True),
    "namedtuple-collate": lambda: DataLoader(Noisy(), batch_size=4, collate_fn=as_namedtuple),
    "dict-strings-ndarray": lambda: DataLoader(Noisy(), batch_size=4, collate_fn=as_dict_with_strings,
                                               num_workers=2),
    "transform-tee": lambda: DataLoader(Transformed(), batch_size=4, shuffle=True),
    "transform-tee-workers": lambda: DataLoader(Transformed(), batch_size=4, shuffle=True, num_workers=2),
    "transform-refetch-rng-restored": lambda: DataLoader(Untraceable(), batch_size=4, shuffle=True),
    "transform-refetch-workers": lambda: DataLoader(Untraceable(), batch_size=4, shuffle=True, num_workers=2),
    "numpy-scalar-items": lambda: DataLoader(Scalars(), batch_size=4, shuffle=True),
    "dict-subclass-collate": lambda: DataLoader(Noisy(), batch_size=4, collate_fn=as_dict_subclass),
    "pin-memory": lambda: DataLoader(Noisy(), batch_size=4, shuffle=True, num_workers=2, pin_memory=True),
}

PERSISTENT = {"persistent-workers": 3}


def _indices(batch: Any) -> list[int]:
    """The dataset indices a batch's samples carry."""
    if isinstance(batch, Point):
        return batch.index.tolist()
    if isinstance(batch, dict):
        if "index" in batch:
            return batch["index"].tolist()
        return batch["a"][1].tolist()
    index = batch[-1]
    return index.tolist() if isinstance(index, torch.Tensor) else [int(index)]


def _iterate(loader: Any, epochs: int) -> list[list[Any]]:
    out = []
    for e in range(epochs):
        if isinstance(getattr(loader, "sampler", None), DistributedSampler):
            loader.sampler.set_epoch(e)
        out.append([snapshot_batch(b) for b in loader])
    return out


def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)


@pytest.mark.filterwarnings("ignore:.*pin_memory.*:UserWarning")  # no accelerator here: torch skips pinning
@pytest.mark.parametrize("case", sorted(CASES))
def test_recorded_batches_are_the_bare_batches(case: str, tmp_path: Any) -> None:
    epochs = PERSISTENT.get(case, 2)
    _seed()
    bare = _iterate(CASES[case](), epochs)
    _seed()
    loader = CASES[case]()
    with snapstore.Recorder(tmp_path / "t.snap") as rec:
        stream = rec.wrap(loader, name="train")
        recorded = _iterate(stream, epochs)
        assert stream.loader is loader and stream.collate_fn is loader.collate_fn
    assert loader.collate_fn is not None and "Capture" not in type(loader.collate_fn).__name__
    for e in range(epochs):
        assert len(bare[e]) == len(recorded[e]) > 0
        for j, (a, b) in enumerate(zip(bare[e], recorded[e])):
            same(a, b, f"{case} epoch {e} batch {j}")

    train = snapstore.open(tmp_path / "t.snap")["train"]
    assert train.epochs == list(range(epochs))
    for e in range(epochs):
        ep = train.epoch(e)
        assert ep.complete
        for j, (a, b) in enumerate(zip(recorded[e], ep.batches())):
            same(dict(a) if isinstance(a, Meta) else a, b, f"{case} replay epoch {e} batch {j}")
        carried = [i for b in recorded[e] for i in _indices(b)]
        if isinstance(loader.dataset, IterableDataset):  # positions in the stream: p * workers + worker
            workers = max(loader.num_workers, 1)
            assert len(set(ep.order.tolist())) == len(ep.order) == len(carried)
            if workers == 1:
                assert ep.order.tolist() == list(range(len(carried))) and set(ep.workers.tolist()) == {-1}
            else:
                assert (ep.order % workers).tolist() == ep.workers.tolist()
        elif isinstance(loader.dataset, StackDataset):
            assert len(ep.order) == len(carried)
        elif isinstance(loader.dataset, (ConcatDataset, torch.utils.data.Subset)):  # items carry the inner index
            assert [locate(loader.dataset, i)[1] for i in ep.order.tolist()] == carried
        else:
            assert ep.order.tolist() == carried


@pytest.mark.parametrize("workers", [0, 2])
def test_out_of_order_delivery_records_the_order_consumed(workers: int, tmp_path: Any) -> None:
    """``in_order=False``: batches may arrive in any order; each is recorded where it was consumed."""
    loader = DataLoader(Noisy(40), batch_size=4, shuffle=True, num_workers=workers, in_order=False)
    with snapstore.Recorder(tmp_path / "t.snap") as rec:
        stream = rec.wrap(loader, name="train")
        recorded = _iterate(stream, 2)
    train = snapstore.open(tmp_path / "t.snap")["train"]
    for e in range(2):
        assert train.epoch(e).order.tolist() == [i for b in recorded[e] for i in _indices(b)]
        assert sorted(train.epoch(e).order.tolist()) == list(range(40))


def test_raw_capture_tees_the_transform_input_and_fetches_nothing_twice(tmp_path: Any) -> None:
    """raw="auto" on a dataset with a transform: the raw sample is the transform's input, observed in the
    fetch the loader makes anyway (the dataset's draws before the transform are not repeated)."""
    calls = []

    class Counting(Transformed):
        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            calls.append(i)
            return super().__getitem__(i)

    loader = DataLoader(Counting(12), batch_size=4, shuffle=True)
    with snapstore.Recorder(tmp_path / "t.snap") as rec:
        list(rec.wrap(loader, name="train"))
    assert sorted(calls) == list(range(12))  # one fetch per index
    raw = snapstore.open(tmp_path / "t.snap")["train"].raw
    for i in range(12):
        image, index = raw[i]
        assert index == i and torch.equal(torch.as_tensor(image), loader.dataset.images[i] * 1)


def test_the_transform_is_teed_only_while_raw_samples_are_missing(tmp_path: Any) -> None:
    """Once every index's raw sample is recorded, later epochs run the dataset's own transform, untouched."""
    types = []

    class Watching(Transformed):
        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            types.append(type(self.transform))
            return super().__getitem__(i)

    loader = DataLoader(Watching(12), batch_size=4, shuffle=True)
    with snapstore.Recorder(tmp_path / "t.snap") as rec:
        train = rec.wrap(loader, name="train")
        for _ in range(2):
            list(train)
    assert {t.__name__ for t in types[:12]} == {"TransformTee"}
    assert set(types[12:]) == {AddNoise}
    assert type(loader.dataset.transform) is AddNoise
    assert sorted(snapstore.open(tmp_path / "t.snap")["train"].epoch(1).order.tolist()) == list(range(12))


def test_the_worker_sees_the_users_dataset(tmp_path: Any) -> None:
    seen = []

    def init(worker_id: int) -> None:
        seen.append(type(get_worker_info().dataset).__name__)
        assert type(get_worker_info().dataset) is Shardable

    loader = DataLoader(Shardable(), batch_size=3, num_workers=1, worker_init_fn=init)
    with snapstore.Recorder(tmp_path / "t.snap") as rec:
        assert len(list(rec.wrap(loader, name="train"))) == 7


class Flaky(Dataset):
    """Index 5 raises on fetch."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if i == 5:
            raise ValueError("bad sample 5")
        return torch.tensor([float(i)]), i


@pytest.mark.parametrize("workers", [0, 2])
def test_iteration_goes_on_after_a_batch_that_raised(workers: int, tmp_path: Any) -> None:
    def consume(it: Any) -> tuple[list[int], int]:
        got, errors = [], 0
        while True:
            try:
                b = next(it)
            except StopIteration:
                return got, errors
            except ValueError:
                errors += 1
                continue
            got += b[1].tolist()

    bare = consume(iter(DataLoader(Flaky(), batch_size=4, num_workers=workers)))
    with snapstore.Recorder(tmp_path / "t.snap") as rec:
        stream = rec.wrap(DataLoader(Flaky(), batch_size=4, num_workers=workers), name="train")
        assert consume(iter(stream)) == bare == ([0, 1, 2, 3, 8, 9, 10, 11], 1)
    ep = snapstore.open(tmp_path / "t.snap")["train"].epoch(0)
    assert ep.order.tolist() == [0, 1, 2, 3, 8, 9, 10, 11] and not ep.complete


def test_an_epoch_is_complete_once_len_batches_are_consumed(tmp_path: Any) -> None:
    """Lightning's fetcher stops after len(loader) batches and never asks for one more."""
    with snapstore.Recorder(tmp_path / "t.snap") as rec:
        stream = rec.wrap(DataLoader(Noisy(12), batch_size=4), name="train")
        for _ in range(2):
            it = iter(stream)
            for _ in range(len(stream)):
                next(it)
        it = iter(stream)
        next(it)  # a third epoch cut short
    train = snapstore.open(tmp_path / "t.snap")["train"]
    assert [train.epoch(e).complete for e in train.epochs] == [True, True, False]


def test_requires_grad_zero_size_fields_record(tmp_path: Any) -> None:
    def collate(items: list[tuple[torch.Tensor, int]]) -> dict[str, torch.Tensor]:
        x = torch.stack([x for x, _ in items]).requires_grad_()
        return {"x": x, "empty": torch.zeros(len(items), 0), "index": torch.tensor([i for _, i in items])}

    loader = DataLoader(Noisy(8), batch_size=4, collate_fn=collate)
    with snapstore.Recorder(tmp_path / "t.snap") as rec:
        recorded = [snapshot_batch({k: v.detach() for k, v in b.items()}) for b in rec.wrap(loader, name="train")]
    ep = snapstore.open(tmp_path / "t.snap")["train"].epoch(0)
    for a, b in zip(recorded, ep.batches()):
        same(a, b)


class Grad(Noisy):
    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, i = super().__getitem__(i)
        return x.requires_grad_(), i


def test_requires_grad_raw_samples_record(tmp_path: Any) -> None:
    with snapstore.Recorder(tmp_path / "t.snap") as rec:
        batches = [b[0].detach().clone() for b in rec.wrap(DataLoader(Grad(8), batch_size=4), name="train")]
    train = snapstore.open(tmp_path / "t.snap")["train"]
    for i in range(8):
        x, index = train.raw[i]
        assert index == i and torch.equal(torch.as_tensor(x), batches[i // 4][i % 4])


def test_index_list_raw_samples_are_the_rows_of_the_fetched_batch(tmp_path: Any) -> None:
    with snapstore.Recorder(tmp_path / "t.snap") as rec:
        batches = list(rec.wrap(DataLoader(ListIndexed(), batch_size=None, sampler=IndexLists()), name="train"))
    raw = snapstore.open(tmp_path / "t.snap")["train"].raw
    for x, index in batches:
        for row, i in enumerate(index.tolist()):
            rx, ri = raw[i]
            assert ri == i and torch.equal(torch.as_tensor(rx), x[row])


@pytest.mark.parametrize(("make", "fix"), [
    (lambda b: torch.zeros(4, 3).to_sparse(), "to_dense"),
    (lambda b: torch.nested.nested_tensor([torch.zeros(2), torch.zeros(3), torch.zeros(1), torch.zeros(2)],
                                          layout=torch.jagged), "unbind"),
    (lambda b: torch.nn.utils.rnn.pack_sequence([torch.zeros(3), torch.zeros(2), torch.zeros(2), torch.zeros(1)]),
     "pad_packed_sequence"),
])
def test_unrecordable_batches_are_refused_with_the_type_and_the_fix(make: Any, fix: str, tmp_path: Any) -> None:
    loader = DataLoader(Noisy(8), batch_size=4, collate_fn=make)
    with pytest.raises(snapstore.SchemaError, match=fix):
        with snapstore.Recorder(tmp_path / "t.snap") as rec:
            list(rec.wrap(loader, name="train"))


def test_a_loader_wrapped_under_inference_mode_records_outside_it(tmp_path: Any) -> None:
    """Lightning's validate() wraps loaders under torch.inference_mode; the epochs run in and out of it."""
    with snapstore.Recorder(tmp_path / "t.snap") as rec:
        with torch.inference_mode():
            stream = rec.wrap(DataLoader(Noisy(8), batch_size=4, num_workers=1), name="train")
            assert len(list(stream)) == 2
        assert len(list(stream)) == 2
    assert snapstore.open(tmp_path / "t.snap")["train"].epochs == [0, 1]


def test_an_explicit_raw_source_reaches_spawned_workers(tmp_path: Any) -> None:
    """raw=<a Dataset> is fetched in the workers that collate: it must pickle into a spawned one."""
    raw = torch.utils.data.TensorDataset(torch.arange(24, dtype=torch.float32) * 10)
    loader = DataLoader(Noisy(), batch_size=6, num_workers=1, multiprocessing_context="spawn")
    with snapstore.Recorder(tmp_path / "t.snap") as rec:
        assert len(list(rec.wrap(loader, name="train", raw=raw))) == 4
    stream = snapstore.open(tmp_path / "t.snap")["train"]
    assert [float(stream.raw[i][0]) for i in (0, 7, 23)] == [0.0, 70.0, 230.0]
