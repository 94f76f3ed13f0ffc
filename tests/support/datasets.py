"""Datasets, samplers and collate functions shared by the tests.

Module level, so DataLoader workers (forked or spawned) can pickle them. The
one digits dataset and the one augmentation are the demo's
(``snapstore.cli.demo.Digits`` and ``RandomShiftNoise``); the functions here
only choose which images they hold.
"""

from __future__ import annotations

import collections
import time
from typing import Any

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset, IterableDataset, Sampler, default_collate, get_worker_info

from snapstore.cli.demo import Digits, RandomShiftNoise

Pair = collections.namedtuple("Pair", ["image", "label"])


# -- digits ---------------------------------------------------------------------------------------


def sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's load_digits: float32 images (1797, 8, 8) in 0..16 and int64 labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32), d.target.astype(np.int64)


def _digits(images: np.ndarray, labels: np.ndarray, transform: Any = None) -> Digits:
    return Digits(torch.from_numpy(np.ascontiguousarray(images[:, None])), torch.from_numpy(labels.copy()), transform)


def digits(n: int | None = None, transform: Any = None) -> Digits:
    """The first ``n`` digits, standardised over all 1,797 (mean 0, std 1), as ``(image (1, 8, 8) float32, label)``."""
    images, labels = sklearn_digits()
    images = (images / 16.0 - (images / 16.0).mean()) / (images / 16.0).std()
    return _digits(images[:n], labels[:n], transform)


def positive_digits(blank: tuple[int, ...], transform: Any = None, n: int = 300) -> Digits:
    """Digits scaled to 0.05..1.05, except ``blank`` indices, centred so their pixels sum to almost zero."""
    images, labels = sklearn_digits()
    x = images[:n] / 16.0 + 0.05
    for i in blank:
        x[i] = x[i] - x[i].mean() + 1e-5
    return _digits(x, labels[:n], transform)


def digits_with_nan(bad: tuple[int, ...], n: int = 200) -> Digits:
    """Digits in 0..1 whose images hold a NaN pixel at ``bad`` indices."""
    images, labels = sklearn_digits()
    x = images[:n] / 16.0
    for i in bad:
        x[i, 3, 4] = np.nan
    return _digits(x, labels[:n])


class FlakyLabel(Digits):
    """Digits in 0..1 whose label for ``index`` is wrong while ``self.epoch == bad_epoch`` (a race, a corrupt file)."""

    def __init__(self, index: int, bad_epoch: int, n: int = 200) -> None:
        images, labels = sklearn_digits()
        super().__init__(torch.from_numpy(images[:n, None] / 16.0), torch.from_numpy(labels[:n]))
        self.index, self.bad_epoch, self.epoch = index, bad_epoch, 0

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = super().__getitem__(i)
        if i == self.index and self.epoch == self.bad_epoch:
            label = (label + 1) % 10
        return image, label


