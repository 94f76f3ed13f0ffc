"""Per-row content hashes: xxh3_64 of each row's bytes; no I/O here.

The recorder hashes every seen row, raw sample and output row in its
writer process and stores the hashes next to the data (see
``layout.py``), so that ``snapstore.diff`` and the audit's stability checks
compare 8 bytes per row instead of the rows themselves.

A row's hash is ``xxh3_64`` (seed 0) of its bytes as stored: C order, the
array's dtype and byte order (little endian on every platform snapstore
writes from), so two rows hash equal exactly when they are bitwise equal.
Strings hash their UTF-8 bytes; a row holding several strings hashes each
string's UTF-8 bytes preceded by its length (8 bytes, little endian).

The value 0 is reserved for "no hash recorded" (rows written before hashes
existed); a row that hashes to 0 (probability 2**-64) is stored as 1.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import xxhash

from .manifest import FieldInfo
from .rows import Ragged, host_rows

logger = logging.getLogger(__name__)

__all__ = ["HASH_INFO", "NO_HASH", "hash_fields", "row_hashes", "string_bytes"]

#: What a hash array holds: one uint64 per row.
HASH_INFO = FieldInfo("ndarray", "uint64", ())

#: Stored for rows whose hash was never recorded.
NO_HASH = 0

_xxh3: Callable[[Any], int] = xxhash.xxh3_64_intdigest  # any buffer: bytes, a row's ndarray view

_LITTLE = np.little_endian


def string_bytes(values: Any) -> bytes:
    """Strings as hashed: each one's UTF-8 bytes preceded by their length (8 bytes, little endian)."""
    parts = []
    for s in values:
        b = str(s).encode("utf-8")
        parts.append(len(b).to_bytes(8, "little"))
        parts.append(b)
    return b"".join(parts)


def row_hashes(rows: Any) -> npt.NDArray[np.uint64]:
    """xxh3_64 of each row of ``rows``.

    Parameters
    ----------
    rows : ndarray, shape (n, *row_shape), a list of n arrays, or ``schema.Ragged``
        Any numeric, bool or string dtype (NumPy ``StringDType`` or ``U``).
        Rows of different shapes (a list, a ``Ragged``) hash each row like a
        one-row array.

    Returns
    -------
    ndarray of uint64, shape (n,)
        Never 0 (see the module docstring).

    Examples
    --------
    >>> h = row_hashes(np.array([[1, 2], [1, 2], [3, 4]], dtype=np.int32))
    >>> bool(h[0] == h[1]), bool(h[0] == h[2])
    (True, False)
    """
    if isinstance(rows, Ragged):
        rows = rows.rows()
    if isinstance(rows, (list, tuple)):
        return np.fromiter((row_hashes(np.asarray(r)[np.newaxis])[0] for r in rows), dtype=np.uint64, count=len(rows))
    a = np.asarray(rows)
    if a.ndim == 0:
        raise ValueError(f"row_hashes needs an array with a row axis, got a 0-d array {a!r}")
    n = a.shape[0]
    if a.dtype.kind in "TUSO":
        if a.ndim == 1:
            values = (_xxh3(str(s).encode("utf-8")) for s in a.tolist())
        else:
            flat = a.reshape(n, -1)
            values = (_xxh3(string_bytes(flat[i].tolist())) for i in range(n))
        out = np.fromiter(values, dtype=np.uint64, count=n)
    else:
        if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and not _LITTLE):
            a = a.astype(a.dtype.newbyteorder("<"))
        rows_bytes = np.ascontiguousarray(a).reshape(n, -1).view(np.uint8) if n else ()
        out = np.fromiter(map(_xxh3, rows_bytes), dtype=np.uint64, count=n)  # no bytecode a row (issue 17)
    out[out == NO_HASH] = 1
    return out


def hash_fields(fields: dict[str, tuple[FieldInfo, np.ndarray]]) -> dict[str, tuple[FieldInfo, np.ndarray]]:
    """Row hashes of each field, in the shape the recorder's sinks take.

    Parameters
    ----------
    fields : dict of str to (FieldInfo, ndarray of shape (n, *shape))

    Returns
    -------
    dict of str to (FieldInfo, ndarray of uint64, shape (n,))
        Same keys, except fields whose rows cannot be hashed (readers then
        hash the stored rows themselves): recording never fails for a hash.
        Every ``FieldInfo`` is ``HASH_INFO``.
    """
    out = {}
    for path, (_, rows) in fields.items():
        try:
            out[path] = (HASH_INFO, row_hashes(host_rows(rows)))
        except (TypeError, ValueError) as e:
            logger.debug("no content hashes for field %r: %r", path, e)
    return out
