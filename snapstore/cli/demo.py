"""The real-data demo behind ``snapstore demo``; read it as an example too.

It trains a small CNN for two epochs on scikit-learn's bundled handwritten
digits (1,797 real 8x8 images, no download) through a shuffling DataLoader
with two workers and a random augmentation, and records a ``"train"`` stream
(per-sample loss logged) and a ``"test"`` stream (predictions and losses
logged) with :class:`Recorder`. While training it keeps its own
fingerprint of every batch the loop saw. Then a fresh Python process, which
has no dataset object, reopens the snapshot, replays every batch and checks
it against those fingerprints, and lists the test samples with the highest
loss from what was recorded alone.

Entry points: :func:`run` (train, record, verify in a fresh process),
:func:`train` (the recording itself) and :func:`verify` (the fresh-process
half). Only the CLI prints; here progress goes to an ``echo`` callable.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import xxhash
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..errors import SnapstoreError
from ..read.snapshot import open as open_snapshot
from ..recording.recorder import Recorder

logger = logging.getLogger(__name__)

__all__ = ["Digits", "HardSample", "RandomShiftNoise", "Verification", "fingerprint", "run", "train", "verify"]

#: Test samples held out of load_digits' 1,797 (the rest, 1,497, train).
TEST_SAMPLES = 300

#: Epochs trained (and recorded) by default.
EPOCHS = 2

#: Rows per batch of both loaders.
BATCH_SIZE = 64

#: Highest-loss test samples reported.
HARDEST = 5

Echo = Callable[[str], None]

# stream name -> epoch -> one [batch digest, outputs digest] pair per batch
Fingerprints = dict[str, list[list[list[str]]]]

# -- data -------------------------------------------------------------------
class RandomShiftNoise:
    """Shift an image by up to ``max_shift`` pixels (zeros enter) and add Gaussian noise.

    A torchvision-style transform: ``image (C, H, W) float32 -> (C, H, W) float32``.
    It draws from torch's global generator, which the DataLoader seeds per worker.
    """

    def __init__(self, max_shift: int = 1, noise: float = 0.05) -> None:
        self.max_shift = max_shift
        self.noise = noise

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        s = self.max_shift
        dy, dx = (torch.randint(-s, s + 1, (2,)) + s).tolist()
        h, w = image.shape[-2:]
        shifted = F.pad(image, (s, s, s, s))[..., dy : dy + h, dx : dx + w]
        return shifted + self.noise * torch.randn_like(image)


class Digits(Dataset):
    """Handwritten digits as ``(image, label)``: float32 ``(1, 8, 8)`` in [0, 1], int64 ``()``.

    ``transform`` is applied to the image in ``__getitem__``, torchvision
    style, so ``Recorder.wrap(raw="auto")`` records the image without it.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable | None = None) -> None:
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index]


def load(seed: int = 0) -> tuple[Digits, Digits]:
    """``(train, test)``: load_digits split at random, 1,497 augmented and 300 plain samples.

    Raises
    ------
    SnapstoreError
        scikit-learn is not installed.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SnapstoreError(
            "snapstore demo needs scikit-learn for its bundled digits: pip install scikit-learn"
        ) from None
    digits = load_digits()
    images = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    labels = torch.tensor(digits.target, dtype=torch.int64)
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    test, train = perm[:TEST_SAMPLES], perm[TEST_SAMPLES:]
    return Digits(images[train], labels[train], transform=RandomShiftNoise()), Digits(images[test], labels[test])


def make_model() -> nn.Module:
    """A tiny CNN: ``(n, 1, 8, 8) -> (n, 10)`` logits."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 10),
    )

# -- an independent check of what was replayed --------------------------------
def fingerprint(obj: Any) -> str:
    """xxh3_64 hex digest of a batch: container types, and each tensor/array's type, dtype, shape and bytes.

    Walks lists, tuples and dicts (keys sorted). Equal digests mean bitwise-equal batches.
    """
    h = xxhash.xxh3_64()
    _digest(h, obj)
    return h.hexdigest()


def _digest(h: Any, obj: Any) -> None:
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        a = np.ascontiguousarray(obj.detach().cpu().numpy() if isinstance(obj, torch.Tensor) else obj)
        h.update(f"{type(obj).__name__} {a.dtype.str} {a.shape}".encode())
        h.update(a.tobytes())
    elif isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__} {len(obj)}".encode())
        for value in obj:
            _digest(h, value)
    elif isinstance(obj, dict):
        for key in sorted(obj):
            h.update(f"key {key}".encode())
            _digest(h, obj[key])
    else:
        raise TypeError(f"fingerprint() takes tensors, arrays and lists/tuples/dicts of them, got {type(obj).__name__}")

