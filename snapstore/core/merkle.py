"""Chunks and records bound to their place: the content hashes a commit record names; no I/O here.

Format version 2 turns the snapshot into a hash tree, as ZFS keeps each
block's checksum in its parent's pointer (``docs/FORMAT.md``, "Chunks bound to
their place"):

* every commit record (an epoch piece's ``"epoch"``, a stream's ``"raw"``)
  names, under ``"chunks"``, each array it covers by its path inside the
  record's group, with the hash of every chunk (``ChunkHashes``);
* a stream's ``epochs/`` group names every epoch piece it holds in
  ``attrs["epochs"]``, with the hash of the piece's final commit record once
  the piece is finished (sealed), ``None`` while it is being recorded.

A chunk's hash covers the rows it held when it was stored, decoded (so a
chunk rewritten with more rows, or a copy of it in another place, another
array or another epoch, is told apart), and the rows a chunk held then stay
the same in every later version of it: a reader that finds a newer version
(a live recording, or a writer killed between a chunk and its record) still
verifies the rows the record commits.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import xxhash

from ..errors import CorruptionError
from .hashing import string_bytes

__all__ = ["ABSENT", "RAW_ROWS", "ChunkHashes", "Coverage", "chunk_hash", "hex_hash", "parse_chunks", "parse_seals",
           "record_hash"]

ABSENT = 0
"""The hash a record names for a chunk never stored (it reads as the fill value and must stay absent)."""

_HEX = 16  # hex digits of one hash

MAX_CHUNKS = 2**32
"""Most chunks one array entry may name (a record names at most what its rows need)."""


def _nonzero(h: int) -> int:
    return h or 1  # 0 is ABSENT


def chunk_hash(rows: np.ndarray) -> int:
    """xxh3_64 of ``rows`` (the first rows of one chunk, shape (n, *row_shape)), never ``ABSENT``.

    Numbers and bools hash their bytes in C order, little endian; strings hash
    each element's UTF-8 bytes preceded by its length (8 bytes, little endian),
    in C order.
    """
    a = np.asarray(rows)
    if a.dtype.kind in "TUSO":
        return _nonzero(xxhash.xxh3_64_intdigest(string_bytes(a.reshape(-1).tolist())))
    if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and not np.little_endian):
        a = a.astype(a.dtype.newbyteorder("<"))
    return _nonzero(xxhash.xxh3_64_intdigest(np.ascontiguousarray(a).reshape(-1).view(np.uint8).data))


def record_hash(record: Any) -> int:
    """xxh3_64 of a commit record as JSON with sorted keys, no spaces, ASCII (``json.dumps(record,
    sort_keys=True, separators=(",", ":"))``), never ``ABSENT``: what a stream's list of epochs names."""
    text = json.dumps(record, sort_keys=True, separators=(",", ":"))
    return _nonzero(xxhash.xxh3_64_intdigest(text.encode("ascii")))


def hex_hash(h: int) -> str:
    """A hash as the 16 lowercase hex digits records store."""
    return f"{h:016x}"


