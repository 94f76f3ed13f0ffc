"""Capture exact dataset indices and raw samples inside the loader's workers.

``RecordingLoader`` rebuilds the user's DataLoader from its public
attributes around two wrappers: a dataset wrapper that returns each fetched
item together with its index (and, on first sight, its raw sample), and a
collate wrapper that hands the user's ``collate_fn`` exactly the items it
would have received and returns ``Tagged(batch, tags)``. The tags travel with
the batch through workers, prefetching and out-of-order delivery, so the
indices of every batch are exact whatever the sampler.

Raw samples are flattened and stacked in the worker (one array per field per
batch) so they cross the worker pipe as a few arrays, and a shared-memory
bitmap of recorded indices keeps workers from sending a raw sample twice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from ..core.datasets import bases, is_wrapped, locate
from ..core.rows import concat_rows
from ..core.schema import Structure, flatten, reconcile
from ..errors import SchemaError


class RawBlock(NamedTuple):
    """Raw samples of one batch: ``indices`` (int64, (n,)) and stacked field rows.

    Sent from a worker to the training process with its large numeric
    arrays as tensors, which the DataLoader moves through shared memory like
    the batch itself; sent by value, every raw block in flight was held three
    times (serialized in the worker, in the pipe, deserialized).
    """

    indices: np.ndarray
    structure: Structure
    fields: dict[str, Any]  # path -> (FieldInfo, ndarray (n, *shape))

    def __reduce__(self) -> tuple[Any, ...]:
        fields = {p: (info, _shareable(rows)) for p, (info, rows) in self.fields.items()}
        return _rebuild_raw, (self.indices, self.structure, fields)

SHARED_MIN_BYTES = 64 * 1024  # smaller arrays cost less sent by value than as a shared-memory segment


def _shareable(rows: Any) -> Any:
    if isinstance(rows, np.ndarray) and rows.dtype.kind in "biufc" and rows.nbytes >= SHARED_MIN_BYTES:
        try:
            return torch.from_numpy(rows)
        except TypeError:  # a dtype torch has no tensor type for (long double): by value
            pass
    return rows


def _rebuild_raw(indices: np.ndarray, structure: Structure, fields: dict[str, Any]) -> RawBlock:
    return RawBlock(indices, structure, {p: (info, rows.numpy() if isinstance(rows, torch.Tensor) else rows)
                                         for p, (info, rows) in fields.items()})


class Tags:
    """What travels with a batch: its indices, the worker, base indices and first-seen raw samples.

    ``base`` is ``(base_dataset, base_order)`` (int32, int64 arrays) when the
    dataset wraps others through ``Subset``/``ConcatDataset``. A plain object,
    so ``pin_memory`` passes it through untouched.
    """

    __slots__ = ("base", "indices", "raw", "worker")

    def __init__(self, indices: np.ndarray, raw: RawBlock | None, worker: int,
                 base: tuple[np.ndarray, np.ndarray] | None) -> None:
        self.indices = indices
        self.raw = raw
        self.worker = worker
        self.base = base


class Tagged(NamedTuple):
    """What the inner loader yields: the user's batch and its tags."""

    batch: Any
    tags: Tags


class _Items:
    """Items fetched for one batch, with their tags (worker side)."""

    __slots__ = ("items", "tags")

    def __init__(self, items: Any, tags: Tags) -> None:
        self.items = items
        self.tags = tags


def _worker_id() -> int:
    info = get_worker_info()
    return info.id if info is not None else -1


def stack_raw(indices: np.ndarray, samples: list[Any]) -> RawBlock:
    """Flatten raw samples and join each field's rows (packed when their shapes differ)."""
    uniform = _stack_uniform(samples)
    if uniform is not None:
        return RawBlock(indices, *uniform)
    return _join([(indices[k : k + 1], *flatten(s, None)) for k, s in enumerate(samples)])


