"""Datasets and comparisons shared by the tests (module level, so workers can pickle them)."""

from __future__ import annotations

import collections
import time
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

Pair = collections.namedtuple("Pair", ["image", "label"])


def image_of(index: int, shape: tuple[int, ...] = (3, 4, 4)) -> torch.Tensor:
    """A deterministic float32 image that encodes its dataset index."""
    return torch.arange(int(np.prod(shape)), dtype=torch.float32).reshape(shape) / 100 + index


class Indexed(Dataset):
    """``(image, index)``; with ``augment``, a torchvision-style ``transform`` adds noise."""

    def __init__(self, n: int = 50, shape: tuple[int, ...] = (3, 4, 4), augment: bool = False) -> None:
        self.n, self.shape = n, shape
        self.transform = Noise() if augment else None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = image_of(i, self.shape)
        if self.transform is not None:
            x = self.transform(x)
        return x, i


class Noise:
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.randn_like(x)


class Records(Dataset):
    """Dict samples with nested metadata, a string path and a NumPy label."""

    def __init__(self, n: int = 40) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {
            "image": image_of(i, (2, 3)).numpy(),
            "meta": {"id": i, "path": f"images/{i:04d}.png", "weight": 0.5 * i, "flag": i % 2 == 0},
            "label": np.int64(i % 7),
        }


class Pairs(Dataset):
    def __len__(self) -> int:
        return 30

    def __getitem__(self, i: int) -> Pair:
        return Pair(image_of(i, (2, 2)), torch.tensor(i))


class Batched(Indexed):
    """A dataset with ``__getitems__`` (batched fetch), like Hugging Face datasets."""

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        return [(image_of(i, self.shape), i) for i in indices]


class Slow(Indexed):
    """Index-dependent latency so that ``in_order=False`` delivers out of order."""

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        time.sleep(0.02 if i % 3 == 0 else 0.0)
        return super().__getitem__(i)


class Stream(IterableDataset):
    """Yields ``(image, k)`` for k in its share of ``range(n)``, split across workers."""

    def __init__(self, n: int = 40) -> None:
        self.n = n

    def __iter__(self):
        info = get_worker_info()
        w, nw = (info.id, info.num_workers) if info else (0, 1)
        for k in range(w, self.n, nw):
            yield image_of(k, (2,)), k


class FailAt(Indexed):
    """Raises ``KeyError`` for one index, like a dataset meeting a missing file."""

    def __init__(self, bad: int, n: int = 50) -> None:
        super().__init__(n)
        self.bad = bad

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if i == self.bad:
            raise KeyError(f"sample {i} is missing")
        return super().__getitem__(i)


def pad_collate(items: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pads 1-D sequences to the longest in the batch (a trailing shape that varies per batch)."""
    seqs = [torch.ones(1 + i % 7) * i for _, i in items]
    return torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True), torch.tensor([i for _, i in items])


def dict_collate(items: list[tuple[torch.Tensor, int]]) -> dict[str, Any]:
    """A custom collate returning a dict with arrays, strings and a tensor."""
    return {
        "x": np.stack([x.numpy() for x, _ in items]),
        "names": [f"item-{i}" for _, i in items],
        "index": torch.tensor([i for _, i in items]),
    }


def same(a: Any, b: Any, path: str = "batch") -> None:
    """Assert ``a`` and ``b`` are bitwise equal with the same structure and leaf types.

    Namedtuples compare by class name and field names (a replayed namedtuple
    is rebuilt without the user's class).
    """
    if isinstance(a, tuple) and hasattr(a, "_fields"):
        assert type(b).__name__ == type(a).__name__ and b._fields == a._fields, f"{path}: {type(a)} vs {type(b)}"
    else:
        assert type(a) is type(b), f"{path}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{path}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
        assert a.reshape(-1).contiguous().view(torch.uint8).equal(b.reshape(-1).contiguous().view(torch.uint8)), f"{path}: values differ"
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{path}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
        if a.dtype.kind in "TU":
            assert a.tolist() == b.tolist(), f"{path}: values differ"
        else:
            assert a.tobytes() == b.tobytes(), f"{path}: values differ"
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{path}: keys {list(a)} vs {list(b)}"
        for k in a:
            same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: length {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{path}/{i}")
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b), path
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"


def snapshot_batch(batch: Any) -> Any:
    """A deep copy of a batch, taken before the training loop could modify it."""
    if isinstance(batch, torch.Tensor):
        return batch.clone()
    if isinstance(batch, np.ndarray):
        return batch.copy()
    if isinstance(batch, dict):
        return type(batch)({k: snapshot_batch(v) for k, v in batch.items()})
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(snapshot_batch(v) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(snapshot_batch(v) for v in batch)
    return batch
