"""``to_tf_dataset``: recorded rows as a streaming ``tf.data.Dataset`` (TensorFlow is optional)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.manifest import FieldInfo, numpy_dtype
from ..core.schema import Structure, leaf_paths, namedtuple_class
from ..errors import SnapstoreError, UsageError
from ..read.blocks import row_blocks
from ..read.plan import Fields, select

if TYPE_CHECKING:
    from ..read.stream import Stream


def to_tf_dataset(stream: Stream, epoch: int | None = None, *, channels_last: bool = False,
                  fields: Fields = None) -> Any:
    """A streaming ``tf.data.Dataset`` of rows; see ``Stream.to_tf_dataset``."""
    try:
        import tensorflow as tf
    except ImportError:
        raise SnapstoreError("to_tf_dataset needs TensorFlow: pip install 'snapstore[tf]'") from None
    plan = (stream.raw if epoch is None else stream.epoch(epoch)).row_plan()
    paths = select(plan, fields)
    if not paths:
        raise UsageError(f"{plan.what} has no field to put in a tf.data.Dataset")
    structure = _prune(plan.structure, set(paths))
    paths = leaf_paths(structure)
    moved = {p for p in paths if channels_last and _image_like(plan.infos[p])}
    ragged = any(plan.is_ragged(p) for p in paths)  # one element per generator step instead of blocks
    specs = []
    for p in paths:
        info = plan.infos[p]
        shape = (*info.shape[1:], info.shape[0]) if p in moved else info.shape
        if plan.is_ragged(p) and not any(d is None for d in shape):
            shape = (None,) * len(shape)  # ragged in another epoch, or the schema does not say which dims vary
        dtype = (tf.string if info.dtype == "str" else tf.uint16 if info.dtype == "bfloat16"
                 else tf.as_dtype(numpy_dtype(info.dtype)))
        specs.append(tf.TensorSpec(shape if ragged else (None, *shape), dtype))

    def rows() -> Iterator[tuple[Any, ...]]:
        for block in row_blocks(plan, paths):
            cols = [_tf_rows(plan.infos[p], block[p], p in moved) for p in paths]
            if ragged:
                yield from zip(*cols)
            else:
                yield tuple(cols)

    bf16 = [plan.infos[p].dtype == "bfloat16" for p in paths]

    def nest(*flat: Any) -> Any:
        leaves = dict(zip(paths, (tf.bitcast(t, tf.bfloat16) if b else t for t, b in zip(flat, bf16))))
        return _tf_structure(structure, leaves)

    ds = tf.data.Dataset.from_generator(rows, output_signature=tuple(specs)).map(nest)
    return ds if ragged else ds.unbatch()


def _image_like(info: FieldInfo) -> bool:
    """Rows of shape (C, H, W) from torch tensors (torch's channels-first convention)."""
    return info.kind in ("tensor", "tensor-list") and len(info.shape) == 3


def _tf_rows(info: FieldInfo, rows: Any, move: bool) -> Any:
    """One field's rows as TensorFlow takes them: a block, or a list of ragged rows."""
    if isinstance(rows, list):
        return [_tf_rows(info, r[np.newaxis], move)[0] for r in rows]
    if info.dtype == "str":
        return rows.astype(object)
    return np.ascontiguousarray(np.moveaxis(rows, 1, -1)) if move else rows


def _prune(structure: Structure, keep: set[str]) -> Structure:
    """``structure`` with only the leaves in ``keep``; emptied containers and ``None`` leaves dropped."""
    t = structure["type"]
    if t == "leaf":
        return structure if structure["field"] in keep else {"type": "none"}
    if t == "none":
        return structure
    items = [_prune(s, keep) for s in structure["items"]]
    kept = [i for i, s in enumerate(items) if s["type"] != "none"]
    if not kept:
        return {"type": "none"}
    pruned = {**structure, "items": [items[i] for i in kept]}
    if t == "dict":
        pruned["keys"] = [structure["keys"][i] for i in kept]
    if t == "namedtuple":
        pruned["fields"] = [structure["fields"][i] for i in kept]
    return pruned


def _tf_structure(structure: Structure, leaves: dict[str, Any]) -> Any:
    """Elements mirror the batch: dicts stay dicts, namedtuples stay, lists and tuples become tuples."""
    t = structure["type"]
    if t == "leaf":
        return leaves[structure["field"]]
    items = [_tf_structure(s, leaves) for s in structure["items"]]
    if t == "dict":
        return dict(zip(structure["keys"], items))
    if t == "namedtuple":
        return namedtuple_class(structure["name"], tuple(structure["fields"]))(*items)
    return tuple(items)
