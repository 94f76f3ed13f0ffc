"""How people record and read back a stream of batches today, and snapstore doing the same job.

Every writer takes the same pre-made batches ``(image float32, raw uint8,
label int64, index int64)`` and writes them into ``out`` (a directory);
every reader opens what its writer wrote and offers ``replay`` (all batches
in order) and ``sample(k)`` (row ``k``: the four fields of one sample).
A peer whose library is missing raises ``Unavailable`` with the reason.
"""

from __future__ import annotations

import functools
import io
import os
import tarfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

import snapstore

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
NAMES = ("image", "raw", "label", "index")


class Unavailable(Exception):
    """A peer library is not installed (or does not import here); the message says why."""


def _need(module: str, pip: str) -> Any:
    try:
        return __import__(module, fromlist=["_"])
    except Exception as e:  # noqa: BLE001 - any import failure means "skip, with the reason"
        raise Unavailable(f"{pip} does not import here ({type(e).__name__}: {str(e)[:80]}); "
                          f"pip install '{pip}'") from None


# -- snapstore --------------------------------------------------------------
class _Premade(Dataset):
    """Hands the DataLoader ready batches: ``__getitems__`` returns batch ``indices[0] // size``."""

    def __init__(self, batches: list[Batch]) -> None:
        self.batches, self.size = batches, len(batches[0][0])

    def __len__(self) -> int:
        return sum(len(b[0]) for b in self.batches)

    def __getitems__(self, indices: list[int]) -> Batch:
        return self.batches[indices[0] // self.size]


def _first(batch: Any) -> Any:
    return batch


def write_snapstore(batches: list[Batch], out: str, **options: Any) -> None:
    """snapstore.Recorder around a loader that yields the batches (no raw samples: they are a field here)."""
    loader = DataLoader(_Premade(batches), batch_size=len(batches[0][0]), collate_fn=_first)
    with snapstore.Recorder(os.path.join(out, "run.snap"), **options) as rec:
        for _ in rec.wrap(loader, name="train", raw=None):
            pass


class Reader:
    """Base of the readers: ``replay()``, ``sample(k)``, ``close()``."""

    def close(self) -> None:
        pass


class SnapstoreReader(Reader):
    def __init__(self, out: str) -> None:
        self.epoch = snapstore.open(os.path.join(out, "run.snap"))["train"].epoch(0)

    def replay(self) -> Iterator[Any]:
        return self.epoch.batches()

    def sample(self, k: int) -> Any:
        return self.epoch[k]


# -- NumPy ------------------------------------------------------------------
def write_concat(batches: list[Batch], out: str) -> None:
    """list + np.concatenate + np.save: keeps the epoch in RAM, then writes one .npy per field."""
    lists: list[list[np.ndarray]] = [[] for _ in NAMES]
    for b in batches:
        for f, t in zip(lists, b):
            f.append(t.numpy().copy())  # the loader may reuse its buffers
    for name, parts in zip(NAMES, lists):
        np.save(os.path.join(out, f"{name}.npy"), np.concatenate(parts))


def write_prealloc(batches: list[Batch], out: str) -> None:
    """Preallocated NumPy arrays filled batch by batch, then np.save."""
    n = sum(len(b[0]) for b in batches)
    arrays = [np.empty((n, *t.shape[1:]), dtype=t.numpy().dtype) for t in batches[0]]
    lo = 0
    for b in batches:
        for a, t in zip(arrays, b):
            a[lo : lo + len(t)] = t.numpy()
        lo += len(b[0])
    for name, a in zip(NAMES, arrays):
        np.save(os.path.join(out, f"{name}.npy"), a)


class NpyReader(Reader):
    def __init__(self, out: str, batch: int) -> None:
        self.arrays = [np.load(os.path.join(out, f"{name}.npy"), mmap_mode="r") for name in NAMES]
        self.batch = batch

    def replay(self) -> Iterator[Any]:
        n = len(self.arrays[0])
        for lo in range(0, n, self.batch):
            yield tuple(np.array(a[lo : lo + self.batch]) for a in self.arrays)

    def sample(self, k: int) -> Any:
        return tuple(np.array(a[k]) for a in self.arrays)


# -- torch.save -------------------------------------------------------------
def write_torch(batches: list[Batch], out: str) -> None:
    """torch.save of each batch (a dict of tensors) into its own file."""
    for j, b in enumerate(batches):
        torch.save(dict(zip(NAMES, b)), os.path.join(out, f"batch_{j:06d}.pt"))


class TorchReader(Reader):
    def __init__(self, out: str, batch: int) -> None:
        self.files = sorted(os.path.join(out, f) for f in os.listdir(out) if f.endswith(".pt"))
        self.batch = batch

    def replay(self) -> Iterator[Any]:
        for f in self.files:
            yield torch.load(f)

    def sample(self, k: int) -> Any:
        b = torch.load(self.files[k // self.batch])
        return {name: t[k % self.batch] for name, t in b.items()}


# -- h5py -------------------------------------------------------------------
def write_h5py(batches: list[Batch], out: str, compression: str | None = None) -> None:
    """h5py datasets chunked by batch (``compression`` None or "lzf"), written batch by batch."""
    h5py = _need("h5py", "h5py")
    n, bs = sum(len(b[0]) for b in batches), len(batches[0][0])
    with h5py.File(os.path.join(out, "data.h5"), "w") as f:
        ds = [f.create_dataset(name, shape=(n, *t.shape[1:]), dtype=t.numpy().dtype, chunks=(min(bs, n), *t.shape[1:]),
                               compression=compression) for name, t in zip(NAMES, batches[0])]
        lo = 0
        for b in batches:
            for d, t in zip(ds, b):
                d[lo : lo + len(t)] = t.numpy()
            lo += len(b[0])


class H5Reader(Reader):
    def __init__(self, out: str, batch: int) -> None:
        h5py = _need("h5py", "h5py")
        self.file = h5py.File(os.path.join(out, "data.h5"), "r")
        self.ds = [self.file[name] for name in NAMES]
        self.batch = batch

    def replay(self) -> Iterator[Any]:
        n = len(self.ds[0])
        for lo in range(0, n, self.batch):
            yield tuple(d[lo : lo + self.batch] for d in self.ds)

    def sample(self, k: int) -> Any:
        return tuple(d[k] for d in self.ds)

    def close(self) -> None:
        self.file.close()


# -- WebDataset -------------------------------------------------------------
def write_wds(batches: list[Batch], out: str) -> None:
    """WebDataset TarWriter: one tar member per field per sample (.npy images, .cls/.idx ints)."""
    wds = _need("webdataset", "webdataset")
    with wds.TarWriter(os.path.join(out, "data.tar")) as sink:
        for b in batches:
            img, raw, lab, idx = (t.numpy() for t in b)
            for r in range(len(img)):
                sink.write({"__key__": f"{int(idx[r]):09d}", "image.npy": img[r], "raw.npy": raw[r], "cls": int(lab[r]),
                            "index.cls": int(idx[r])})


@functools.lru_cache(maxsize=2)
def _tar_index(path: str, mtime: float) -> dict[int, list[tarfile.TarInfo]]:
    """Members of each sample (4 a sample, in write order): the index a random-access user builds once."""
    members: dict[int, list[tarfile.TarInfo]] = {}
    with tarfile.open(path) as tf:
        for k, m in enumerate(tf.getmembers()):
            members.setdefault(k // 4, []).append(m)
    return members


class WdsReader(Reader):
    """Replay through ``webdataset.WebDataset`` (decoded, batched); random access through a tar member index."""

    def __init__(self, out: str, batch: int) -> None:
        self.wds = _need("webdataset", "webdataset")
        self.path, self.batch = os.path.join(out, "data.tar"), batch
        self.members = _tar_index(self.path, os.path.getmtime(self.path))
        self.file = open(self.path, "rb")  # noqa: SIM115

    def replay(self) -> Iterator[Any]:
        ds = self.wds.WebDataset(self.path, shardshuffle=False).decode().to_tuple("image.npy", "raw.npy", "cls",
                                                                                  "index.cls")
        yield from ds.batched(self.batch)

    def sample(self, k: int) -> Any:
        out = {}
        for m in self.members[k]:
            self.file.seek(m.offset_data)
            data = self.file.read(m.size)
            out[m.name] = np.load(io.BytesIO(data)) if m.name.endswith(".npy") else int(data)
        return out

    def close(self) -> None:
        self.file.close()


# -- MosaicML streaming -----------------------------------------------------
def write_mds(batches: list[Batch], out: str) -> None:
    """MosaicML MDSWriter: one sample dict per row, ndarray columns, no compression."""
    streaming = _need("streaming", "mosaicml-streaming")
    img, raw = batches[0][0].numpy(), batches[0][1].numpy()
    columns = {"image": f"ndarray:float32:{','.join(map(str, img.shape[1:]))}",
               "raw": f"ndarray:uint8:{','.join(map(str, raw.shape[1:]))}", "label": "int64", "index": "int64"}
    with streaming.MDSWriter(out=os.path.join(out, "mds"), columns=columns, size_limit=1 << 27) as sink:
        for b in batches:
            img, raw, lab, idx = (t.numpy() for t in b)
            for r in range(len(img)):
                sink.write({"image": img[r], "raw": raw[r], "label": int(lab[r]), "index": int(idx[r])})


class MdsReader(Reader):
    def __init__(self, out: str, batch: int) -> None:
        streaming = _need("streaming", "mosaicml-streaming")
        self.ds = streaming.StreamingDataset(local=os.path.join(out, "mds"), shuffle=False, batch_size=batch)
        self.batch = batch

    def replay(self) -> Iterator[Any]:
        n = len(self.ds)
        for lo in range(0, n, self.batch):
            yield [self.ds.get_item(k) for k in range(lo, min(n, lo + self.batch))]

    def sample(self, k: int) -> Any:
        return self.ds.get_item(k)


# -- the ceiling -------------------------------------------------------------
def encode_only(batches: list[Batch], out: str) -> None:
    """No writer with snapstore's default codecs can beat this: each field of each batch cut into
    blocks of at most 2 MiB, each Blosc-LZ4 encoded (snapstore's settings) and CRC32C checksummed
    on a thread per CPU (Blosc releases the GIL); nothing is copied or stored. ``out`` stays empty."""
    import google_crc32c
    from numcodecs import Blosc

    def encode(block: np.ndarray) -> int:
        shuffle = Blosc.SHUFFLE if block.dtype.kind in "iu" and block.dtype.itemsize > 1 else Blosc.NOSHUFFLE
        data = Blosc(cname="lz4", clevel=5, shuffle=shuffle).encode(block)
        return google_crc32c.value(data)

    blocks = []  # views of the batches, never a copy: allocating fresh memory after the peers have
    for b in batches:  # filled the page cache with dirty data measured the kernel's reclaim, not the codec
        for t in b:
            a = t.numpy()
            n = max(1, 2**21 // (a[0].nbytes or 1))
            blocks += [a[lo : lo + n] for lo in range(0, len(a), n)]
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(encode, blocks))


Writer = Callable[[list[Batch], str], None]

#: name -> (writer, reader factory (out, batch) -> reader or None when it has no reader of its own)
PEERS: dict[str, tuple[Writer, Callable[[str, int], Any] | None]] = {
    "list+concatenate+np.save": (write_concat, NpyReader),
    "preallocated+np.save": (write_prealloc, NpyReader),
    "torch.save per batch": (write_torch, TorchReader),
    "h5py chunked, none": (write_h5py, H5Reader),
    "h5py chunked, lzf": (lambda b, o: write_h5py(b, o, "lzf"), H5Reader),
    "WebDataset TarWriter": (write_wds, WdsReader),
    "MosaicML MDSWriter": (write_mds, MdsReader),
}
