"""Benchmark workloads made of real photographs (scikit-learn's two sample images, no download).

``PhotoCrops`` is a map-style dataset of raw uint8 crops (3, S, S) with a
torchvision-style ``transform`` (random crop with reflect padding, random
horizontal flip, normalisation to float32), so ``Recorder.wrap(raw="auto")``
records the untransformed crop once per index and the augmented rows every
epoch. Items are ``(image, label, index)``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

MEAN = np.array([0.49, 0.48, 0.45], dtype=np.float32).reshape(3, 1, 1)
STD = np.array([0.25, 0.24, 0.26], dtype=np.float32).reshape(3, 1, 1)


@dataclass(frozen=True)
class Workload:
    """One generated workload: ``samples`` crops of ``size`` x ``size`` pixels, batches of ``batch``."""

    name: str
    samples: int
    size: int
    batch: int
    pad: int

    @property
    def sample_bytes(self) -> int:
        """Bytes a loader yields per sample (float32 image + label + index) plus the raw uint8 crop."""
        return 3 * self.size * self.size * (4 + 1) + 16


def workloads(full: bool) -> dict[str, Workload]:
    """CIFAR-like (50,000 x 3x32x32, batch 256) and ImageNet-like (2,000 x 3x224x224); tiny sizes for tests."""
    if full:
        return {"cifar": Workload("CIFAR-like", 50_000, 32, 256, 4),
                "imagenet": Workload("ImageNet-like", 2_000, 224, 256, 16)}
    return {"cifar": Workload("CIFAR-like", 1_024, 32, 256, 4), "imagenet": Workload("ImageNet-like", 48, 224, 16, 16)}


def photo_crops(samples: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``samples`` random ``size`` x ``size`` crops of the sample photographs: uint8 (n, 3, S, S) and int64 labels."""
    from sklearn.datasets import load_sample_images

    images = load_sample_images().images  # two (427, 640, 3) uint8 photographs
    rng = np.random.default_rng(seed)
    out = np.empty((samples, 3, size, size), dtype=np.uint8)
    which = rng.integers(0, len(images), samples)
    labels = np.empty(samples, dtype=np.int64)
    for k, img in enumerate(images):
        sel = np.nonzero(which == k)[0]
        h, w, _ = img.shape
        ys, xs = rng.integers(0, h - size + 1, len(sel)), rng.integers(0, w - size + 1, len(sel))
        chw = np.ascontiguousarray(img.transpose(2, 0, 1))
        for r, y, x in zip(sel.tolist(), ys.tolist(), xs.tolist()):
            out[r] = chw[:, y : y + size, x : x + size]
        labels[sel] = k * 5 + xs * 5 // (w - size + 1)  # ten classes: photo x horizontal band
    return out, labels


class PhotoCrops(Dataset):
    """``(image, label, index)``; ``transform`` augments the uint8 crop into float32 (3, S, S)."""

    def __init__(self, crops: np.ndarray, labels: np.ndarray, pad: int) -> None:
        self.crops, self.labels, self.pad = crops, labels, pad
        self.transform = Augment(pad)

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        x = self.crops[i]
        x = self.transform(x) if self.transform is not None else torch.from_numpy(x)
        return x, int(self.labels[i]), int(i)


class Augment:
    """Random crop with zero padding ``pad`` (as torchvision's ``RandomCrop(padding=pad)``), random
    horizontal flip, normalisation: uint8 (3, S, S) -> float32 tensor (3, S, S)."""

    def __init__(self, pad: int) -> None:
        self.pad = pad
        self.rng = np.random.default_rng()
        self.fill = (0 - MEAN) / STD

    def __call__(self, x: np.ndarray) -> torch.Tensor:
        p, s = self.pad, x.shape[-1]
        i, j = (int(v) for v in self.rng.integers(-p, p + 1, 2))
        if self.rng.random() < 0.5:
            x = x[:, :, ::-1]
        out = np.empty(x.shape, dtype=np.float32)
        out[...] = self.fill
        src = x[:, max(i, 0) : s + min(i, 0), max(j, 0) : s + min(j, 0)]
        out[:, max(-i, 0) : s - max(i, 0), max(-j, 0) : s - max(j, 0)] = (src * np.float32(1 / 255) - MEAN) / STD
        return torch.from_numpy(out)


def make_dataset(w: Workload, seed: int = 0) -> PhotoCrops:
    crops, labels = photo_crops(w.samples, w.size, seed)
    return PhotoCrops(crops, labels, w.pad)


def make_loader(dataset: Dataset, w: Workload, workers: int) -> DataLoader:
    """The loader every run uses: shuffled, batch ``w.batch``, ``workers`` worker processes."""
    g = torch.Generator().manual_seed(0)
    return DataLoader(dataset, batch_size=w.batch, shuffle=True, num_workers=workers, generator=g)


def premade_batches(w: Workload, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The workload's epoch as ready batches ``(image float32, raw uint8, label int64, index int64)``."""
    ds = make_dataset(w, seed)
    out = []
    order = np.random.default_rng(seed).permutation(w.samples)
    for lo in range(0, w.samples, w.batch):
        idx = order[lo : lo + w.batch]
        seen = torch.stack([ds[int(i)][0] for i in idx])
        out.append((seen, torch.from_numpy(ds.crops[idx]), torch.from_numpy(ds.labels[idx]),
                    torch.from_numpy(idx.astype(np.int64))))
    return out


def cli(run: Callable[[bool, int | None], Any], doc: str, argv: list[str] | None, rounds: str) -> int:
    """The command line of a benchmark whose ``run(full, repeat)`` prints its tables: ``--full`` (the CIFAR-like
    epoch of 50,000 samples) and ``--repeat`` (``rounds`` says what one is and the defaults)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="the full CIFAR-like epoch (50,000 samples)")
    ap.add_argument("--repeat", type=int, help=rounds)
    args = ap.parse_args(argv)
    run(args.full, args.repeat)
    return 0
