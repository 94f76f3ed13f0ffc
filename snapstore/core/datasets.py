"""Walking a loader's dataset: Subset/ConcatDataset, torchvision-style transforms, raw samples.

Pure functions over the user's ``Dataset`` objects: where ``dataset[i]`` is
served from, whether transforms are set, and what ``raw=`` of
``Recorder.wrap`` resolves to. The recorder (what to capture) and
``snapstore.compare`` (what to re-read) share them.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import Any, Literal

from torch.utils.data import ConcatDataset, Dataset, IterableDataset, Subset

from ..errors import UsageError

TRANSFORM_ATTRS = ("transform", "transforms", "target_transform")


def locate(dataset: Any, index: int) -> tuple[Any, int]:
    """The innermost dataset and index that ``dataset[index]`` reads, through ``Subset``/``ConcatDataset``."""
    while True:
        if isinstance(dataset, Subset):
            dataset, index = dataset.dataset, int(dataset.indices[index])
        elif isinstance(dataset, ConcatDataset):
            if index < 0:
                index += len(dataset)
            d = bisect.bisect_right(dataset.cumulative_sizes, index)
            index -= dataset.cumulative_sizes[d - 1] if d else 0
            dataset = dataset.datasets[d]
        else:
            return dataset, index


def bases(dataset: Any) -> list[Any]:
    """The innermost datasets under ``dataset`` (through ``Subset``/``ConcatDataset``), depth first."""
    return _bases(dataset)


def is_wrapped(dataset: Any) -> bool:
    return isinstance(dataset, (Subset, ConcatDataset))


def _bases(dataset: Any) -> list[Any]:
    if isinstance(dataset, Subset):
        return _bases(dataset.dataset)
    if isinstance(dataset, ConcatDataset):
        return [b for d in dataset.datasets for b in _bases(d)]
    return [dataset]


def has_transforms(dataset: Any) -> bool:
    """Whether any dataset under ``dataset`` has a torchvision-style transform set."""
    return any(getattr(b, a, None) is not None for b in _bases(dataset) for a in TRANSFORM_ATTRS)


class Untransformed:
    """``indices -> [dataset[i] for i in indices]`` with the transforms of the datasets serving them
    disabled, once for the lot (toggling them per sample cost more than the fetch)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __call__(self, indices: Any) -> list[Any]:
        located = [locate(self.dataset, int(i)) for i in indices]
        served = {id(b): b for b, _ in located}.values()
        saved = [(b, a, getattr(b, a)) for b in served for a in TRANSFORM_ATTRS if getattr(b, a, None) is not None]
        try:
            for b, a, _ in saved:
                setattr(b, a, None)
            return [b[j] for b, j in located]
        finally:
            for b, a, v in saved:
                setattr(b, a, v)


class Each:
    """``indices -> [fetch(i) for i in indices]``: picklable, so it reaches spawned loader workers."""

    def __init__(self, fetch: Callable[[int], Any]) -> None:
        self.fetch = fetch

    def __call__(self, indices: Any) -> list[Any]:
        return [self.fetch(int(i)) for i in indices]


RawSource = Literal["auto"] | Dataset | Callable[[int], Any] | None
"""``Recorder.wrap(raw=...)``: ``"auto"``, a ``Dataset``, a callable ``index -> raw sample``, or ``None``."""


def raw_source(raw: RawSource, dataset: Any) -> tuple[Callable[[Any], list[Any]] | None, bool]:
    """Resolve ``Recorder.wrap(raw=...)`` to ``(fetch, record)``.

    ``record`` says whether raw samples are recorded at all; ``fetch(indices)``
    returns the raw samples of a sequence of indices, or is ``None`` when the
    raw sample is the fetched item itself (no second fetch).
    """
    if raw is None:
        return None, False
    if isinstance(raw, str):
        if raw != "auto":
            raise UsageError(f"raw={raw!r} is not understood; pass 'auto', None, a Dataset or a callable "
                             "index -> sample")
        if isinstance(dataset, IterableDataset) or not has_transforms(dataset):
            return None, True
        return Untransformed(dataset), True
    if isinstance(raw, Dataset):
        return Each(raw.__getitem__), True
    if callable(raw):
        return Each(raw), True
    raise UsageError(f"raw={raw!r} is not understood; pass 'auto', None, a Dataset or a callable index -> sample")
