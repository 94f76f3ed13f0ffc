"""Capture exact dataset indices and raw samples where the loader collates: in its workers or in-process.

The user's loader runs as it is (its class, its ``__iter__``, its workers
and sampler). While ``RecordingLoader`` records an epoch, the loader's
``collate_fn`` is a ``CaptureCollate`` around the user's: it calls the user's
function on exactly the items it would have received, reads the indices of
those items from torch's dataset fetcher (the frame that called it) and
returns ``Tagged(batch, tags)``. The tags travel with the batch through the
worker pipe, prefetching, out-of-order delivery, ``pin_memory`` and the
loader's own ``__iter__`` (device placement, say), and ``RecordingLoader``
takes them off before the training loop sees the batch.

Raw samples are taken without a second fetch wherever they can be observed:
the fetched items themselves, or, for a dataset with torchvision-style
transforms, the inputs of those transforms (``TransformTee``). Where a second
fetch cannot be avoided, it runs with every global RNG restored afterwards.
Raw samples are stacked in the worker (one array per field per batch) so they
cross the worker pipe as a few arrays, and a shared-memory bitmap of recorded
indices keeps workers from sending a raw sample twice.
"""

from __future__ import annotations

import contextlib
import operator
import random
import sys
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import get_worker_info
from torch.utils.data._utils.fetch import _BaseDatasetFetcher

from ..core.datasets import TRANSFORM_ATTRS, Each, Untransformed, bases, is_wrapped, locate
from ..core.rows import Ragged, concat_rows
from ..core.schema import Structure, flatten, reconcile
from ..errors import SchemaError, UsageError


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

    __slots__ = ("base", "indices", "listed", "raw", "worker")

    def __init__(self, indices: np.ndarray, raw: RawBlock | None, worker: int,
                 base: tuple[np.ndarray, np.ndarray] | None, listed: bool = False) -> None:
        self.indices = indices
        self.raw = raw
        self.worker = worker
        self.base = base
        self.listed = listed  # a batch_size=None loader fetched a list of indices: the batch has rows


class Tagged(NamedTuple):
    """What the inner loader yields: the user's batch and its tags."""

    batch: Any
    tags: Tags


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
            if any(type(c) is not typ or (c is not None and len(c) != n) for c in _values(samples, keys)):
                return None
        for path, keys, sig in leaves:
            info, first_rows = first[path]
            values = _values(samples, keys)
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
                fields[path] = (info, torch.stack([v.detach() for v in values]).numpy())
            else:
                fields[path] = (info, np.stack(values))
    except (KeyError, IndexError, TypeError):
        return None
    return structure, fields


_ABSENT = object()


def _at(node: Any, keys: tuple[Any, ...]) -> Any:
    """The element at ``keys`` below ``node`` through tuples, lists and dicts only, as ``_find`` goes (so that
    ``_put`` can rebuild each of them), or ``_ABSENT``."""
    for k in keys:
        if isinstance(node, dict):
            node = node.get(k, _ABSENT)
        elif isinstance(node, (list, tuple)) and type(k) is int and k < len(node):
            node = node[k]
        else:
            return _ABSENT
    return node


def _values(samples: list[Any], keys: tuple[Any, ...]) -> list[Any]:
    """``_at(s, keys)`` of each sample (one C-level pass for the usual one-level keys, which raises where a
    sample has no such key)."""
    if len(keys) == 1:
        return list(map(operator.itemgetter(keys[0]), samples))
    return [_at(s, keys) for s in samples]


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


