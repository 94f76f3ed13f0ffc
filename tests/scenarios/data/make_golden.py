"""Writes tests/scenarios/data/golden-v<FORMAT_VERSION>.snap: a small snapshot of the current format version.

Run once per format version (``python tests/scenarios/data/make_golden.py``)
and commit the result; ``tests/scenarios/test_golden.py`` reads it so a format
change is never silent. Every value is a function of the dataset index, so the
test can check it without this script.
"""

from __future__ import annotations

import collections
import shutil
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

import snapstore

Meta = collections.namedtuple("Meta", ["id", "path"])
OUT = Path(__file__).with_name(f"golden-v{snapstore.FORMAT_VERSION}.snap")


class Golden(Dataset):
    def __len__(self) -> int:
        return 12

    def __getitem__(self, i: int):
        image = (np.arange(6, dtype=np.uint8).reshape(2, 3) + i).astype(np.uint8)
        return {"image": torch.from_numpy(image).float() / 255, "label": i % 3, "meta": Meta(i, f"img/{i}.png")}


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    sampler = RandomSampler(range(12), generator=torch.Generator().manual_seed(7))
    with snapstore.Recorder(OUT) as rec:
        train = rec.wrap(DataLoader(Golden(), batch_size=5, sampler=sampler), name="train")
        for _ in range(2):
            for batch in train:
                train.log(score=batch["image"].sum((1, 2)).double())
    print(snapstore.open(OUT).info())


if __name__ == "__main__":
    main()