class DivideBySum:
    """The bug: normalise an image by its pixel sum."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x / x.sum()


# -- small synthetic datasets ----------------------------------------------------------------------


def image_of(index: int, shape: tuple[int, ...] = (3, 4, 4)) -> torch.Tensor:
    """A deterministic float32 image that encodes its dataset index."""
    return torch.arange(int(np.prod(shape)), dtype=torch.float32).reshape(shape) / 100 + index


class Indexed(Dataset):
    """``(image, index)``; with ``augment``, a torchvision-style ``transform`` (``RandomShiftNoise``)."""

    def __init__(self, n: int = 50, shape: tuple[int, ...] = (3, 4, 4), augment: bool = False) -> None:
        self.n, self.shape = n, shape
        self.transform = RandomShiftNoise() if augment else None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = image_of(i, self.shape)
        if self.transform is not None:
            x = self.transform(x)
        return x, i


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


def brightened(items: list) -> dict[str, Any]:
    """``default_collate`` of ``Records`` items with the images doubled: an augmentation, so that the seen rows
    differ from the raw samples and are stored in their epochs (equal ones are stored once, in raw/)."""
    batch = default_collate(items)
    batch["image"] = batch["image"] * 2
    return batch


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


class Images(Dataset):
    """``n`` random (3, 64, 64) float32 images (48 KiB rows: 32 rows a chunk) and int labels."""

    def __init__(self, n: int = 100, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.rand(n, 3, 64, 64, generator=g)
        self.y = torch.arange(n) % 10

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.y[i])


class SeededImages(Dataset):
    """``(image (3, 32, 32) float32, index)`` with every value of image ``i`` derived from ``i`` (128 rows a chunk)."""

    SHAPE = (3, 32, 32)

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        g = torch.Generator().manual_seed(i)
        return torch.randn(self.SHAPE, generator=g), i


class Scalars(Dataset):
    """Samples without images: ``{"value": float, "label": int, "name": str}``."""

    def __init__(self, n: int = 30) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"value": 0.5 * i, "label": i % 3, "name": f"item-{i:03d}"}


class DictItems(Dataset):
    """Items as dicts with a nested dict and a string: default collate keeps the structure."""

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(2)
        self.images = torch.randint(0, 255, (n, 3, 16, 16), dtype=torch.uint8, generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return {"image": self.images[i], "label": i % 7, "meta": {"id": i, "name": f"item-{i}"}}


#: Rows of ``Sequences``.
SEQUENCES = 150


class Sequences(Dataset):
    """Float sequences of length 1..23 (longer than a chunk of a few rows would need), and a label."""

    def __len__(self) -> int:
        return SEQUENCES

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(i)
        return torch.randn(1 + (i * 7) % 23, generator=g), i % 5


class Sentences(Dataset):
    """Token-id sequences of length 3..17, like tokenised text."""

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(i)
        return torch.randint(1, 1000, (3 + (i * 7) % 15,), generator=g)


# -- samplers ---------------------------------------------------------------------------------------


class Resumable(Sampler[int]):
    """A seeded permutation that can start part-way, like a sampler restored from a checkpoint."""

    def __init__(self, n: int, seed: int, start: int = 0) -> None:
        self.n, self.seed, self.start = n, seed, start

    def __iter__(self):
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed)).tolist()
        return iter(perm[self.start :])

    def __len__(self) -> int:
        return self.n - self.start


class DropsAndRepeats(Sampler):
    """A buggy custom sampler: every index once, except ``dropped`` never and ``repeated`` twice."""

    def __init__(self, n: int, dropped: int, repeated: int) -> None:
        self.order = [i for i in range(n) if i != dropped] + [repeated]

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


# -- collate functions ------------------------------------------------------------------------------


def dict_collate(items: list[tuple[torch.Tensor, int]]) -> dict[str, Any]:
    """A custom collate returning a dict with arrays, strings and a tensor."""
    return {
        "x": np.stack([x.numpy() for x, _ in items]),
        "names": [f"item-{i}" for _, i in items],
        "index": torch.tensor([i for _, i in items]),
    }


def pad_with_lengths(items: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences zero-padded to the batch's longest (a trailing size that varies per batch), and their lengths."""
    return pad_sequence(items, batch_first=True), torch.tensor([len(x) for x in items])


def as_row_list(items: list[tuple[torch.Tensor, int]]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``Sequences`` items as a list of variable-length tensors (a field stored ragged from the start), and labels."""
    return [x for x, _ in items], torch.tensor([y for _, y in items])


def padded_per_batch(items: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``Sequences`` items padded to the batch's longest (a field that turns ragged when the width changes),
    and their lengths."""
    xs = [x for x, _ in items]
    return pad_sequence(xs, batch_first=True), torch.tensor([len(x) for x in xs])


def ragged_rows(items: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Sequences as a list of tensors of their own lengths, and the lengths."""
    return list(items), torch.tensor([len(x) for x in items])
