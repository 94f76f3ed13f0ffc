"""``snapstore export``: write an epoch's seen rows or a stream's raw samples to .npz or .npy files.

A thin shell over ``Epoch.to_numpy`` / ``RawSamples.to_numpy``.
``main.build_parser`` calls ``add_parser(commands)``, which sets
``run=_export``. Where it writes follows NumPy: ``--format npz`` (the
default) writes the one file ``OUT.npz``, appending ``.npz`` unless ``OUT``
ends with it, as ``numpy.savez`` does; ``--format npy`` writes the directory
``OUT`` with ``<field path>.npy`` per field and ``index.npy``.

Memory stays bounded: every numeric field is filled chunk by chunk into a
``numpy.lib.format.open_memmap`` file in a temporary directory next to the
output, and for npz those files are streamed into an uncompressed ``.npz``
that ``numpy.load`` reads. String fields are read whole and saved as
fixed-width unicode. Ragged fields are zero-padded to their widest row, with
``<field>.lengths``. Progress goes to stderr (see ``progress``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import zipfile
from typing import Any

from ..errors import UsageError
from .progress import add_quiet, bar

__all__ = ["add_parser", "output_path"]

FORMATS = ("npz", "npy")

_COPY_BYTES = 8 * 1024 * 1024


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``export`` subcommand to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    p = subparsers.add_parser(
        "export",
        help="write an epoch's seen rows or the raw samples to .npz/.npy",
        description="Export one epoch's seen rows (in seen order, with 'index' = the order) or a stream's raw "
        "samples (in dataset-index order, with 'index' = the recorded indices) to NumPy files: "
        "--format npz writes the file OUT.npz (.npz is appended unless OUT ends with it, like numpy.savez); "
        "--format npy writes the directory OUT, one <field>.npy per field plus index.npy. "
        "Progress goes to stderr.",
    )
    p.add_argument("path", help="snapshot path or URL")
    p.add_argument("--stream", required=True, help="stream name, e.g. train")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--epoch", type=int, help="epoch number (negative counts from the last)")
    which.add_argument("--raw", action="store_true", help="raw samples instead of an epoch's seen rows")
    p.add_argument("--fields", nargs="+", metavar="FIELD", help="field paths to export (default: all)")
    p.add_argument("--format", choices=FORMATS, default="npz",
                   help="npz (default): one file OUT.npz; npy: a directory OUT of .npy files")
    p.add_argument("-o", "--out", required=True, metavar="OUT",
                   help="npz: the file to write (.npz appended if missing); npy: the directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace the output if it exists")
    add_quiet(p)
    p.set_defaults(run=_export)  # main.main calls args.run(args)
    return p


def output_path(out: str | os.PathLike[str], fmt: str) -> str:
    """Where ``export -o OUT --format FMT`` writes: ``OUT.npz`` for npz unless ``OUT`` ends with .npz; else ``OUT``."""
    path = os.fspath(out)
    return path + ".npz" if fmt == "npz" and not path.endswith(".npz") else path


def _export(args: argparse.Namespace) -> int:
    import numpy as np

    from ..read.numpy import INDEX, out_specs
    from ..read.snapshot import open as open_snapshot

    stream = open_snapshot(args.path)[args.stream]
    if args.raw:
        source: Any = stream.raw
        what = f"raw samples of stream {stream.name!r}"
    else:
        try:
            source = stream.epoch(args.epoch)
        except KeyError as e:
            raise UsageError(e.args[0]) from None
        what = f"stream {stream.name!r} epoch {source.number}"
    out = output_path(args.out, args.format)
    if os.path.lexists(out) and not args.overwrite:
        raise UsageError(f"{out} exists; pass --overwrite or choose another -o")
    specs = out_specs(source, args.fields, ragged="pad")
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    total = sum(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize for shape, dtype in specs.values())
    with tempfile.TemporaryDirectory(prefix=".snapstore-export-", dir=parent) as tmp:
        staged = os.path.join(tmp, "npy")
        with bar(quiet=args.quiet, total=total, unit="B", unit_scale=True, desc="export") as progress:
            files = _write_npy(source, args.fields, specs, staged, progress.update)
            progress.update(total - progress.n)  # what to_numpy does not count as it goes ("index", strings)
        if args.format == "npy":
            result = staged
        else:
            result = os.path.join(tmp, "out.npz")
            _zip(files, result, quiet=args.quiet)
        if os.path.lexists(out):
            shutil.rmtree(out) if os.path.isdir(out) and not os.path.islink(out) else os.remove(out)
        os.replace(result, out)
    rows = specs[INDEX][0][0]
    print(f"wrote {out}: {rows} rows of {what}, arrays {list(specs)}")
    return 0


def _npy_name(key: str) -> str:
    return key + ".npy"  # field paths like "meta/id" become subdirectories


def _write_npy(source: Any, fields: Any, specs: dict[str, Any], folder: str, progress: Any) -> dict[str, str]:
    """Fill one .npy file per array under ``folder``; returns ``{key: file}``.

    Numeric arrays are memmaps filled in place; string fields come back in
    memory and are saved as fixed-width unicode (no pickles in the files).
    """
    import numpy as np

    from ..read.numpy import to_numpy

    files, maps = {}, {}
    for key, (shape, dtype) in specs.items():
        path = files[key] = os.path.join(folder, _npy_name(key))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if dtype.kind != "T":
            maps[key] = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    arrays = to_numpy(source, fields=fields, out=maps, ragged="pad", progress=progress)
    strings = {key: arrays[key] for key, (_, dtype) in specs.items() if dtype.kind == "T"}
    del maps, arrays  # close the memmaps before anything reads or zips the files
    for key, rows in strings.items():
        width = max(1, int(np.strings.str_len(rows).max(initial=0)))
        np.save(files[key], rows.astype(f"U{width}"))  # fixed width: loads without allow_pickle
    return files


def _zip(files: dict[str, str], target: str, *, quiet: bool) -> None:
    """An uncompressed .npz (what ``numpy.savez`` writes), copied file by file in 8 MiB pieces."""
    total = sum(os.path.getsize(f) for f in files.values())
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED, allowZip64=True) as zf, \
            bar(quiet=quiet, total=total, unit="B", unit_scale=True, desc="npz") as progress:
        for key, path in files.items():
            with open(path, "rb") as src, zf.open(_npy_name(key), "w", force_zip64=True) as dst:
                while piece := src.read(_COPY_BYTES):
                    dst.write(piece)
                    progress.update(len(piece))
