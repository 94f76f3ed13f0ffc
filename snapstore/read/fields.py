"""Readers for the fields of one group of rows (an epoch piece's seen rows, a rank's raw samples), and their hashes."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import storage
from ..core import hashing, layout
from ..core.manifest import FieldInfo, StreamManifest, numpy_dtype
from ..core.merkle import ChunkHashes, Coverage
from ..core.schema import Structure, rebuild_leaf, unflatten
from ..errors import CorruptionError
from ..storage.tree import array_at, subtree


class FieldReaders:
    """Readers for the fields of one group of rows, rebuilding rows into structures.

    Fields named in ``ragged`` are read from ``ragged/<path>/`` (lists of
    row arrays), the others from ``<name>/<path>`` (one block of rows).
    """

    def __init__(self, nodes: dict[str, Any], name: str, structure: Structure | None, infos: dict[str, FieldInfo],
                 ragged: list[str], rows: int, what: str, coverage: Coverage | None = None) -> None:
        self.structure = structure or {"type": "none"}
        self.infos = infos
        self.readers: dict[str, storage.ChunkReader | storage.RaggedReader] = {}
        for p, info in infos.items():
            if p in ragged:
                self.readers[p] = storage.RaggedReader(subtree(nodes, f"{layout.RAGGED_GROUP}/{p}"), rows, info,
                                                     f"{what}/{layout.RAGGED_GROUP}/{p}", coverage)
            elif info.ragged and info.kind in ("tensor-list", "ndarray-list"):
                raise CorruptionError.damaged(f"{what}: field {p!r} holds a list of rows but is not stored ragged")
            else:
                array = array_at(nodes, f"{name}/{p}", what)
                self.readers[p] = storage.ChunkReader(array, what, rows=rows, dtype=numpy_dtype(info.dtype),
                                                      row_shape=row_shape(info), expect=expect(coverage, array))

    def read(self, start: int, stop: int) -> dict[str, np.ndarray | list[np.ndarray]]:
        return {p: r.read(start, stop) for p, r in self.readers.items()}

    def build(self, rows: dict[str, Any], batched: bool) -> Any:
        return unflatten(self.structure, lambda p: rebuild_leaf(self.infos[p], rows[p], batched))


def row_shape(info: FieldInfo) -> tuple[int, ...] | None:
    """The shape a fixed array's rows must have; ``None`` (unchecked) for a field whose rows vary,
    which is kept fixed (padded to one shape) until it turns ragged."""
    return None if None in info.shape else tuple(info.shape)  # type: ignore[arg-type]


def check_indices(index: np.ndarray, m: StreamManifest, what: str) -> np.ndarray:
    """``index`` (dataset indices) if each lies within the dataset; ``CorruptionError`` otherwise."""
    n = m.dataset_len
    if len(index) and ((index < 0).any() or (n is not None and not m.iterable and (index >= n).any())):
        raise CorruptionError.damaged(f"{what}: {what.rsplit('/', 1)[-1]} holds dataset indices outside 0..{n}")
    return index


def expect(coverage: Coverage | None, array: Any, *, required: bool = True) -> ChunkHashes | None:
    """What the commit record ``coverage`` names of ``array``'s chunks (``Coverage.of``); ``None`` without one."""
    return coverage.of(array.path, required=required) if coverage is not None else None


def stored_hashes(group: Any, path: str, n: int, coverage: Coverage | None = None) -> np.ndarray:
    """The first ``n`` content hashes stored at ``path`` in ``group``; ``NO_HASH`` where none were stored."""
    node = storage.child(group, path)
    if node is None or n == 0:
        return np.full(n, hashing.NO_HASH, dtype=np.uint64)
    return storage.ChunkReader(node, rows=n, expect=expect(coverage, node)).read(0, n)


#: Rows hashed at once when hashes must be computed from the data.
_HASH_BLOCK = 4096


def fill_hashes(h: np.ndarray, rows: Any) -> np.ndarray:
    """``h`` with its ``NO_HASH`` entries hashed from ``rows(positions)``, in blocks."""
    todo = np.nonzero(h == hashing.NO_HASH)[0]
    for lo in range(0, len(todo), _HASH_BLOCK):
        block = todo[lo : lo + _HASH_BLOCK]
        h[block] = hashing.row_hashes(rows(block))
    return h
