"""The committed format-version-1 snapshot still reads, value for value."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import snapstore

GOLDEN = Path(__file__).parent / "data" / "golden-v1.snap"
ORDERS = [[3, 4, 0, 5, 7, 9, 11, 6, 8, 1, 10, 2], [11, 8, 10, 5, 7, 1, 6, 2, 0, 4, 9, 3]]


def image(i: int) -> torch.Tensor:
    return torch.from_numpy((np.arange(6, dtype=np.uint8).reshape(2, 3) + i).astype(np.uint8)).float() / 255


def test_golden_snapshot_reads():
    snap = snapstore.open(GOLDEN)
    assert snap.manifest.format_version == 1 == snapstore.FORMAT_VERSION
    stream = snap["train"]
    assert stream.epochs == [0, 1]
    assert stream.fields["meta/path"] == snapstore.FieldInfo("tuple", "str", ())  # default_collate keeps zip()'s tuple
    assert stream.fields["image"] == snapstore.FieldInfo("tensor", "float32", (2, 3))
    for e, order in enumerate(ORDERS):
        ep = stream.epoch(e)
        assert ep.complete and ep.order.tolist() == order and ep.batch_sizes.tolist() == [5, 5, 2]
        batch = ep.batch(1)
        ids = order[5:10]
        assert torch.equal(batch["image"], torch.stack([image(i) for i in ids]))
        assert batch["label"].tolist() == [i % 3 for i in ids]
        assert type(batch["meta"]).__name__ == "Meta"
        assert batch["meta"].path == tuple(f"img/{i}.png" for i in ids)
        np.testing.assert_allclose(ep.outputs["score"], [image(i).double().sum().item() for i in order], rtol=1e-6)
    raw = stream.raw[4]
    assert torch.equal(raw["image"], image(4)) and raw["label"] == 1 and raw["meta"] == (4, "img/4.png")