def _stack_uniform(samples: list[Any]) -> tuple[Structure, dict[str, Any]] | None:
    """``(structure, fields)`` of samples laid out exactly like the first one, stacked field by field.

    The common case (every sample a tuple/dict of same-shape CPU tensors or
    arrays and Python numbers) costs one ``flatten`` plus a few checks per
    sample instead of a ``flatten`` per sample (which dominated raw capture:
    about 60 us a sample). Anything else returns ``None`` and goes through the
    general per-sample path, which reconciles types and packs ragged rows.
    """
    structure, first = flatten(samples[0], None)
    if len(samples) == 1:
        return structure, first
    containers: list[tuple[tuple[Any, ...], Any, int]] = []
    leaves: list[tuple[str, tuple[Any, ...], Any]] = []

    def walk(node: Structure, obj: Any, keys: tuple[Any, ...]) -> bool:
        kind = node["type"]
        if kind == "leaf":
            info = first[node["field"]][0]
            if (info.kind in ("tensor", "ndarray") and info.dtype not in ("bfloat16", "str")
                    and not getattr(obj, "is_cuda", False)):
                leaves.append((node["field"], keys, (type(obj), obj.dtype, tuple(obj.shape))))
                return True
            if info.kind == "scalar" and info.dtype != "str":
                leaves.append((node["field"], keys, type(obj)))
                return True
            return False
        if kind == "none":
            containers.append((keys, type(None), 0))
            return obj is None
        if kind not in ("tuple", "list", "dict", "namedtuple"):
            return False
        containers.append((keys, type(obj), len(obj)))
        names = node["keys"] if kind == "dict" else range(len(node["items"]))
        return all(walk(child, obj[k], (*keys, k)) for k, child in zip(names, node["items"]))

    if not walk(structure, samples[0], ()):
        return None
    fields: dict[str, Any] = {}
    try:  # one pass per container and per leaf, each leaf fetched once: this runs on the training thread
        for keys, typ, n in containers:
            if any(type(c) is not typ or (c is not None and len(c) != n) for c in [_get(s, keys) for s in samples]):
                return None
        for path, keys, sig in leaves:
            info, first_rows = first[path]
            values = [_get(s, keys) for s in samples]
            if type(sig) is not tuple:
                if any(type(v) is not sig for v in values):
                    return None
                fields[path] = (info, np.array(values, dtype=first_rows.dtype))
                continue
            typ, dtype, shape = sig
            if any(type(v) is not typ or v.dtype != dtype or v.shape != shape for v in values):
                return None
            if typ is torch.Tensor:
                if any(v.is_cuda for v in values):
                    return None
                fields[path] = (info, torch.stack(values).numpy())
            else:
                fields[path] = (info, np.stack(values))
    except (KeyError, IndexError, TypeError):
        return None
    return structure, fields


def _get(obj: Any, keys: tuple[Any, ...]) -> Any:
    for k in keys:
        obj = obj[k]
    return obj


def _join(parts: list[tuple[np.ndarray, Structure, dict[str, Any]]]) -> RawBlock:
    """One RawBlock from ``(indices, structure, fields)`` parts with a common schema."""
    structure, infos = parts[0][1], {p: f for p, (f, _) in parts[0][2].items()}
    for idx, st, fields in parts[1:]:
        infos = reconcile(structure, infos, st, {p: f for p, (f, _) in fields.items()}, f"raw sample {idx[0]}")
    return RawBlock(
        np.concatenate([idx for idx, _, _ in parts]),
        structure,
        {p: (info, concat_rows(info, [fields[p][1] for _, _, fields in parts])) for p, info in infos.items()},
    )


