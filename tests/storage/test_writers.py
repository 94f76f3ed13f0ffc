"""``storage.writers``: ``ChunkWriter`` stores each chunk exactly as zarr's own ``Array.__setitem__``
would (and ``storage.read_chunk`` reads it back), ``RowSink`` stages rows into whole chunks, ragged
fields are stored as values, offsets and shapes."""

from __future__ import annotations

import ctypes
import io
import mmap
import os
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import torch
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch.utils.data import DataLoader

import snapstore
from benchmarks.workloads import photo_crops  # scikit-learn's photographs, cropped as the benchmarks do
from snapstore import storage
from snapstore.core.manifest import FieldInfo
from tests.support.datasets import Sentences, pad_with_lengths


def tmp_path_of(array):
    return Path(array.store.root) / array.path


DTYPES = ["uint8", "int16", "int64", "float32", "float64", "bool", "complex64"]


@settings(max_examples=40, deadline=None)
@given(
    dtype=st.sampled_from(DTYPES),
    row_shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=5),
    chunk=st.integers(1, 9),
    compressor=st.sampled_from(storage.COMPRESSORS),
    data=st.data(),
)
def test_write_chunk_stores_the_bytes_zarr_stores(tmp_path_factory, dtype, row_shape, chunk, compressor, data):
    root = zarr.open_group(zarr.storage.LocalStore(tmp_path_factory.mktemp("chunks")), mode="w", zarr_format=3)
    info = FieldInfo("ndarray", dtype, tuple(row_shape))
    ours = storage.create_rows_array(root, "ours", info, 3 * chunk, compressor, chunk=chunk)
    zarrs = storage.create_rows_array(root, "zarrs", info, 3 * chunk, compressor, chunk=chunk)
    block = data.draw(hnp.arrays(np.dtype(dtype), (chunk, *row_shape)))
    writer = storage.ChunkWriter(compressor)
    writer.write(ours, 1, block.copy())
    writer.wait()
    writer.close()
    zarrs[chunk : 2 * chunk] = block
    key = ours.metadata.encode_chunk_key((1,) + (0,) * len(row_shape))
    assert (tmp_path_of(ours) / key).read_bytes() == (tmp_path_of(zarrs) / key).read_bytes()
    np.testing.assert_array_equal(zarr.open_array(root.store, path="ours", mode="r")[chunk : 2 * chunk], block)
    np.testing.assert_array_equal(storage.read_chunk(ours, 1), block)


def test_a_chunk_written_again_stores_its_last_version(tmp_path):
    # The first version (random float64, zstd) encodes far slower than the second (zeros): were
    # the two writes of one key not ordered, the first would often land last.
    root = zarr.open_group(zarr.storage.LocalStore(tmp_path), mode="w", zarr_format=3)
    array = storage.create_rows_array(root, "a", FieldInfo("ndarray", "float64", (1024,)), 64, "zstd", chunk=32)
    writer = storage.ChunkWriter("zstd")
    noise = np.random.default_rng(0).random((32, 1024))
    for c in range(2):
        for _ in range(10):
            writer.write(array, c, noise.copy())
            writer.write(array, c, np.zeros_like(noise))
    writer.wait()
    writer.close()
    assert not array[:].any()


def test_chunk_buffers_are_recycled_once_encoded(tmp_path):
    root = zarr.open_group(zarr.storage.LocalStore(tmp_path), mode="w", zarr_format=3)
    array = storage.create_rows_array(root, "a", FieldInfo("ndarray", "int64", (4096,)), 8, "lz4", chunk=4)
    writer = storage.ChunkWriter("lz4")
    block = writer.buffers.take((4, 4096), np.dtype("int64"))
    block[...] = 7
    writer.write(array, 1, block)
    writer.wait()
    assert writer.buffers.take((4, 4096), np.dtype("int64")) is block  # handed back only after its bytes were encoded
    assert writer.buffers.take((4, 4096), np.dtype("int64")) is not block
    writer.close()
    assert (array[4:8] == 7).all()


