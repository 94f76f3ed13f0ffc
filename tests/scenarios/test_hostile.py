"""Hostile snapshots: reading and auditing them ends, in bounded memory, with a ``SnapstoreError`` naming the problem.

Each case damages a copy of one small real recording the way an adversary
would (a huge shape or ``dataset_len``, a chunk or ``zarr.json`` that is a
symlink to ``/dev/zero``, a named pipe or a symlink out of the snapshot, a
chunk declaring a huge decoded size, a huge or deeply nested ``zarr.json``).
A child process (``tests/support/bounded.py``) then reads everything and
audits it with its address space limited to what it held after warming up
plus 100 MB; a hang fails the test through a generous wall-clock limit on
the child (a liveness bound, not a timing assertion). The figures the child
measures (seconds, peak extra resident memory) are in docs/SECURITY.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google_crc32c
import numcodecs
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import snapstore
from tests.support.datasets import Records, brightened
from tests.support.snapshots import edit_json

#: Seconds a child may take to read and audit a hostile snapshot before it counts as hung.
LIVENESS_S = 60

ROOT = Path(__file__).resolve().parents[2]

IMAGE = "train/epochs/0/seen/image"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two epochs of ``Records(12)`` in shuffled batches of 5 (augmented), with raw samples and a logged ``score``."""
    path = tmp_path_factory.mktemp("hostile") / "run.snap"
    torch.manual_seed(0)
    with snapstore.Recorder(path) as rec:
        train = rec.wrap(DataLoader(Records(12), batch_size=5, shuffle=True, collate_fn=brightened), name="train")
        for _ in range(2):
            for batch in train:
                train.log(score=batch["image"].sum((1, 2)).double())
    return path


def bounded(pristine: Path, hostile: Path) -> dict[str, Any]:
    """What ``tests.support.bounded`` reports for reading and auditing ``hostile`` under its memory limit."""
    env = {**os.environ, "MALLOC_ARENA_MAX": "2", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "tests.support.bounded", str(pristine), str(hostile)],
                          capture_output=True, text=True, timeout=LIVENESS_S, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.splitlines()[-1])


def _shape(rows: int, row_shape: list[int], chunk_rows: int) -> Callable[[Path, Path], None]:
    def damage(snap: Path, outside: Path) -> None:
        def change(doc: dict[str, Any]) -> None:
            doc["shape"] = [rows, *row_shape]
            doc["chunk_grid"]["configuration"]["chunk_shape"] = [chunk_rows, *row_shape]
            doc["dimension_names"] = ["row", *(f"dim_{i}" for i in range(1, len(row_shape) + 1))]
        edit_json(snap / IMAGE / "zarr.json", change)
    return damage


def _dataset_len(snap: Path, outside: Path) -> None:
    edit_json(snap / "train" / "zarr.json", lambda doc: doc["attributes"]["stream"].update(dataset_len=2**62))


def _symlink(target: str | Path, where: str) -> Callable[[Path, Path], None]:
    def damage(snap: Path, outside: Path) -> None:
        (snap / where).unlink()
        (snap / where).symlink_to(target)
    return damage


def _fifo(where: str) -> Callable[[Path, Path], None]:
    def damage(snap: Path, outside: Path) -> None:
        (snap / where).unlink()
        os.mkfifo(snap / where)
    return damage


def _escaping_file(snap: Path, outside: Path) -> None:
    """A chunk replaced by a symlink to an identical copy outside the snapshot: followed, it reads correctly."""
    chunk = snap / IMAGE / "c.0.0.0"
    shutil.copy(chunk, outside / "c.0.0.0")
    chunk.unlink()
    chunk.symlink_to(outside / "c.0.0.0")


def _escaping_folder(snap: Path, outside: Path) -> None:
    """Epoch 1's folder replaced by a symlink to an identical copy outside the snapshot."""
    epoch = snap / "train" / "epochs" / "1"
    shutil.copytree(epoch, outside / "1")
    shutil.rmtree(epoch)
    epoch.symlink_to(outside / "1")