def _index_array(indices: Any) -> np.ndarray:
    try:
        a = np.asarray(indices, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise SchemaError(
            f"the sampler yielded {indices!r}; snapstore records integer dataset indices, so use a sampler or "
            "batch_sampler that yields ints"
        ) from None
    return a


class CaptureMap(Dataset):
    """Map-style wrapper: ``__getitems__`` returns the fetched items with their indices.

    Parameters
    ----------
    dataset : Dataset
        The user's dataset; fetched exactly as the DataLoader would.
    fetch_raw : callable or None
        ``indices -> raw samples`` (see ``raw_source``); ``None`` takes the fetched items themselves.
    recorded : torch.Tensor of bool, shape (len(dataset),), in shared memory, or None
        Indices whose raw sample is already recorded; ``None`` records no raw samples.
    """

    def __init__(self, dataset: Any, fetch_raw: Callable[[Any], list[Any]] | None,
                 recorded: torch.Tensor | None) -> None:
        self.dataset = dataset
        self.fetch_raw = fetch_raw
        self.recorded = recorded
        self._base_ids: dict[int, int] | None = None

    def _base(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        if not is_wrapped(self.dataset):
            return None
        if self._base_ids is None:  # object ids differ in each worker's copy: compute there
            self._base_ids = {id(b): k for k, b in enumerate(bases(self.dataset))}
        located = [locate(self.dataset, int(i)) for i in indices]
        return (np.array([self._base_ids[id(d)] for d, _ in located], dtype=np.int32),
                np.array([j for _, j in located], dtype=np.int64))

    def _tags(self, indices: np.ndarray, items: list[Any] | None) -> Tags:
        return Tags(indices, self._raw(indices, items), _worker_id(), self._base(indices))

    def __len__(self) -> int:
        return len(self.dataset)

    def _raw(self, indices: np.ndarray, items: list[Any] | None) -> RawBlock | None:
        if self.recorded is None:
            return None
        new = np.nonzero(~self.recorded.numpy()[indices])[0]
        if len(new) == 0:
            return None
        if self.fetch_raw is not None:
            samples = self.fetch_raw(indices[new])
        elif items is not None:
            samples = [items[k] for k in new]
        else:  # __getitems__ returned no per-index list: fetch the raw items again
            samples = [self.dataset[int(indices[k])] for k in new]
        return stack_raw(indices[new], samples)

    def __getitem__(self, index: Any) -> _Items:  # batch_size=None: one index per fetch
        indices = _index_array(index)
        item = self.dataset[index]
        return _Items(item, self._tags(indices, [item]))

    def __getitems__(self, indices: Any) -> _Items:
        idx = _index_array(indices)
        if getattr(self.dataset, "__getitems__", None):
            items = self.dataset.__getitems__(indices)
        else:
            items = [self.dataset[i] for i in indices]
        per_index = isinstance(items, list) and len(items) == len(idx)
        return _Items(items, self._tags(idx, items if per_index else None))


class CaptureIterable(IterableDataset):
    """Iterable wrapper: tags each item with its position in the stream.

    With ``W`` workers, the ``p``-th item of worker ``w`` gets position
    ``p * W + w`` (its place in the round-robin interleaving the DataLoader
    delivers when workers yield equal shares); with no workers, ``p``.
    """

    def __init__(self, dataset: Any, fetch_raw: Callable[[Any], list[Any]] | None, record_raw: bool) -> None:
        self.dataset = dataset
        self.fetch_raw = fetch_raw
        self.record_raw = record_raw

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for p, item in enumerate(self.dataset):
            idx = np.array([p * workers + worker], dtype=np.int64)
            if self.fetch_raw is not None:
                raw = stack_raw(idx, self.fetch_raw(idx))
            elif self.record_raw:
                raw = stack_raw(idx, [item])
            else:
                raw = None
            yield _Items(item, Tags(idx, raw, worker if info is not None else -1, None))


def _merge_raw(blocks: list[RawBlock | None]) -> RawBlock | None:
    present = [(b.indices, b.structure, b.fields) for b in blocks if b is not None]
    return _join(present) if present else None


class CaptureCollate:
    """Calls the user's ``collate_fn`` on exactly the fetched items; returns ``Tagged``."""

    def __init__(self, collate_fn: Callable[[Any], Any]) -> None:
        self.collate_fn = collate_fn

    def __call__(self, data: _Items | list[_Items]) -> Tagged:
        if isinstance(data, list):  # iterable dataset with batching: one _Items per item
            tags = [d.tags for d in data]
            raw = _merge_raw([t.raw for t in tags])
            return Tagged(self.collate_fn([d.items for d in data]),
                          Tags(np.concatenate([t.indices for t in tags]), raw, tags[0].worker, None))
        return Tagged(self.collate_fn(data.items), data.tags)
