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

from ..errors import SchemaError
from .layout import ROOT_FIELD
from .manifest import STR, FieldInfo, numpy_dtype
from .rows import DeviceCopy, Ragged

Structure = dict[str, Any]


_PY_SCALARS = {bool: "bool", int: "int64", float: "float64", str: "str"}

_PY_TYPES = {"bool": bool, "int64": int, "float64": float, "str": str}


def _device_rows(t: torch.Tensor, batch_size: int | None, path: str) -> tuple[str, DeviceCopy]:
    if batch_size is not None and (t.ndim == 0 or t.shape[0] != batch_size):
        _as_rows(np.empty(tuple(t.shape), dtype=np.uint8), batch_size, path)  # raises the usual SchemaError
    t = t.detach()[None] if batch_size is None else t.detach()
    if t.dtype == torch.bfloat16:
        return "bfloat16", DeviceCopy(t.view(torch.uint16))
    return str(t.dtype).removeprefix("torch."), DeviceCopy(t)


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


def _leaf(path: str, kind: str, dtype: str,
          rows: np.ndarray) -> tuple[Structure, dict[str, tuple[FieldInfo, np.ndarray]]]:
    path = path or ROOT_FIELD
    return {"type": "leaf", "field": path}, {path: (FieldInfo(kind, dtype, tuple(rows.shape[1:])), rows)}


def _ragged_leaf(path: str, kind: str, dtype: str,
                 rows: list[np.ndarray]) -> tuple[Structure, dict[str, tuple[FieldInfo, Ragged]]]:
    path = path or ROOT_FIELD
    shape = tuple(d if all(r.shape[i] == d for r in rows) else None for i, d in enumerate(rows[0].shape))
    return {"type": "leaf", "field": path}, {path: (FieldInfo(kind, dtype, shape, ragged=True), Ragged.from_rows(rows))}


def _row_list_kind(seq: Any, batch_size: int | None, known: bool | None) -> str | None:
    """``"tensor-list"``/``"ndarray-list"`` when ``seq`` is a list of per-row tensors/arrays.

    ``known`` is what earlier batches decided for this path. For the first
    batch: a list (never a tuple) of ``batch_size`` tensors (arrays) of one
    dtype and rank is a list of rows (e.g. ragged sequences from a custom
    collate_fn) unless every one has the batch size as its first dimension,
    which makes it a structure like ``[images, labels]``.
    """
    if batch_size is None or not isinstance(seq, list) or len(seq) != batch_size or not seq or known is False:
        return None
    for t, kind in ((torch.Tensor, "tensor-list"), (np.ndarray, "ndarray-list")):
        if all(isinstance(v, t) for v in seq):
            if len({(v.dtype, v.ndim) for v in seq}) != 1 or seq[0].ndim == 0:
                return None
            if not known and all(v.shape[0] == batch_size for v in seq):
                return None
            return kind
    return None


def _is_row_sequence(seq: Any, batch_size: int | None) -> bool:
    """A list/tuple of ``batch_size`` Python scalars of one type is one per-row field."""
    if batch_size is None or len(seq) != batch_size or not seq:
        return False
    t = type(seq[0])
    return t in _PY_SCALARS and all(type(v) is t for v in seq)


def flatten(
    obj: Any, batch_size: int | None, path: str = "", *, row_lists: frozenset[str] | None = None
) -> tuple[Structure, dict[str, tuple[FieldInfo, np.ndarray]]]:
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
    row_lists : frozenset of str, optional
        Paths known (from earlier batches) to hold lists of per-row tensors;
        without it, a list is judged by its contents (see ``_row_list_kind``).

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
            return handler(obj, batch_size, path, row_lists)
    raise SchemaError(
        f"field {path or '<batch>'!r} holds a {type(obj).__module__}.{type(obj).__qualname__}, which snapstore "
        "cannot record; return tensors, arrays, numbers, strings or tuples/lists/dicts of them from the "
        "dataset or collate_fn"
    )


def _join(path: str, key: str) -> str:
    return f"{path}/{key}" if path else key


def _flatten_children(items: list[tuple[str, Any]], batch_size: int | None, path: str,
                      row_lists: Any) -> tuple[list[Structure], dict]:
    nodes, fields = [], {}
    for key, value in items:
        node, sub = flatten(value, batch_size, _join(path, key), row_lists=row_lists)
        nodes.append(node)
        fields.update(sub)
    return nodes, fields