@settings(max_examples=40, deadline=None)
@given(
    dtype=st.sampled_from(["float32", "int64"]),
    puts=st.lists(st.tuples(st.one_of(st.just(0), st.integers(0, 20)), st.integers(1, 40), st.booleans()),
                  min_size=1, max_size=12),
    resume=st.integers(0, 1),
    contiguous=st.booleans(),
)
def test_row_sink_stores_rows_and_the_fill_value_in_the_gaps(tmp_path_factory, dtype, puts, resume, contiguous):
    # Rows of 4 KiB, 16 a chunk: the staging buffers are large enough to be recycled, so a row
    # left unfilled would show a recycled buffer's old rows (every put writes 1 + its position).
    # Contiguous rows holding a whole chunk are stored from where they are (lent, as the writer process's
    # ring is): once ``release`` returns, every block of rows handed over so far is overwritten, as the
    # ring's rows are by later batches, and what is stored must not change.
    root = zarr.open_group(zarr.storage.LocalStore(tmp_path_factory.mktemp("sink")), mode="w", zarr_format=3)
    info = FieldInfo("ndarray", dtype, (1024 // np.dtype(dtype).itemsize * 4,))
    array = storage.create_rows_array(root, "a", info, 64, "lz4", chunk=16)
    fill = array.fill_value
    model = np.full(array.shape, fill, dtype=array.dtype)
    writer = storage.ChunkWriter("lz4")
    sink, pos = storage.RowSink(array, writer), 0
    handed: list[np.ndarray] = []
    for k, (gap, n, flush) in enumerate(puts):
        pos += gap
        values = np.arange(pos, pos + n, dtype=array.dtype)[:, None] + 1
        rows = np.broadcast_to(values, (n, *info.shape))
        if contiguous:
            rows = np.ascontiguousarray(rows)
            handed.append(rows)
        sink.put(pos, rows)
        writer.release()
        for block in handed:
            block[...] = -7
        model = np.concatenate([model, np.full_like(model, fill)]) if pos + n > len(model) else model
        model[pos : pos + n] = values  # not rows: a lent block is scribbled on above
        pos += n
        if flush:
            sink.flush()
        if resume and k == len(puts) // 2:  # a resumed recording continues a committed, partly written chunk
            sink.flush()
            writer.wait()
            sink = storage.RowSink(array, writer, resume_at=pos)
    sink.flush()
    writer.wait()
    writer.close()
    np.testing.assert_array_equal(array[:pos], model[:pos])


def test_write_chunk_strings(tmp_path):
    root = zarr.open_group(zarr.storage.LocalStore(tmp_path), mode="w", zarr_format=3)
    info = FieldInfo("ndarray", "str", ())
    array = storage.create_rows_array(root, "s", info, 4, "lz4", chunk=2)
    writer = storage.ChunkWriter("lz4")
    writer.write(array, 1, np.array(["ünïcode", ""], dtype=np.dtypes.StringDType()))
    writer.wait()
    writer.close()
    assert array[2:4].tolist() == ["ünïcode", ""]
    assert storage.read_chunk(array, 1).tolist() == ["ünïcode", ""]


def test_a_failed_store_write_is_raised_by_wait(tmp_path):
    root = zarr.open_group(zarr.storage.LocalStore(tmp_path / "s"), mode="w", zarr_format=3)
    array = storage.create_rows_array(root, "a", FieldInfo("ndarray", "int64", ()), 4, "lz4", chunk=2)
    (tmp_path / "s" / "a" / "c.0").mkdir()  # a folder where the chunk file goes
    writer = storage.ChunkWriter("lz4")
    writer.write(array, 0, np.arange(2))
    with pytest.raises(OSError):
        writer.wait()
    writer.close()


def test_ragged_layout_is_values_offsets_shapes(snap_path):
    with snapstore.record(DataLoader(Sentences(), batch_size=8, collate_fn=pad_with_lengths), snap_path) as s:
        list(s)
    import zarr

    group = zarr.open_group(snap_path / "train/epochs/0/ragged/0", mode="r")
    lengths = [len(Sentences()[i]) for i in range(64)]
    padded = [max(lengths[j:j + 8]) for j in range(0, 64, 8) for _ in range(8)]
    offsets, shapes = group["offsets"][:64], group["shapes"][:64]
    np.testing.assert_array_equal(shapes[:, 0], padded)
    np.testing.assert_array_equal(offsets, np.concatenate([[0], np.cumsum(padded)[:-1]]))
    values = group["values"][: sum(padded)]
    np.testing.assert_array_equal(values[offsets[5] : offsets[5] + lengths[5]], Sentences()[5].numpy())


def test_sync_returns_after_each_chunk_file_and_its_folders_are_fsynced_once(tmp_path, monkeypatch):
    # The job that stores a chunk fsyncs it; sync() waits for those jobs and fsyncs the arrays' zarr.json and
    # folders, not each chunk file again (that second pass cost ~2 ms a file in the loop's epoch-end wait).
    from snapstore.storage import writers

    synced: list[Path] = []
    fsync = writers._fsync
    monkeypatch.setattr(writers, "_fsync", lambda path, **kw: (synced.append(Path(path)), fsync(path, **kw)))
    root = zarr.open_group(zarr.storage.LocalStore(tmp_path), mode="w", zarr_format=3)
    array = storage.create_rows_array(root, "a", FieldInfo("ndarray", "float32", (8,)), 64, "lz4", chunk=16)
    writer = storage.ChunkWriter("lz4")
    for c in range(3):
        writer.write(array, c, np.full((16, 8), c, np.float32))
    writer.sync()
    writer.close()
    chunks = sorted(p for p in tmp_path_of(array).iterdir() if p.name.startswith("c."))
    assert len(chunks) == 3 and sorted(p for p in synced if p.name.startswith("c.")) == chunks
    assert {tmp_path_of(array) / "zarr.json", tmp_path_of(array), tmp_path} <= set(synced)


def _resident_pages(path: Path) -> int:
    """Pages of file ``path`` in the page cache: ``mincore`` of a private mapping of it (which reads nothing)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)
    try:
        view = (ctypes.c_char * size).from_buffer(mm)
        pages = (ctypes.c_ubyte * -(-size // mmap.PAGESIZE))()
        status = ctypes.CDLL(None, use_errno=True).mincore(ctypes.c_void_p(ctypes.addressof(view)),
                                                           ctypes.c_size_t(size), pages)
        del view
        if status != 0:
            raise OSError(ctypes.get_errno(), "mincore failed")
        return sum(p & 1 for p in pages)
    finally:
        mm.close()


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="posix_fadvise is Linux's")
def test_a_chunk_file_leaves_the_page_cache_once_it_is_durable(tmp_path):
    # Nothing reads a chunk file while recording: a page cache that kept every byte recorded took fresh memory
    # for each (2.6-2.9 s a GB on a VM that backs memory on first touch: issue 17)
    probe = tmp_path / "probe"
    probe.write_bytes(os.urandom(1 << 20))
    assert _resident_pages(probe) > 0  # written through the page cache, and mincore sees it
    # dropped by hand, not by writers._fsync: were that broken, the test would skip instead of failing
    fd = os.open(probe, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    if _resident_pages(probe):
        pytest.skip("this file system keeps a file's pages in memory (tmpfs)")
    root = zarr.open_group(zarr.storage.LocalStore(tmp_path / "s"), mode="w", zarr_format=3)
    array = storage.create_rows_array(root, "a", FieldInfo("ndarray", "float32", (1024,)), 256, "none", chunk=64)
    writer = storage.ChunkWriter("none")
    for c in range(4):
        writer.write(array, c, np.random.default_rng(c).random((64, 1024), dtype=np.float32))
    writer.sync()
    writer.close()
    chunks = sorted(p for p in tmp_path_of(array).iterdir() if p.name.startswith("c."))
    assert len(chunks) == 4 and [_resident_pages(p) for p in chunks] == [0] * 4
    np.testing.assert_array_equal(storage.read_chunk(array, 3), np.random.default_rng(3).random((64, 1024),
                                                                                                 dtype=np.float32))


SHUFFLES = {"noshuffle": numcodecs.Blosc.NOSHUFFLE, "shuffle": numcodecs.Blosc.SHUFFLE,
            "bitshuffle": numcodecs.Blosc.BITSHUFFLE}


def _blosc(array) -> dict | None:
    codecs = {c["name"]: c.get("configuration") for c in array.metadata.to_dict()["codecs"]}
    assert list(codecs)[-1] == "crc32c"
    return codecs.get("blosc")


class PhotoFields(torch.utils.data.Dataset):
    """A photo crop (uint8), the same crop as float32 in [0, 1], PNG bytes of it (incompressible, ragged), a
    label; what the codec choice is made on."""

    def __init__(self, n: int) -> None:
        self.crops = photo_crops(n, 32)[0]

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, i: int) -> dict:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(self.crops[i].transpose(1, 2, 0)).save(buf, format="PNG")
        png = np.frombuffer(buf.getvalue(), dtype=np.uint8).copy()
        return {"pixels": self.crops[i], "image": self.crops[i].astype(np.float32) / 255, "png": png, "label": i % 10}


def _collate_photos(items: list[dict]) -> dict:
    return {"pixels": torch.from_numpy(np.stack([d["pixels"] for d in items])),
            "image": torch.from_numpy(np.stack([d["image"] for d in items])),
            "png": [torch.from_numpy(d["png"]) for d in items],
            "label": torch.tensor([d["label"] for d in items])}


@pytest.mark.parametrize("compressor", ["lz4", "zstd"])
def test_each_array_takes_the_codec_its_first_rows_compress_best_with(tmp_path, compressor):
    data = PhotoFields(256)
    loader = DataLoader(data, batch_size=64, shuffle=True, num_workers=2, collate_fn=_collate_photos)
    with snapstore.record(loader, tmp_path / "s", raw=None, compressor=compressor) as stream:
        seen = [batch for batch in stream]
    root = zarr.open_group(str(tmp_path / "s"), mode="r")
    epoch = root["train/epochs/0"]
    pixels, image, label = epoch["seen/pixels"], epoch["seen/image"], epoch["seen/label"]
    png = epoch["ragged/png/values"]
    assert _blosc(pixels)["shuffle"] == "bitshuffle"  # natural uint8 pixels: bit planes compress, bytes hardly
    assert _blosc(image)["shuffle"] == "noshuffle"  # floats with 256 values: whole words repeat
    assert _blosc(label)["shuffle"] == "shuffle"  # too few bytes to try (64 labels): the usual shuffle
    assert _blosc(png) is None  # already compressed: stored as it is, checksummed
    assert all(_blosc(a)["cname"] == compressor for a in (pixels, image, label))
    stored = sum(f.stat().st_size for f in (tmp_path / "s/train/epochs/0/seen/pixels").glob("c.*"))
    assert stored < 0.8 * data.crops.nbytes
    ep = snapstore.open(tmp_path / "s")["train"].epoch(0)
    for b, batch in enumerate(seen):
        rows = ep.batch(b)
        np.testing.assert_array_equal(rows["pixels"], batch["pixels"].numpy())
        np.testing.assert_array_equal(rows["image"], batch["image"].numpy())
        for got, want in zip(rows["png"], batch["png"]):
            np.testing.assert_array_equal(got, want.numpy())


@settings(max_examples=30, deadline=None)
@given(dtype=st.sampled_from(DTYPES), rows=st.integers(1, 300), noise=st.booleans(), data=st.data())
def test_a_codec_chosen_on_first_rows_stores_them_smallest_and_reads_them_back(tmp_path_factory, dtype, rows,
                                                                              noise, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    pixels = photo_crops(rows, 32)[0].reshape(rows, -1)[:, :64]
    sample = (rng.integers(0, 256, pixels.shape, dtype=np.uint8) if noise else pixels).astype(dtype)
    root = zarr.open_group(zarr.storage.LocalStore(tmp_path_factory.mktemp("codec")), mode="w", zarr_format=3)
    array = storage.create_rows_array(root, "a", FieldInfo("ndarray", dtype, (64,)), rows, "lz4", sample=sample)
    blosc = _blosc(array)
    if sample.nbytes < 4096:
        assert blosc is not None and blosc["shuffle"] == ("shuffle" if sample.dtype.kind in "iu"
                                                          and sample.itemsize > 1 else "noshuffle")
    else:
        first = sample[: 256 * 1024 // (64 * sample.itemsize)]  # the 256 KiB of first rows it is chosen on
        shuffles = ("noshuffle", "bitshuffle") if sample.itemsize == 1 else ("shuffle", "noshuffle")
        tried = {s: len(numcodecs.Blosc("lz4", 5, SHUFFLES[s], typesize=sample.itemsize).encode(first))
                 for s in shuffles}
        least = min(tried.values())
        assert (blosc is None) == (first.nbytes < 1.1 * least)
        if blosc is not None:
            assert tried[blosc["shuffle"]] == least
    writer = storage.ChunkWriter("lz4")
    for c in range(-(-rows // array.chunks[0])):
        block = np.zeros(array.chunks, dtype=array.dtype)
        part = sample[c * array.chunks[0] : (c + 1) * array.chunks[0]]
        block[: len(part)] = part
        writer.write(array, c, block, len(part))
    writer.wait()
    writer.close()
    np.testing.assert_array_equal(zarr.open_array(root.store, path="a", mode="r")[:], sample)
