"""Recording a loader the way the tests do, and comparing what was recorded with what the loop saw."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import snapstore

from .datasets import Indexed, Resumable, Sequences


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


def run(make_loader: Callable[[], DataLoader], path: Any, *, epochs: int = 2, raw: Any = "auto",
        set_epoch: bool = False, compare_plain: bool = True) -> tuple[snapstore.Stream, list[list[Any]]]:
    """Iterate bare and recorded from the same seeds; return the stream and the recorded batches.

    Asserts that the recorded loader yields what the bare one does, batch for
    batch, and that the snapshot replays those batches bitwise.
    """
    def iterate(loader: Any) -> list[list[Any]]:
        out = []
        for e in range(epochs):
            if set_epoch:
                loader.sampler.set_epoch(e)
            out.append([snapshot_batch(b) for b in loader])
        return out

    torch.manual_seed(0)
    plain = iterate(make_loader()) if compare_plain else None
    torch.manual_seed(0)
    loader = make_loader()
    with snapstore.Recorder(path) as rec:
        stream = rec.wrap(loader, name="train", raw=raw)
        try:
            expected_len = len(loader)
        except TypeError as e:  # a batch_sampler without __len__: the same error
            with pytest.raises(TypeError, match=str(e)):
                len(stream)
        else:
            assert len(stream) == expected_len
        seen = iterate(stream)
    if plain is not None:
        for e in range(epochs):
            assert len(plain[e]) == len(seen[e])
            for a, b in zip(plain[e], seen[e]):
                same(a, b)
    replay = snapstore.open(path)["train"]
    assert replay.epochs == list(range(epochs))
    for e in range(epochs):
        ep = replay.epoch(e)
        assert ep.complete
        assert len(ep.batch_sizes) == len(seen[e])
        for j, (a, b) in enumerate(zip(seen[e], ep.batches())):
            same(a, b, f"epoch {e} batch {j}")
    return replay, seen


def crash_then_resume(path: Path, resume_from_batch: int) -> snapstore.Epoch:
    """Epoch 0 complete; epoch 1 cut after 5 batches; the job resumes epoch 1 from a checkpoint."""
    with snapstore.Recorder(path) as rec:
        s = rec.wrap(DataLoader(Indexed(40), batch_size=4, sampler=Resumable(40, seed=0)), name="train")
        list(s)
    with snapstore.Recorder(path, mode="a") as rec:
        s = rec.wrap(DataLoader(Indexed(40), batch_size=4, sampler=Resumable(40, seed=1)), name="train")
        for j, _ in enumerate(s):
            if j == 4:
                break  # the crash: 5 batches recorded
    with snapstore.Recorder(path, mode="a") as rec:
        loader = DataLoader(Indexed(40), batch_size=4, sampler=Resumable(40, seed=1, start=4 * resume_from_batch))
        s = rec.wrap(loader, name="train", resume_epoch=True)
        list(s)  # the rest of epoch 1
    return snapstore.open(path)["train"].epoch(1)


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
        assert a.dtype == b.dtype and a.shape == b.shape, \
            f"{path}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
        bytes_a, bytes_b = (t.reshape(-1).contiguous().view(torch.uint8) for t in (a, b))
        assert bytes_a.equal(bytes_b), f"{path}: values differ"
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


def capture_order(raw: snapstore.RawSamples) -> np.ndarray:
    """Dataset index of each stored raw row, in the order the loader first fetched them."""
    return np.concatenate([part.index for part in raw.row_plan().segments])


def seen_rows(ep: snapstore.Epoch) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    """The epoch's batches as the reader stitches them, batch by batch (not through the exports)."""
    batches = [ep.batch(j) for j in range(len(ep.batch_sizes))]
    return torch.cat([b[0] for b in batches]).numpy(), torch.cat([b[1] for b in batches]).numpy(), batches


# -- the export tests' recordings (fixtures in tests/conftest.py) --------------------------------------

#: Rows, batch size and epochs of ``record_loop``: rows of 3x32x32 float32 are 12 KiB, so a chunk
#: holds ``CHUNK_ROWS`` rows and an epoch of N rows spans 8 chunks; batches of 24 straddle chunks.
N, BATCH, EPOCHS = 1000, 24, 2
CHUNK_ROWS = 128  # 2 MiB / 12 KiB rows, see storage.chunks.chunk_rows


class Seen:
    """What the training loop saw, per epoch: a preallocated NumPy copy and the batches themselves."""

    def __init__(self) -> None:
        self.x: dict[int, np.ndarray] = {}
        self.y: dict[int, np.ndarray] = {}
        self.batches: dict[int, list] = {}


def record_loop(path: Path, x: torch.Tensor, y: torch.Tensor) -> Seen:
    """Record ``EPOCHS`` shuffled epochs of ``(x, y)`` through a two-worker DataLoader into ``path``,
    keeping what the loop saw (a preallocated NumPy loop, and the batches)."""
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True, num_workers=2,
                        generator=torch.Generator().manual_seed(1))
    seen = Seen()
    with snapstore.Recorder(path) as rec:
        train = rec.wrap(loader, name="train")
        for e in range(EPOCHS):
            xs = np.empty((N, 3, 32, 32), dtype=np.float32)  # the preallocated NumPy loop
            ys = np.empty(N, dtype=np.int64)
            pos = 0
            seen.batches[e] = []
            for xb, yb in train:
                xs[pos : pos + len(xb)] = xb.numpy()
                ys[pos : pos + len(yb)] = yb.numpy()
                pos += len(xb)
                seen.batches[e].append([xb.clone(), yb.clone()])
            assert pos == N
            seen.x[e], seen.y[e] = xs, ys
    return seen


def record_sequences(path: Path, collate: Callable) -> tuple[snapstore.Stream, list[Any]]:
    """One epoch of ``Sequences`` through a two-worker DataLoader with ``collate``: the stream and the batches."""
    loader = DataLoader(Sequences(), batch_size=16, shuffle=True, num_workers=2, collate_fn=collate,
                        generator=torch.Generator().manual_seed(0))
    with snapstore.record(loader, path) as train:
        batches = list(train)
    return snapstore.open(path)["train"], batches