@contextlib.contextmanager
def rng_preserved() -> Iterator[None]:
    """Run a block (a second fetch of raw samples) without consuming the global RNGs of Python, NumPy
    and torch (CPU): the dataset's next draws are what they would have been without it."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


class TeeLog:
    """What the transforms of a stream's datasets were called with in this process since the last batch:
    ``(input, output)`` pairs, in call order. Filled by ``TransformTee``, drained by ``CaptureCollate``."""

    def __init__(self, switch: torch.Tensor) -> None:
        self.switch = switch
        self.calls: list[tuple[Any, Any]] = []
        self._on: np.ndarray | None = None

    @property
    def on(self) -> bool:
        """Whether recording is on: read through a NumPy view of the shared switch, made once in each process
        (indexing the tensor itself cost ~15 us a call, once per transform call)."""
        if self._on is None:
            self._on = self.switch.numpy()
        return bool(self._on[0])

    def __getstate__(self) -> dict[str, Any]:  # to a spawned worker: the tensor travels, the view is remade there
        return {**self.__dict__, "_on": None, "calls": []}

    def drain(self) -> list[tuple[Any, Any]]:
        calls, self.calls = self.calls, []
        return calls


class TransformTee:
    """A dataset's transform that also logs its input, so the raw sample is observed, not fetched again.

    Set in place of ``transform``/``transforms``/``target_transform`` on the
    datasets under a recorded loader while it records an epoch (and in its
    persistent workers after that, where it only forwards once recording is
    off). Calls, attributes and ``repr`` are the transform's.
    """

    def __init__(self, transform: Callable[..., Any], log: TeeLog) -> None:
        self.transform = transform
        self.log = log

    def __call__(self, *args: Any) -> Any:
        out = self.transform(*args)
        if self.log.on:
            self.log.calls.append((args[0] if len(args) == 1 else args, out))
        return out

    def __getattr__(self, name: str) -> Any:
        if name in ("transform", "log"):  # not set yet: unpickling
            raise AttributeError(name)
        return getattr(self.transform, name)

    def __repr__(self) -> str:
        return repr(self.transform)


def install_tees(dataset: Any, log: TeeLog) -> list[tuple[Any, str, Any]]:
    """Put a ``TransformTee`` on every transform set on the datasets under ``dataset``;
    returns ``(dataset, attribute, transform)`` to put back with ``remove_tees``."""
    saved = []
    for base in bases(dataset):
        for attr in TRANSFORM_ATTRS:
            transform = getattr(base, attr, None)
            if transform is not None and not isinstance(transform, TransformTee):
                saved.append((base, attr, transform))
                setattr(base, attr, TransformTee(transform, log))
    return saved


def remove_tees(saved: list[tuple[Any, str, Any]]) -> None:
    for base, attr, transform in saved:
        setattr(base, attr, transform)


def _untransformed(item: Any, calls: list[tuple[Any, Any]]) -> tuple[Any, int] | None:
    """``item`` with each transform output in it replaced by that transform's input, taking ``calls`` from
    the front while their outputs are found in ``item``: ``(raw item, calls used)``, or ``None`` when the
    first call's output is not in the item (the dataset changed it after the transform)."""
    used = 0
    while used < len(calls):
        given, out = calls[used]
        replaced = _replace(item, out, given)
        if replaced is None and isinstance(out, tuple) and isinstance(given, tuple) and len(out) == len(given):
            replaced = item  # transforms(img, target) -> (img', target'): each output in its place
            for o, g in zip(out, given):
                replaced = _replace(replaced, o, g) if replaced is not None else None
        if replaced is None:
            break
        item, used = replaced, used + 1
    return (item, used) if used else None


def _replace(node: Any, old: Any, new: Any) -> Any:
    """``node`` with the first element that *is* ``old`` replaced by ``new`` (see ``_find``, ``_put``), or
    ``None`` if ``old`` is not in it."""
    keys = _find(node, old)
    return None if keys is None else _put(node, keys, new)


def _find(node: Any, target: Any) -> tuple[Any, ...] | None:
    """The keys from ``node`` down to the first element that *is* ``target`` (``()``: ``node`` itself), through
    tuples, lists and dicts, each container's own elements before theirs; ``None`` if it is not there."""
    if node is target:
        return ()
    if isinstance(node, dict):
        children = list(node.items())
    elif isinstance(node, (list, tuple)):
        children = list(enumerate(node))
    else:
        return None
    for k, v in children:
        if v is target:
            return (k,)
    for k, v in children:
        if isinstance(v, (dict, list, tuple)):
            below = _find(v, target)
            if below is not None:
                return (k, *below)
    return None


