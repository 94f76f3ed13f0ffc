"""``snapstore.recording.sinks``, the writer thread's side: per-row content hashes stored next to the rows,
commits that cover whole batches, a field that turns ragged in a later epoch."""

from __future__ import annotations

import json

import numpy as np
import torch
import xxhash
import zarr
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset

import snapstore
from snapstore.core.hashing import row_hashes
from tests.support.datasets import Indexed, RandomShiftNoise, Scalars, digits
from tests.support.recording import record, same


def test_recorded_hashes_match_the_data(tmp_path):
    loader = DataLoader(digits(n=200, transform=RandomShiftNoise()), batch_size=32, shuffle=True, num_workers=2)
    snap = record(tmp_path / "s.snap", loader, 2, log=lambda b: {"loss": b[0].mean((1, 2, 3)), "pred": b[1] % 3})
    stream = snap["train"]
    for ep in stream:
        data = ep.to_numpy()
        for f in ("0", "1"):
            assert np.array_equal(ep.hashes(f), row_hashes(data[f]))
        for name in ("loss", "pred"):
            assert np.array_equal(ep.output_hashes(name), row_hashes(ep.outputs[name]))
    raw = stream.raw.to_numpy()
    for f in ("0", "1"):
        assert np.array_equal(stream.raw.hashes(f), row_hashes(raw[f]))
    # the arrays are on disk, next to the data
    assert (tmp_path / "s.snap/train/epochs/1/hashes/seen/0/zarr.json").exists()
    assert (tmp_path / "s.snap/train/epochs/1/hashes/outputs/loss/zarr.json").exists()
    assert (tmp_path / "s.snap/train/raw/hashes/1/zarr.json").exists()


def test_strings_are_hashed_in_the_writer(tmp_path):
    snap = record(tmp_path / "s.snap", DataLoader(Scalars(30), batch_size=8), 1)
    ep = snap["train"].epoch(0)
    assert ep.hashes("name").tolist() == [xxhash.xxh3_64_intdigest(f"item-{i:03d}".encode()) for i in ep.order]


def test_commits_cover_whole_batches_when_batches_go_over_in_slices(snap_path, monkeypatch):
    monkeypatch.setattr(snapstore.config, "HAND_OFF_BYTES", 450)
    monkeypatch.setattr(snapstore.config, "DEFAULT_FLUSH_INTERVAL", 0.0)  # a commit after every slice
    log = snap_path.with_suffix(".commits")  # written by the writer process, which the patch is forked into
    real_set = zarr.storage.LocalStore.set

    async def watch(self, key, value):
        if key == "train/epochs/0/zarr.json":
            manifest = json.loads(value.to_bytes())["attributes"].get("epoch")
            if manifest is not None:
                with open(log, "a") as f:
                    f.write(f"{manifest['rows']} {manifest['batches']}\n")
        await real_set(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", watch)
    with snapstore.record(DataLoader(Indexed(23), batch_size=5), snap_path) as stream:
        for _ in stream:
            pass
    commits = [tuple(map(int, line.split())) for line in log.read_text().splitlines()]
    assert len(commits) > 10
    assert all(rows == min(23, 5 * batches) for rows, batches in commits), commits
    assert commits[-1] == (23, 5)


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
