"""The committed snapshots of every format version still read, value for value; version 2 verifies what it reads."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import snapstore
from tests.scenarios.data.make_golden import Golden

DATA = Path(__file__).parent / "data"
VERSIONS = [1, 2, 3]
ORDERS = [[3, 4, 0, 5, 7, 9, 11, 6, 8, 1, 10, 2], [11, 8, 10, 5, 7, 1, 6, 2, 0, 4, 9, 3]]


def image(i: int) -> torch.Tensor:
    return torch.from_numpy((np.arange(6, dtype=np.uint8).reshape(2, 3) + i).astype(np.uint8)).float() / 255


def test_the_newest_golden_snapshot_is_of_the_current_format_version():
    assert VERSIONS[-1] == snapstore.FORMAT_VERSION
    assert sorted(p.name for p in DATA.glob("golden-v*.snap")) == [f"golden-v{v}.snap" for v in VERSIONS]


@pytest.mark.parametrize("version", VERSIONS)
def test_golden_snapshot_reads(version):
    snap = snapstore.open(DATA / f"golden-v{version}.snap")
    assert snap.manifest.format_version == version
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


def test_golden_v2_refuses_order_chunks_swapped_between_epochs(tmp_path):
    """What version 2 adds: a chunk in another epoch's place is refused (version 1 reads it silently)."""
    for version, refused in ((1, False), (2, True)):
        copy = shutil.copytree(DATA / f"golden-v{version}.snap", tmp_path / f"v{version}.snap")
        a, b = (next(f for f in (copy / f"train/epochs/{e}/order").rglob("*") if f.is_file() and f.name != "zarr.json")
                for e in (0, 1))
        data = a.read_bytes()
        a.write_bytes(b.read_bytes())
        b.write_bytes(data)
        stream = snapstore.open(copy)["train"]
        if refused:
            with pytest.raises(snapstore.CorruptionError, match="chunk 0 .*order.* is not the chunk its commit record"):
                stream.epoch(0).order
        else:
            assert stream.epoch(0).order.tolist() == ORDERS[1]


def test_a_version_1_snapshot_takes_appended_epochs(tmp_path):
    """mode='a' on a version-1 snapshot: its epochs are listed as unsealed, the new one is sealed and verified."""
    copy = shutil.copytree(DATA / "golden-v1.snap", tmp_path / "v1.snap")
    with snapstore.Recorder(copy, mode="a") as rec:
        train = rec.wrap(torch.utils.data.DataLoader(Golden(), batch_size=5), name="train")
        for _ in train:
            pass
    stream = snapstore.open(copy)["train"]
    assert stream.epochs == [0, 1, 2] and stream.epoch(2).order.tolist() == list(range(12))
    assert [stream.epoch(e).order.tolist() for e in (0, 1)] == ORDERS


def test_golden_v2_refuses_an_inverse_index_whose_metadata_is_another_arrays(tmp_path):
    """where/offsets' zarr.json replaced by a hash array's (uint64, shorter): its length is the record's."""
    copy = shutil.copytree(DATA / "golden-v2.snap", tmp_path / "v2.snap")
    epoch = copy / "train/epochs/1"
    (epoch / "where/offsets/zarr.json").write_bytes((epoch / "hashes/seen/label/zarr.json").read_bytes())
    with pytest.raises(snapstore.CorruptionError, match="where/offsets"):
        snapstore.open(copy)["train"].epoch(1).sample(index=11)
