"""Flatten batch structures into fields and rebuild them; no I/O here.

A batch (or a raw sample) is a tree of tuples, lists, dicts and namedtuples
whose leaves are tensors, arrays, numbers, strings or ``None``. ``flatten``
turns it into a JSON ``structure`` tree plus one row block per leaf (a
NumPy array whose axis 0 is rows); ``unflatten`` rebuilds the same tree, with
the same container and leaf types, from row blocks. Field names are the leaf
paths: ``"0"``, ``"1"`` for ``(x, y)``; ``"image"``, ``"meta/id"`` for dicts;
namedtuple field names; ``"value"`` for a batch that is a single leaf.

Namedtuples are rebuilt from their stored class name and field names, never
by importing or unpickling the user's class.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from .errors import SchemaError
from .layout import FieldInfo

Structure = dict[str, Any]

ROOT_FIELD = "value"
"""Field name of a batch (or sample) that is a single leaf, e.g. a bare tensor."""

_STR = np.dtypes.StringDType()
_PY_SCALARS = {bool: "bool", int: "int64", float: "float64", str: "str"}
_PY_TYPES = {"bool": bool, "int64": int, "float64": float, "str": str}


def numpy_dtype(dtype: str) -> np.dtype:
    """The NumPy dtype that stores a field of ``FieldInfo.dtype`` ``dtype``."""
    if dtype == "str":
        return _STR
    if dtype == "bfloat16":
        return np.dtype("uint16")
    return np.dtype(dtype)


def _tensor_rows(t: torch.Tensor) -> tuple[str, np.ndarray]:
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if t.dtype == torch.bfloat16:
        return "bfloat16", t.view(torch.uint16).numpy()
    try:
        a = t.numpy()
    except TypeError as e:
        raise SchemaError(f"tensors of dtype {t.dtype} cannot be recorded: {e}") from None
    return a.dtype.name, a


def _leaf(path: str, kind: str, dtype: str, rows: np.ndarray) -> tuple[Structure, dict[str, tuple[FieldInfo, np.ndarray]]]:
    path = path or ROOT_FIELD
    return {"type": "leaf", "field": path}, {path: (FieldInfo(kind, dtype, tuple(rows.shape[1:])), rows)}


def _is_row_sequence(seq: Any, batch_size: int | None) -> bool:
    """A list/tuple of ``batch_size`` Python scalars of one type is one per-row field."""
    if batch_size is None or len(seq) != batch_size or not seq:
        return False
    t = type(seq[0])
    return t in _PY_SCALARS and all(type(v) is t for v in seq)


def flatten(obj: Any, batch_size: int | None, path: str = "") -> tuple[Structure, dict[str, tuple[FieldInfo, np.ndarray]]]:
    """Split ``obj`` into a structure tree and per-field row blocks.

    Parameters
    ----------
    obj : batch or sample
        Nested tuples/lists/dicts/namedtuples of tensors, arrays, numbers,
        strings and ``None``.
    batch_size : int or None
        Rows in ``obj``: every tensor/array leaf must have this leading
        dimension. ``None`` means ``obj`` is a single row (a raw sample, or a
        batch of a ``batch_size=None`` loader): each leaf becomes one row.

    Returns
    -------
    structure : dict
        JSON tree; leaves are ``{"type": "leaf", "field": path}``.
    fields : dict of str to (FieldInfo, ndarray)
        Row blocks of shape ``(rows, *FieldInfo.shape)``. Blocks may be views
        of the batch's memory: copy before the batch can change.

    Raises
    ------
    SchemaError
        A leaf of an unsupported type, a leaf whose leading dimension is not
        the batch size, or a dict key that is not a usable field name.
    """
    for types, handler in _FLATTEN:
        if isinstance(obj, types):
            return handler(obj, batch_size, path)
    raise SchemaError(
        f"field {path or '<batch>'!r} holds a {type(obj).__module__}.{type(obj).__qualname__}, which snapstore "
        "cannot record; return tensors, arrays, numbers, strings or tuples/lists/dicts of them from the "
        "dataset or collate_fn"
    )


def _join(path: str, key: str) -> str:
    return f"{path}/{key}" if path else key


def _flatten_children(items: list[tuple[str, Any]], batch_size: int | None, path: str) -> tuple[list[Structure], dict]:
    nodes, fields = [], {}
    for key, value in items:
        node, sub = flatten(value, batch_size, _join(path, key))
        nodes.append(node)
        fields.update(sub)
    return nodes, fields


def _flatten_tensor(t: torch.Tensor, batch_size: int | None, path: str):
    dtype, a = _tensor_rows(t)
    return _leaf(path, "tensor", dtype, _as_rows(a, batch_size, path))


def _flatten_ndarray(a: np.ndarray, batch_size: int | None, path: str):
    if a.dtype.kind in "OV":
        raise SchemaError(f"field {path!r} is a NumPy array of dtype {a.dtype}; record numeric, bool or str arrays")
    if a.dtype.kind == "U":
        a = a.astype(_STR)
    return _leaf(path, "ndarray", "str" if a.dtype == _STR else a.dtype.name, _as_rows(a, batch_size, path))


def _as_rows(a: np.ndarray, batch_size: int | None, path: str) -> np.ndarray:
    if batch_size is None:
        return a[np.newaxis]
    if a.ndim == 0 or a.shape[0] != batch_size:
        raise SchemaError(
            f"field {path!r} has shape {tuple(a.shape)} but the batch holds {batch_size} samples; every "
            "tensor/array in a batch needs the batch size as its first dimension"
        )
    return a


def _flatten_scalar(v: Any, batch_size: int | None, path: str):
    if batch_size is not None:
        raise SchemaError(
            f"field {path!r} is a single {type(v).__name__} in a batch of {batch_size} samples; return one value "
            "per sample (a tensor or a list of length batch size)"
        )
    if isinstance(v, np.generic):
        return _leaf(path, "numpy-scalar", v.dtype.name, np.asarray(v)[np.newaxis])
    dtype = next(d for t, d in _PY_SCALARS.items() if isinstance(v, t))
    return _leaf(path, "scalar", dtype, np.array([v], dtype=numpy_dtype(dtype)))


def _flatten_none(v: None, batch_size: int | None, path: str):
    return {"type": "none"}, {}


def _flatten_mapping(d: Mapping, batch_size: int | None, path: str):
    for k in d:
        if not isinstance(k, str) or not k or "/" in k or k in (".", "..", "zarr.json"):
            raise SchemaError(f"dict key {k!r} at {path or '<batch>'!r} cannot name a field; use non-empty str keys without '/'")
    nodes, fields = _flatten_children(list(d.items()), batch_size, path)
    return {"type": "dict", "keys": list(d), "items": nodes}, fields


def _flatten_sequence(seq: list | tuple, batch_size: int | None, path: str):
    if _is_row_sequence(seq, batch_size):
        dtype = _PY_SCALARS[type(seq[0])]
        kind = "list" if isinstance(seq, list) else "tuple"
        return _leaf(path, kind, dtype, np.array(seq, dtype=numpy_dtype(dtype)))
    if isinstance(seq, tuple) and hasattr(seq, "_fields"):
        nodes, fields = _flatten_children(list(zip(seq._fields, seq)), batch_size, path)
        return {"type": "namedtuple", "name": type(seq).__name__, "fields": list(seq._fields), "items": nodes}, fields
    nodes, fields = _flatten_children([(str(i), v) for i, v in enumerate(seq)], batch_size, path)
    return {"type": "list" if isinstance(seq, list) else "tuple", "items": nodes}, fields


def _flatten_pil(img: Any, batch_size: int | None, path: str):
    return _flatten_ndarray(np.asarray(img), batch_size, path)


_FLATTEN: list[tuple[Any, Callable]] = [
    (torch.Tensor, _flatten_tensor),
    (np.ndarray, _flatten_ndarray),
    ((bool, int, float, str, np.generic), _flatten_scalar),
    (type(None), _flatten_none),
    (Mapping, _flatten_mapping),
    ((list, tuple), _flatten_sequence),
]
try:  # PIL images (raw samples of torchvision-style datasets) become uint8 arrays.
    from PIL.Image import Image as _PILImage

    _FLATTEN.insert(2, (_PILImage, _flatten_pil))
except ImportError:  # pragma: no cover - Pillow is optional
    pass


def check(expected: Structure, fields: dict[str, FieldInfo], structure: Structure, got: dict[str, FieldInfo], where: str) -> None:
    """Raise ``SchemaError`` if a batch's structure or fields differ from the recorded schema."""
    if structure != expected:
        raise SchemaError(f"{where}: the batch structure changed from {expected} to {structure}")
    for path, info in got.items():
        old = fields[path]
        if info != old:
            raise SchemaError(
                f"{where}: field {path!r} changed from dtype {old.dtype} shape {old.shape} ({old.kind}) to "
                f"dtype {info.dtype} shape {info.shape} ({info.kind}); fixed-shape fields must keep their dtype "
                "and row shape (pad to a fixed length, or cast in collate_fn)"
            )