def _flatten_tensor(t: torch.Tensor, batch_size: int | None, path: str, row_lists: Any = None):
    if t.is_nested:
        raise SchemaError(f"field {path or '<batch>'!r} is a nested tensor, which snapstore cannot record; return "
                          "its rows as a list of tensors from collate_fn (`list(t.unbind())`), or pad them")
    if t.layout != torch.strided:
        raise SchemaError(f"field {path or '<batch>'!r} is a {t.layout} tensor, which snapstore cannot record; "
                          "return `t.to_dense()` from collate_fn")
    if t.is_cuda:
        dtype, copy = _device_rows(t, batch_size, path)
        return ({"type": "leaf", "field": path or ROOT_FIELD},
                {path or ROOT_FIELD: (FieldInfo("tensor", dtype, copy.shape[1:]), copy)})
    dtype, a = _tensor_rows(t)
    return _leaf(path, "tensor", dtype, _as_rows(a, batch_size, path))


def _flatten_ndarray(a: np.ndarray, batch_size: int | None, path: str, row_lists: Any = None):
    if a.dtype.kind in "OV":
        raise SchemaError(f"field {path!r} is a NumPy array of dtype {a.dtype}; record numeric, bool or str arrays")
    if a.dtype.kind == "U":
        a = a.astype(STR)
    return _leaf(path, "ndarray", "str" if a.dtype == STR else a.dtype.name, _as_rows(a, batch_size, path))


def _as_rows(a: np.ndarray, batch_size: int | None, path: str) -> np.ndarray:
    if batch_size is None:
        return a[np.newaxis]
    if a.ndim == 0 or a.shape[0] != batch_size:
        raise SchemaError(
            f"field {path!r} has shape {tuple(a.shape)} but the batch holds {batch_size} samples; every "
            "tensor/array in a batch needs the batch size as its first dimension"
        )
    return a


def _flatten_scalar(v: Any, batch_size: int | None, path: str, row_lists: Any = None):
    if batch_size is not None:
        raise SchemaError(
            f"field {path!r} is a single {type(v).__name__} in a batch of {batch_size} samples; return one value "
            "per sample (a tensor or a list of length batch size)"
        )
    if isinstance(v, np.generic):
        return _leaf(path, "numpy-scalar", v.dtype.name, np.asarray(v)[np.newaxis])
    dtype = next(d for t, d in _PY_SCALARS.items() if isinstance(v, t))
    return _leaf(path, "scalar", dtype, np.array([v], dtype=numpy_dtype(dtype)))


def _flatten_none(v: None, batch_size: int | None, path: str, row_lists: Any = None):
    return {"type": "none"}, {}


def _flatten_mapping(d: Mapping, batch_size: int | None, path: str, row_lists: Any = None):
    for k in d:
        if not isinstance(k, str) or not k or "/" in k or k in (".", "..", "zarr.json"):
            raise SchemaError(f"dict key {k!r} at {path or '<batch>'!r} cannot name a field; "
                              "use non-empty str keys without '/'")
    nodes, fields = _flatten_children(list(d.items()), batch_size, path, row_lists)
    return {"type": "dict", "keys": list(d), "items": nodes}, fields


def _flatten_sequence(seq: list | tuple, batch_size: int | None, path: str, row_lists: Any = None):
    kind = _row_list_kind(seq, batch_size, None if row_lists is None else (path or ROOT_FIELD) in row_lists)
    if kind == "tensor-list":
        converted = [_tensor_rows(t) for t in seq]
        return _ragged_leaf(path, kind, converted[0][0], [a for _, a in converted])
    if kind == "ndarray-list":
        return _ragged_leaf(path, kind, seq[0].dtype.name, list(seq))
    if _is_row_sequence(seq, batch_size):
        dtype = _PY_SCALARS[type(seq[0])]
        kind = "list" if isinstance(seq, list) else "tuple"
        return _leaf(path, kind, dtype, np.array(seq, dtype=numpy_dtype(dtype)))
    if isinstance(seq, tuple) and hasattr(seq, "_fields"):
        nodes, fields = _flatten_children(list(zip(seq._fields, seq)), batch_size, path, row_lists)
        return {"type": "namedtuple", "name": type(seq).__name__, "fields": list(seq._fields), "items": nodes}, fields
    nodes, fields = _flatten_children([(str(i), v) for i, v in enumerate(seq)], batch_size, path, row_lists)
    return {"type": "list" if isinstance(seq, list) else "tuple", "items": nodes}, fields


def _refuse_packed(seq: Any, batch_size: int | None, path: str, row_lists: Any = None):
    raise SchemaError(f"field {path or '<batch>'!r} is a PackedSequence, which snapstore cannot record; record the "
                      "padded form: return `pad_packed_sequence(seq, batch_first=True)` (or the padded batch and "
                      "its lengths) from collate_fn and pack it in the training step")