# -- training, recorded -----------------------------------------------------------
def train(
    out: str, *, overwrite: bool = False, epochs: int = EPOCHS, seed: int = 0, echo: Echo = logger.info
) -> Fingerprints:
    """Train the CNN on the digits while recording both loaders into the snapshot ``out``.

    Parameters
    ----------
    out : str
        Snapshot path; must not exist unless ``overwrite``.
    overwrite : bool, default False
        Replace an existing snapshot at ``out``.
    epochs : int, default 2
    seed : int, default 0
        Seeds the split, the model, the shuffle and the augmentation.
    echo : callable, default ``logger.info``
        Receives one line of progress per epoch.

    Returns
    -------
    dict
        ``{stream: [epoch: [[batch digest, outputs digest], ...]]}``: a
        :func:`fingerprint` of every batch the loop saw and of what it logged.

    Raises
    ------
    SnapshotExistsError
        Something is at ``out`` and ``overwrite`` is False.
    """
    train_set, test_set = load(seed)
    echo(f"training a small CNN for {epochs} epochs on sklearn's handwritten digits "
         f"({len(train_set):,} train / {len(test_set):,} test), recording into {out}")
    torch.manual_seed(seed)
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    criterion = nn.CrossEntropyLoss(reduction="none")  # one loss per sample, as log() wants
    train_loader = DataLoader(
        train_set, batch_size=BATCH_SIZE, shuffle=True, num_workers=2,
        generator=torch.Generator().manual_seed(seed),
    )
    test_loader = DataLoader(test_set, batch_size=BATCH_SIZE)
    prints: Fingerprints = {"train": [], "test": []}

    with Recorder(out, overwrite=overwrite) as rec:
        train_stream = rec.wrap(train_loader, name="train")  # raw="auto": images before RandomShiftNoise
        test_stream = rec.wrap(test_loader, name="test")
        for epoch in range(epochs):
            model.train()
            prints["train"].append([])
            total_loss = 0.0
            for batch in train_stream:  # exactly the batches train_loader yields
                x, y = batch
                loss = criterion(model(x), y)
                train_stream.log(loss=loss)
                prints["train"][-1].append([fingerprint(batch), fingerprint({"loss": loss})])
                optimizer.zero_grad()
                loss.mean().backward()
                optimizer.step()
                total_loss += float(loss.detach().sum())

            model.eval()
            prints["test"].append([])
            correct = 0
            with torch.no_grad():
                for batch in test_stream:
                    x, y = batch
                    logits = model(x)
                    pred, loss = logits.argmax(1), criterion(logits, y)
                    test_stream.log(pred=pred, loss=loss)
                    prints["test"][-1].append([fingerprint(batch), fingerprint({"loss": loss, "pred": pred})])
                    correct += int((pred == y).sum())
            echo(f"  epoch {epoch}: train loss {total_loss / len(train_set):.3f}, "
                 f"test accuracy {correct / len(test_set):.1%}")
    return prints

# -- reading it back, with no dataset -----------------------------------------------
@dataclass(frozen=True)
class HardSample:
    """A test sample the model got most wrong, as recorded."""

    index: int  # dataset index in the test set
    label: int
    pred: int
    loss: float
    image: np.ndarray  # raw image, float32 (8, 8)


@dataclass(frozen=True)
class Verification:
    """What the fresh process found: replayed batches vs fingerprints, and the hardest test samples."""

    batches: int
    identical: int
    outputs_identical: int
    augmented: int  # seen train rows of the last epoch that differ from their raw sample
    train_rows: int
    test_epoch: int
    hardest: list[HardSample]

    @property
    def ok(self) -> bool:
        """Whether every replayed batch and every logged output matched."""
        return self.identical == self.outputs_identical == self.batches

    def __str__(self) -> str:
        lines = [
            f"replay: {self.identical}/{self.batches} batches identical to what the training loop saw",
            f"outputs: {self.outputs_identical}/{self.batches} batches of logged outputs identical",
            (
                f"augmentation: {self.augmented:,}/{self.train_rows:,} seen train images (last epoch) differ "
                "from their raw images, recorded before RandomShiftNoise"
            ),
            "",
            f"{len(self.hardest)} test samples with the highest loss (test epoch {self.test_epoch}):",
            "  index  label  pred    loss",
        ]
        lines += [f"  {s.index:5d}  {s.label:5d}  {s.pred:4d}  {s.loss:6.3f}" for s in self.hardest]
        lines += ["", "their raw images, read back from the snapshot:"]
        lines += ["   ".join(row) for row in zip(*(_ascii(s.image) for s in self.hardest))]
        return "\n".join(lines)