def _bomb(snap: Path, outside: Path) -> None:
    """The first chunk of the image field replaced by a valid Blosc-LZ4 chunk (its CRC32C right, no larger
    than a chunk of the field can be) that decodes to zeros 200 times the size of a whole chunk."""
    meta = json.loads((snap / IMAGE / "zarr.json").read_text())
    chunk = int(np.prod(meta["chunk_grid"]["configuration"]["chunk_shape"])) * np.dtype(meta["data_type"]).itemsize
    zeros = np.zeros(200 * chunk, np.uint8)  # calloc'd: the zero page, no resident memory
    data = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.NOSHUFFLE).encode(zeros)
    crc = google_crc32c.value(data).to_bytes(4, "little")
    (snap / IMAGE / "c.0.0.0").write_bytes(bytes(data) + crc)


def _deep_json(snap: Path, outside: Path) -> None:
    """Epoch 1's commit record holding a list nested 100,000 deep (valid JSON)."""
    meta = snap / "train" / "epochs" / "1" / "zarr.json"
    text = meta.read_text()
    deep = "[" * 100_000 + "]" * 100_000
    meta.write_text(text.replace('"ragged": []', f'"ragged": {deep}', 1))


def _huge_json(snap: Path, outside: Path) -> None:
    """Epoch 1's ``zarr.json`` grown to 1 GiB (a sparse file: an open string, then zeros)."""
    meta = snap / "train" / "epochs" / "1" / "zarr.json"
    with open(meta, "wb") as f:
        f.write(b'{"attributes": {"x": "')
        f.truncate(1 << 30)


@dataclass(frozen=True)
class Case:
    damage: Callable[[Path, Path], None]
    names: tuple[str, ...]  # what the read error and the audit's findings must mention


CASES = {
    "huge shape": Case(_shape(2**40, [2048], 65536), ("seen/image", "2048")),
    "huge chunks": Case(_shape(2**40, [2, 3], 2**40), ("seen/image", "chunk")),
    "huge dataset_len": Case(_dataset_len, ("dataset_len",)),
    "chunk is /dev/zero": Case(_symlink("/dev/zero", f"{IMAGE}/c.0.0.0"), ("c.0.0.0", "/dev/zero")),
    "zarr.json is /dev/zero": Case(_symlink("/dev/zero", f"{IMAGE}/zarr.json"), ("seen/image/zarr.json", "/dev/zero")),
    "chunk is a FIFO": Case(_fifo(f"{IMAGE}/c.0.0.0"), ("c.0.0.0", "not a regular file")),
    "zarr.json is a FIFO": Case(_fifo("train/epochs/1/zarr.json"), ("epochs/1/zarr.json", "not a regular file")),
    "chunk links outside": Case(_escaping_file, ("c.0.0.0", "outside the snapshot")),
    "folder links outside": Case(_escaping_folder, ("epochs/1", "outside the snapshot")),
    "chunk declares 200 chunks": Case(_bomb, ("seen/image", "declares")),
    "deeply nested zarr.json": Case(_deep_json, ("epochs/1/zarr.json", "nests")),
    "1 GiB zarr.json": Case(_huge_json, ("epochs/1/zarr.json", "bytes")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_snapshot_ends_in_a_snapstore_error_within_bounds(case: str, pristine: Path, tmp_path: Path) -> None:
    snap, outside = tmp_path / "run.snap", tmp_path / "outside"
    shutil.copytree(pristine, snap)
    outside.mkdir()
    CASES[case].damage(snap, outside)
    result = bounded(pristine, snap)
    print(case, json.dumps(result))
    read, audit = result["read"], result["audit"]
    assert read["ended"] not in ("ok", "findings"), read
    assert issubclass(getattr(snapstore, read["ended"]), snapstore.SnapstoreError)
    assert audit["ended"] != "ok", audit
    for name in CASES[case].names:
        assert name in read["message"], (name, read["message"])
        assert name in audit["message"], (name, audit["message"])
