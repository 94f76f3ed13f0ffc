"""Datasets and helpers for the audit, diff, show and hashing tests.

Module level, so DataLoader workers can pickle the datasets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

import snapstore


def digits() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's load_digits: float32 images (1797, 8, 8) in 0..16 and int64 labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32), d.target.astype(np.int64)


class ShiftNoise:
    """Augmentation: a random shift of up to one pixel and Gaussian noise (std 0.1)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        dy, dx = (int(v) for v in torch.randint(-1, 2, (2,)))
        x = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
        return x + 0.1 * torch.randn_like(x)


class Digits(Dataset):
    """Normalised digits as ``(image (1, 8, 8) float32, label)``, with a torchvision-style ``transform``."""

    def __init__(self, transform: Any = None, n: int | None = None) -> None:
        images, labels = digits()
        images = (images / 16.0 - (images / 16.0).mean()) / (images / 16.0).std()
        self.images = torch.from_numpy(images[:n, None].copy())
        self.labels = labels[:n]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.images[i]
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[i])


class DivideBySum:
    """The bug: normalise an image by its pixel sum."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x / x.sum()


class PositiveDigits(Digits):
    """Digits scaled to 0.05..1.05, except ``blank`` indices, centred so their pixels sum to almost zero."""

    def __init__(self, blank: tuple[int, ...], transform: Any = None, n: int = 300) -> None:
        images, labels = digits()
        x = images[:n] / 16.0 + 0.05
        for i in blank:
            x[i] = x[i] - x[i].mean() + 1e-5
        self.images = torch.from_numpy(x[:, None].copy())
        self.labels = labels[:n]
        self.transform = transform


class WithNaN(Dataset):
    """Digits whose images hold a NaN pixel at ``bad`` indices."""

    def __init__(self, bad: tuple[int, ...], n: int = 200) -> None:
        images, labels = digits()
        x = images[:n, None] / 16.0
        for i in bad:
            x[i, 0, 3, 4] = np.nan
        self.images, self.labels = torch.from_numpy(x.copy()), labels[:n]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])


class FlakyLabel(Dataset):
    """Digits whose label for ``index`` is wrong while ``self.epoch == bad_epoch`` (a race, a corrupt file)."""

    def __init__(self, index: int, bad_epoch: int, n: int = 200) -> None:
        images, labels = digits()
        self.images, self.labels = torch.from_numpy(images[:n, None] / 16.0), labels[:n]
        self.index, self.bad_epoch, self.epoch = index, bad_epoch, 0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        label = int(self.labels[i])
        if i == self.index and self.epoch == self.bad_epoch:
            label = (label + 1) % 10
        return self.images[i], label


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


class Scalars(Dataset):
    """Samples without images: ``{"value": float, "label": int, "name": str}``."""

    def __init__(self, n: int = 30) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"value": 0.5 * i, "label": i % 3, "name": f"item-{i:03d}"}


class DropsAndRepeats(Sampler):
    """A buggy custom sampler: every index once, except ``dropped`` never and ``repeated`` twice."""

    def __init__(self, n: int, dropped: int, repeated: int) -> None:
        self.order = [i for i in range(n) if i != dropped] + [repeated]

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


def record(path: Path, loader: DataLoader, epochs: int = 2, *, name: str = "train", raw: Any = "auto",
           before_epoch: Any = None, log: Any = None, stop_after: dict[int, int] | None = None) -> snapstore.Snapshot:
    """Record ``epochs`` epochs of ``loader`` into ``path`` and open the snapshot.

    ``before_epoch(e)`` runs before each epoch; ``log(batch)`` returns outputs to
    log; ``stop_after={epoch: batches}`` breaks out of that epoch early.
    """
    with snapstore.Recorder(path) as rec:
        stream = rec.wrap(loader, name=name, raw=raw)
        for e in range(epochs):
            if before_epoch is not None:
                before_epoch(e)
            for b, batch in enumerate(stream):
                if log is not None:
                    stream.log(**log(batch))
                if stop_after and e in stop_after and b + 1 >= stop_after[e]:
                    break
    return snapstore.open(path)


def chunk_file(snapshot: Path, array: str, chunk: int) -> Path:
    """The file holding row-chunk ``chunk`` of ``array`` (path inside the snapshot): ``c.<chunk>.0...``."""
    files = list((Path(snapshot) / array).glob(f"c.{chunk}")) + list((Path(snapshot) / array).glob(f"c.{chunk}.*"))
    assert len(files) == 1, files
    return files[0]


def flip_byte(path: Path) -> None:
    """Flip every bit of the byte in the middle of ``path``."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    """Cut ``path`` to half its length."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def only(findings: list, **where: Any) -> list:
    """Findings whose attributes equal ``where``."""
    return [f for f in findings if all(getattr(f, k) == v for k, v in where.items())]