def _ascii(image: np.ndarray) -> list[str]:
    shades = " .:-=+*#%@"
    levels = np.clip(image * len(shades), 0, len(shades) - 1).astype(int)
    return ["".join(shades[v] * 2 for v in row) for row in levels]


def verify(path: str, prints: Fingerprints) -> Verification:
    """Replay every recorded batch of the snapshot at ``path`` and compare it with ``prints``.

    Needs nothing but the snapshot: no dataset, no model.

    Parameters
    ----------
    path : str
        The snapshot :func:`train` wrote.
    prints : dict
        What :func:`train` returned (read back from JSON).

    Returns
    -------
    Verification

    Raises
    ------
    SnapstoreError
        ``path`` is not a readable snapshot.
    """
    snap = open_snapshot(path)
    batches = identical = outputs_identical = 0
    for name, epochs in prints.items():
        stream = snap[name]
        for number, expected in enumerate(epochs):
            ep = stream.epoch(number)
            bounds = np.concatenate([[0], np.cumsum(ep.batch_sizes)])
            for j, batch in enumerate(ep.batches()):
                lo, hi = bounds[j], bounds[j + 1]
                outputs = {k: torch.from_numpy(ep.outputs[k][lo:hi]) for k in ep.outputs}
                if j < len(expected):
                    identical += fingerprint(batch) == expected[j][0]
                    outputs_identical += fingerprint(outputs) == expected[j][1]
            batches += max(len(expected), len(ep.batch_sizes))

    train = snap["train"]
    seen, raw = train.epoch(-1).to_numpy(), train.raw.to_numpy()  # raw: in dataset-index order
    raw_images = raw["0"][np.searchsorted(raw["index"], seen["index"])]
    augmented = int((seen["0"] != raw_images).reshape(len(raw_images), -1).any(axis=1).sum())

    test = snap["test"]
    ep = test.epoch(-1)
    loss, pred = ep.outputs["loss"], ep.outputs["pred"]
    hardest = []
    for position in np.argsort(loss, kind="stable")[::-1][:HARDEST]:
        index = int(ep.order[position])
        image, label = test.raw[index]  # the sample as the dataset returned it
        hardest.append(HardSample(index, int(label), int(pred[position]), float(loss[position]), image[0].numpy()))
    return Verification(batches, identical, outputs_identical, augmented, len(seen["index"]), ep.number, hardest)

# -- the whole demo ---------------------------------------------------------
def run(out: str, *, overwrite: bool = False, echo: Echo = logger.info) -> None:
    """Train and record into ``out``, then verify the snapshot in a fresh process.

    The fresh process is ``python -m snapstore _verify``; its report is passed to ``echo``.

    Raises
    ------
    SnapshotExistsError
        Something is at ``out`` and ``overwrite`` is False.
    SnapstoreError
        The verifying process failed, or a replayed batch differs from what the loop saw.
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: threads cost more than they give
    try:
        start = time.perf_counter()
        prints = train(out, overwrite=overwrite, echo=echo)
        echo(f"trained and recorded in {time.perf_counter() - start:.1f} s")
    finally:
        torch.set_num_threads(previous_threads)

    echo("reopening the snapshot in a fresh process with no dataset object ...")
    echo("")
    with tempfile.TemporaryDirectory(prefix="snapstore-demo-") as tmp:
        prints_path = os.path.join(tmp, "fingerprints.json")
        with open(prints_path, "w") as f:
            json.dump(prints, f)
        proc = subprocess.run(
            [sys.executable, "-m", "snapstore", "_verify", out, "--fingerprints", prints_path],
            capture_output=True, text=True, check=False,
        )
    if proc.stdout:
        echo(proc.stdout.rstrip("\n"))
    if proc.returncode != 0:
        raise SnapstoreError(f"the verifying process exited {proc.returncode}: {proc.stderr.strip()}")
