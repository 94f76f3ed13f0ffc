"""Finding and damaging the files of a recorded snapshot, editing its metadata, and reading everything back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import snapstore


def chunk_file(snapshot: Path | str, array: str, chunk: int) -> Path:
    """The file holding row-chunk ``chunk`` of ``array`` (path inside the snapshot): ``c.<chunk>.0...``."""
    files = list((Path(snapshot) / array).glob(f"c.{chunk}")) + list((Path(snapshot) / array).glob(f"c.{chunk}.*"))
    assert len(files) == 1, files
    return files[0]


def flip_byte(path: Path) -> None:
    """Flip every bit of the byte in the middle of ``path``."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    """Cut ``path`` to half its length."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def edit_json(meta: Path, change: Any) -> None:
    """Rewrite the JSON document ``meta`` (a ``zarr.json``) after ``change(doc)`` edited it in place."""
    doc = json.loads(meta.read_text())
    change(doc)
    meta.write_text(json.dumps(doc))


def read_everything(path: Path) -> dict[str, Any]:
    """Everything the public API reads of the snapshot at ``path``: info, and per stream its fields, raw
    samples and, per epoch, its rows, batches, outputs and provenance."""
    s = snapstore.open(path)
    out: dict[str, Any] = {"info": s.info()}
    for name in s.streams:
        stream = s[name]
        out[name] = {"raw": stream.raw.to_numpy(), "fields": stream.fields}
        for ep in stream:
            out[name][ep.number] = (ep.to_numpy(), list(ep.batches()), dict(ep.outputs), ep.provenance)
    return out