@dataclass(frozen=True)
class ChunkHashes:
    """What a commit record names of one array: ``chunk`` rows per chunk, the first ``rows`` rows
    covered, and the hash of each chunk holding them (uint64, (ceil(rows / chunk),); ``ABSENT`` for a
    chunk never stored). Chunk ``c``'s hash covers its rows ``c * chunk .. min((c + 1) * chunk, rows) - 1``."""

    chunk: int
    rows: int
    hashes: np.ndarray

    def covered(self, c: int) -> int:
        """Rows of chunk ``c`` its hash covers (0: the record does not cover chunk ``c``)."""
        return max(0, min(self.chunk, self.rows - c * self.chunk))

    def named(self, c: int) -> bool:
        """Whether the record names a stored chunk ``c`` (it covers rows of it, and not as ``ABSENT``)."""
        return 0 <= c < len(self.hashes) and int(self.hashes[c]) != ABSENT

    def to_dict(self) -> dict[str, Any]:
        return {"chunk": self.chunk, "rows": self.rows, "hashes": "".join(hex_hash(int(h)) for h in self.hashes)}

    @classmethod
    def from_dict(cls, d: Any, what: str) -> ChunkHashes:
        """The entry ``d`` of array ``what``; ``ValueError`` naming what is wrong."""
        if not isinstance(d, dict):
            raise ValueError(f"the entry of {what!r} is {type(d).__name__}, not an object")
        chunk, rows, text = d.get("chunk"), d.get("rows"), d.get("hashes")
        if not (isinstance(chunk, int) and isinstance(rows, int) and isinstance(text, str)
                and _count(chunk) and chunk > 0 and _count(rows)):
            raise ValueError(f"the entry of {what!r} needs a positive 'chunk', a count 'rows' and a string 'hashes'")
        n = math.ceil(rows / chunk)
        if n > MAX_CHUNKS or len(text) != n * _HEX:
            raise ValueError(f"the entry of {what!r} names {len(text) // _HEX} chunk hashes for {rows} rows "
                             f"of {chunk} per chunk ({n})")
        try:
            hashes = np.frombuffer(bytes.fromhex(text), dtype=">u8").astype(np.uint64)
        except ValueError:
            raise ValueError(f"the chunk hashes of {what!r} are not hex digits") from None
        return cls(chunk, rows, hashes)


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 2**62


def parse_chunks(record: Any, where: str) -> dict[str, ChunkHashes] | None:
    """The ``"chunks"`` of a commit record by array path, ``None`` for a record without them (format
    version 1); ``CorruptionError`` naming ``where`` when they are damaged."""
    if not isinstance(record, dict) or "chunks" not in record:
        return None
    entries = record["chunks"]
    try:
        if not isinstance(entries, dict):
            raise ValueError(f"'chunks' is {type(entries).__name__}, not an object")
        return {path: ChunkHashes.from_dict(d, path) for path, d in entries.items()}
    except ValueError as e:
        raise CorruptionError.damaged(f"{where}: the chunk hashes of its commit record are damaged: {e}") from None


def parse_seals(d: Any, where: str) -> dict[str, int | None]:
    """A stream's list of epoch pieces (``attrs["epochs"]`` of its ``epochs/`` group): piece path (``"3"``,
    ``"3/continued/1"``) -> hash of its final commit record, or ``None`` while it is recorded."""
    def sealed(v: Any) -> bool:
        return isinstance(v, str) and len(v) == _HEX and all(ch in "0123456789abcdef" for ch in v)

    if not isinstance(d, dict) or not all(v is None or sealed(v) for k, v in d.items() if k != RAW_ROWS) \
            or not _count(d.get(RAW_ROWS, 0)):
        raise CorruptionError.damaged(f"{where}: its list of epochs (attribute 'epochs') is damaged: {d!r:.120}")
    return {k: None if v is None else int(v, 16) for k, v in d.items() if k != RAW_ROWS}


RAW_ROWS = "raw"
"""Key of a stream's list of epochs: the raw rows committed when its last piece was sealed (the raw record
must commit at least as many)."""


class Coverage:
    """The chunk hashes one commit record names, looked up by array path.

    ``entries`` is ``parse_chunks`` of the record (``None``: a record of format
    version 1, which binds nothing); ``base`` is the store path of the
    record's group, ``where`` the record's place for messages.
    """

    def __init__(self, entries: dict[str, ChunkHashes] | None, base: str, where: str) -> None:
        self.entries = entries
        self.base = base
        self.where = where

    def of(self, path: str, *, required: bool = True) -> ChunkHashes | None:
        """The entry of the array at store path ``path``; ``None`` when the record binds nothing (version 1),
        or names no such array and ``required`` is False (an output never logged yet).

        Raises ``CorruptionError`` when a ``required`` array (one whose committed rows are read) is not named.
        """
        if self.entries is None:
            return None
        rel = path[len(self.base) + 1 :] if self.base and path.startswith(self.base + "/") else path
        entry = self.entries.get(rel)
        if entry is None and required:
            raise CorruptionError.damaged(f"{self.where}: its commit record names no chunks of array {rel!r}, "
                                          "whose rows it commits (the array or the record was replaced)")
        return entry
