"""Row blocks in memory: packed ragged rows, device copies, and joining or placing blocks; no I/O here.

A *row block* is what one field holds for a run of rows: an ndarray
``(n, *row_shape)``, a list of n arrays (ragged rows as read back), a
``Ragged`` (ragged rows packed for writing) or a ``DeviceCopy`` (rows on
their way from a GPU). Every module that joins or reorders row blocks does
it through here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import numpy as np

if TYPE_CHECKING:
    import torch

from .manifest import FieldInfo, numpy_dtype


class DeviceCopy:
    """A CUDA tensor being copied to pinned host memory without blocking the training step.

    ``numpy()`` waits for the copy (the training thread calls it when it hands the rows to the writer
    process) and returns the host rows.
    """

    __slots__ = ("_event", "_host", "shape")

    def __init__(self, t: torch.Tensor) -> None:
        import torch  # only for rows on a GPU: reading a snapshot never needs torch here

        self._host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        self._host.copy_(t, non_blocking=True)
        self._event = torch.cuda.Event()
        self._event.record(torch.cuda.current_stream(t.device))
        self.shape = tuple(t.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def numpy(self) -> np.ndarray:
        self._event.synchronize()
        return self._host.numpy()


def host_rows(rows: Any) -> Any:
    """Rows ready for writing: waits for a ``DeviceCopy``; other rows pass through."""
    return rows.numpy() if isinstance(rows, DeviceCopy) else rows


class Ragged:
    """Rows of differing shapes, packed: all elements in one 1-D array plus each row's shape.

    Attributes
    ----------
    values : ndarray, shape (total elements,)
        The rows' elements, row after row, each in C order.
    shapes : ndarray of int64, shape (rows, ndim)
        Shape of each row.
    """

    __slots__ = ("shapes", "values")

    def __init__(self, values: np.ndarray, shapes: np.ndarray) -> None:
        self.values = values
        self.shapes = shapes

    @classmethod
    def from_rows(cls, rows: list[np.ndarray]) -> Ragged:
        shapes = np.array([r.shape for r in rows], dtype=np.int64).reshape(len(rows), rows[0].ndim if rows else 0)
        values = np.concatenate([r.reshape(-1) for r in rows]) if rows else np.empty(0)
        return cls(values, shapes)

    @classmethod
    def from_block(cls, block: np.ndarray) -> Ragged:
        """A fixed-shape block ``(rows, *shape)`` in packed form."""
        return cls(block.reshape(-1), np.tile(np.array(block.shape[1:], dtype=np.int64), (len(block), 1)))

    def __len__(self) -> int:
        return len(self.shapes)

    def counts(self) -> np.ndarray:
        """Elements of each row (int64, (rows,))."""
        return np.prod(self.shapes, axis=1, dtype=np.int64)

    def rows(self) -> list[np.ndarray]:
        """The rows as separate arrays (views of ``values``)."""
        ends = np.cumsum(self.counts())
        return [self.values[e - c : e].reshape(s)
                for e, c, s in zip(ends.tolist(), self.counts().tolist(), self.shapes.tolist())]

    def take(self, keep: np.ndarray) -> Ragged:
        """The rows at positions ``keep``."""
        rows = self.rows()
        return Ragged.from_rows([rows[k] for k in keep]) if len(keep) else Ragged(self.values[:0], self.shapes[:0])


def concat_rows(info: FieldInfo, parts: list[np.ndarray | Ragged]) -> np.ndarray | Ragged:
    """Row blocks of one field, joined: packed ``Ragged`` when ``info.ragged``, else one array."""
    if not info.ragged:
        return np.concatenate(cast(list[np.ndarray], parts)) if len(parts) > 1 else parts[0]
    if len(parts) == 1 and isinstance(parts[0], Ragged):
        return parts[0]
    return Ragged.from_rows([r for part in parts for r in (part.rows() if isinstance(part, Ragged) else list(part))])


Rows = np.ndarray | list
"""A block of rows as read back: ``(n, *row_shape)``, or a list of n arrays for ragged rows."""


def join(pieces: list[Rows]) -> Rows:
    """Row blocks of one field, in order: one array, or one list of ragged rows."""
    if len(pieces) == 1:
        return pieces[0]
    if isinstance(pieces[0], list):
        return [r for piece in pieces for r in piece]
    return np.concatenate(pieces)


def place(pieces: list[Rows], where: list[np.ndarray], n: int) -> Rows:
    """Rows gathered from several places, put back at positions ``where`` (one int array per piece) of ``n``."""
    if len(pieces) == 1:  # ``where[0]`` is then every position, in order
        return pieces[0]
    if isinstance(pieces[0], list):
        out: list[Any] = [None] * n
        for piece, sel in zip(pieces, where):
            for k, r in zip(sel.tolist(), piece):
                out[k] = r
        return out
    block = np.empty((n, *pieces[0].shape[1:]), dtype=pieces[0].dtype)
    for piece, sel in zip(pieces, where):
        block[sel] = piece
    return block


def no_rows(info: FieldInfo) -> Rows:
    """Zero rows of a field: an empty list when ragged, else an empty ``(0, *row_shape)`` array."""
    return [] if info.ragged else np.empty((0, *(d or 0 for d in info.shape)), dtype=numpy_dtype(info.dtype))