def _flatten_pil(img: Any, batch_size: int | None, path: str, row_lists: Any = None):
    return _flatten_ndarray(np.asarray(img), batch_size, path)

_FLATTEN: list[tuple[Any, Callable]] = [
    (torch.Tensor, _flatten_tensor),
    (np.ndarray, _flatten_ndarray),
    ((bool, int, float, str, np.generic), _flatten_scalar),
    (type(None), _flatten_none),
    (Mapping, _flatten_mapping),
    (torch.nn.utils.rnn.PackedSequence, _refuse_packed),
    ((list, tuple), _flatten_sequence),
]

try:  # PIL images (raw samples of torchvision-style datasets) become uint8 arrays.
    from PIL.Image import Image as _PILImage

    _FLATTEN.insert(2, (_PILImage, _flatten_pil))
except ImportError:  # pragma: no cover - Pillow is optional
    pass


def reconcile(
    expected: Structure, fields: dict[str, FieldInfo], structure: Structure, got: dict[str, FieldInfo], where: str
) -> dict[str, FieldInfo]:
    """The recorded fields updated with a new batch's, or ``SchemaError`` if they cannot hold it.

    A field may change the size of its row dimensions (it becomes ragged:
    those dimensions turn ``None``), never its kind, dtype or rank, and the
    batch structure must stay the same.
    """
    if structure != expected:
        raise SchemaError(f"{where}: the batch structure changed from {expected} to {structure}")
    out = dict(fields)
    for path, new in got.items():
        old = fields[path]
        if new == old:
            continue
        if (new.kind, new.dtype, len(new.shape)) != (old.kind, old.dtype, len(old.shape)):
            raise SchemaError(
                f"{where}: field {path!r} changed from dtype {old.dtype} shape {old.shape} ({old.kind}) to "
                f"dtype {new.dtype} shape {new.shape} ({new.kind}); a field must keep its type, dtype and number "
                "of dimensions (cast in the dataset or collate_fn)"
            )
        shape = tuple(a if a == b else None for a, b in zip(old.shape, new.shape))
        out[path] = FieldInfo(old.kind, old.dtype, shape, ragged=old.ragged or new.ragged or None in shape)
    return out


@functools.cache
def namedtuple_class(name: str, fields: tuple[str, ...]) -> type:
    return collections.namedtuple(name, fields)  # type: ignore[misc]


def rebuild_leaf(info: FieldInfo, rows: np.ndarray | list[np.ndarray], batched: bool) -> Any:
    """One field's value from its rows: the whole batch (``batched``), else the single row
    (a sample, or a batch of a ``batch_size=None`` loader).

    ``rows`` is a ``(rows, *shape)`` block, or a list of row arrays for a
    ragged field. Arrays and tensors in the value never share memory with a
    view passed in; a block that owns its memory becomes the value itself, so
    pass only blocks nobody else keeps.
    """
    if info.kind in ("tensor-list", "ndarray-list"):
        values = [_as_leaf(info, r, "tensor" if info.kind == "tensor-list" else "ndarray") for r in rows]
        return values if batched else values[0]
    if isinstance(rows, list):  # a padded field stored ragged: the rows of one batch share a shape
        rows = np.stack(rows) if batched else rows[0][np.newaxis]
    if info.kind in ("tensor", "ndarray"):
        return _as_leaf(info, rows if batched else rows[0], info.kind)
    if info.kind == "numpy-scalar":
        return rows[0]
    values = [_PY_TYPES[info.dtype](v) for v in rows.tolist()]
    if not batched:
        return values[0]
    return values if info.kind != "tuple" else tuple(values)


def _as_leaf(info: FieldInfo, a: np.ndarray, kind: str) -> Any:
    # Rows that own their memory (joined from several chunks just now) are handed out as they are;
    # views of decoded or cached chunks are copied, so callers may change what they get.
    if not (a.flags.owndata and a.flags.writeable):
        a = np.array(a)
    if kind == "ndarray":
        return a
    t = torch.from_numpy(a)
    return t.view(torch.bfloat16) if info.dtype == "bfloat16" else t


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
        return namedtuple_class(structure["name"], tuple(structure["fields"]))(*items)
    return items if t == "list" else tuple(items)


def leaf_paths(structure: Structure) -> list[str]:
    """Field paths in structure order."""
    if structure["type"] == "leaf":
        return [structure["field"]]
    return [p for s in structure.get("items", []) for p in leaf_paths(s)]