@functools.cache
def _namedtuple(name: str, fields: tuple[str, ...]) -> type:
    return collections.namedtuple(name, fields)  # type: ignore[misc]


def rebuild_leaf(info: FieldInfo, rows: np.ndarray, batched: bool) -> Any:
    """One field's value from its row block: the whole block for a batch (``batched``),
    else the single row ``rows[0]`` (a sample, or a batch of a ``batch_size=None`` loader)."""
    if info.kind == "tensor":
        t = torch.from_numpy(np.ascontiguousarray(rows) if batched else np.array(rows[0]))
        return t.view(torch.bfloat16) if info.dtype == "bfloat16" else t
    if info.kind == "ndarray":
        return rows if batched else np.array(rows[0])
    if info.kind == "numpy-scalar":
        return rows[0]
    values = [_PY_TYPES[info.dtype](v) for v in rows.tolist()]
    if not batched:
        return values[0]
    return values if info.kind != "tuple" else tuple(values)


def unflatten(structure: Structure, leaf: Callable[[str], Any]) -> Any:
    """Rebuild a batch from ``structure``; ``leaf(path)`` returns each field's value."""
    t = structure["type"]
    if t == "leaf":
        return leaf(structure["field"])
    if t == "none":
        return None
    items = [unflatten(s, leaf) for s in structure["items"]]
    if t == "dict":
        return dict(zip(structure["keys"], items))
    if t == "namedtuple":
        return _namedtuple(structure["name"], tuple(structure["fields"]))(*items)
    return items if t == "list" else tuple(items)


def leaf_paths(structure: Structure) -> list[str]:
    """Field paths in structure order."""
    if structure["type"] == "leaf":
        return [structure["field"]]
    return [p for s in structure.get("items", []) for p in leaf_paths(s)]