def _put(node: Any, keys: tuple[Any, ...], value: Any) -> Any:
    """``node`` with the element at ``keys`` replaced by ``value``: each container on the way rebuilt as its
    own type (a namedtuple from its fields; a subclass of list or tuple as a list)."""
    if not keys:
        return value
    k = keys[0]
    child = _put(node[k], keys[1:], value)
    if isinstance(node, dict):
        return {**node, k: child} if type(node) is dict else type(node)({**node, k: child})
    items = [*node[:k], child, *node[k + 1 :]]
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        return type(node)(*items)
    return type(node)(items) if type(node) in (list, tuple) else items


class CaptureCollate:
    """The loader's ``collate_fn`` while an epoch is recorded: the user's function, plus the batch's tags.

    Parameters
    ----------
    collate_fn : callable
        The user's; called on exactly the items the loader fetched.
    dataset : Dataset
        ``loader.dataset`` (its bases map indices through ``Subset``/``ConcatDataset``).
    switch : torch.Tensor of int32, shape (1,), in shared memory
        Nonzero while ``RecordingLoader`` records an epoch; zero makes this
        the user's ``collate_fn`` and nothing else (persistent workers keep
        it after recording ends).
    recorded : torch.Tensor of bool, shape (len(dataset),), in shared memory, or None
        Indices whose raw sample is already recorded (map-style datasets).
    raw : "items", "tee", callable or None
        Where raw samples come from: the fetched items, the items with the
        transform inputs in place of their outputs (``TransformTee``; a
        second, RNG-preserving fetch without transforms where they cannot be
        placed), an explicit ``indices -> samples`` source (fetched with the
        RNGs preserved), or nowhere.
    tees : TeeLog or None
        The log the dataset's ``TransformTee``s fill (``raw="tee"``).
    """

    def __init__(self, collate_fn: Callable[[Any], Any], dataset: Any, switch: torch.Tensor,
                 recorded: torch.Tensor | None, raw: Any, tees: TeeLog | None) -> None:
        self.collate_fn = collate_fn
        self.dataset = dataset
        self.switch = switch
        self.recorded = recorded
        self.raw = raw
        self.tees = tees
        self._base_ids: dict[int, int] | None = None
        self._fetcher: Any = None  # iterable datasets: the fetcher whose items are counted
        self._count = 0

    def __call__(self, data: Any) -> Any:
        calls = self.tees.drain() if self.tees is not None else []
        if not self.switch[0]:
            return self.collate_fn(data)
        fetcher, index = _fetch(sys._getframe(1))
        info = get_worker_info()
        worker = info.id if info is not None else -1
        if fetcher.__class__.__name__ == "_IterableDatasetFetcher":
            tags = self._iterable_tags(fetcher, data, info)
        else:
            indices = _index_array(index)
            per_index = isinstance(data, list) and len(data) == len(indices) if fetcher.auto_collation \
                else len(indices) == 1
            listed = not fetcher.auto_collation and np.ndim(index) > 0
            items = (data if fetcher.auto_collation else [data]) if per_index else None
            tags = Tags(indices, self._raw(indices, items, calls, data if listed else None), worker,
                        self._base(indices), listed=listed)
        return Tagged(self.collate_fn(data), tags)

    def _iterable_tags(self, fetcher: Any, data: Any, info: Any) -> Tags:
        """Tags of an iterable dataset's items: with ``W`` workers, the ``p``-th item of worker ``w`` in this
        epoch is at stream position ``p * W + w`` (the round-robin the DataLoader delivers when workers
        yield equal shares); with none, ``p``."""
        if fetcher is not self._fetcher:  # a new epoch's fetcher (persistent workers keep this object)
            self._fetcher, self._count = fetcher, 0
        items = data if fetcher.auto_collation else [data]
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        p = np.arange(self._count, self._count + len(items), dtype=np.int64)
        self._count += len(items)
        indices = p * workers + worker
        raw = None
        if self.raw == "items":
            raw = stack_raw(indices, items)
        elif callable(self.raw):
            with rng_preserved():
                raw = stack_raw(indices, self.raw(indices))
        return Tags(indices, raw, worker if info is not None else -1, None)

    def _base(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        if not is_wrapped(self.dataset):
            return None
        if self._base_ids is None:  # object ids differ in each worker's copy: compute there
            self._base_ids = {id(b): k for k, b in enumerate(bases(self.dataset))}
        located = [locate(self.dataset, int(i)) for i in indices]
        return (np.array([self._base_ids[id(d)] for d, _ in located], dtype=np.int32),
                np.array([j for _, j in located], dtype=np.int64))

    def _raw(self, indices: np.ndarray, items: list[Any] | None, calls: list[tuple[Any, Any]],
             batch: Any) -> RawBlock | None:
        """Raw samples of the fetched indices not recorded yet. ``items`` are the fetched items, one per index
        (``None`` if the fetch returned something else); ``batch`` is what ``dataset[list of indices]``
        returned to a ``batch_size=None`` loader, whose rows are the raw samples."""
        if self.recorded is None or self.raw is None:
            return None
        new = np.nonzero(~self.recorded.numpy()[indices])[0]
        if len(new) == 0:
            return None
        if batch is not None and self.raw == "items":
            structure, fields = flatten(batch, len(indices))
            return RawBlock(indices[new], structure,
                            {p: (info, rows.take(new) if isinstance(rows, Ragged) else rows[new])
                             for p, (info, rows) in fields.items()})
        samples = None
        if self.raw == "items" and items is not None:
            samples = [items[k] for k in new]
        elif self.raw == "tee" and items is not None:
            samples = _tee_samples(items, calls, new)
        if samples is None:  # not observable: fetch again, leaving every RNG as it was
            fetch = self.raw if callable(self.raw) else (
                Untransformed(self.dataset) if self.raw == "tee" else Each(self.dataset.__getitem__))
            with rng_preserved():
                samples = fetch(indices[new])
        return stack_raw(indices[new], samples)


def _tee_samples(items: list[Any], calls: list[tuple[Any, Any]], new: np.ndarray) -> list[Any] | None:
    """The raw samples of ``items[k]`` for ``k`` in ``new``, from the transform calls that made the items
    (in order), or ``None`` if an item's transform outputs cannot all be placed."""
    raws = _placed_alike(items, calls)
    if raws is None:  # each item on its own, taking its calls from the front
        raws = []
        for item in items:
            placed = _untransformed(item, calls)
            if placed is None:
                return None
            raw, used = placed
            calls = calls[used:]
            raws.append(raw)
        if calls:  # a transform called more often than the items show: not understood, fetch again
            return None
    return [raws[k] for k in new]


def _placed_alike(items: list[Any], calls: list[tuple[Any, Any]]) -> list[Any] | None:
    """The raw items in the usual case, found with one search: one transform call an item, whose output is
    at the same place in every item (``(transform(image), label)``); ``None`` otherwise. Searching each item
    took ~1.5 us of the training thread an item (``num_workers=0``: issue 17)."""
    if not items or len(calls) != len(items):
        return None
    keys = _find(items[0], calls[0][1])
    if keys is None or any(_at(item, keys) is not out for item, (_, out) in zip(items, calls)):
        return None
    return [_put(item, keys, given) for item, (given, _) in zip(items, calls)]


def _fetch(frame: FrameType | None) -> tuple[Any, Any]:
    """``(fetcher, index)`` of the torch dataset fetcher that called the collate function from ``frame``."""
    local = frame.f_locals if frame is not None else {}
    fetcher = local.get("self")
    if not isinstance(fetcher, _BaseDatasetFetcher) or "possibly_batched_index" not in local:
        where = f"{frame.f_code.co_filename}:{frame.f_code.co_name}" if frame is not None else "nowhere"
        raise UsageError(
            f"snapstore takes each batch's dataset indices from torch's dataset fetcher, but this loader's "
            f"collate_fn was called from {where}: record a loader that fetches through "
            "torch.utils.data.DataLoader's workers or main process"
        )
    return fetcher, local["possibly_batched_index"]
