"""Record loaders that Hugging Face Accelerate prepares.

``Accelerator.prepare`` builds a new loader (a ``DataLoaderShard``: device
placement, ``end_of_dataloader`` for gradient accumulation, the rank's shard
of the batches, synchronised RNGs) around the dataset of the one it is given.
Record the prepared loader: ``rec.wrap(accelerator.prepare(loader), ...)``;
or, to wrap first, prepare through ``prepare`` below, which hands a
``RecordingLoader``'s loader to Accelerate and records what comes back.
"""

from __future__ import annotations

from typing import Any

from ..recording import RecordingLoader


def prepare(accelerator: Any, *objects: Any, device_placement: list[bool] | None = None) -> Any:
    """``accelerator.prepare(*objects)``, where a ``RecordingLoader`` stands for the loader it wraps.

    Each ``RecordingLoader`` among ``objects`` has its loader prepared and
    then records the prepared loader (``RecordingLoader.replace_loader``); it
    is returned in its place. Everything else is what ``accelerator.prepare``
    returns, in the same order (one object: the object itself).

    Raises
    ------
    UsageError
        A ``RecordingLoader`` is in the middle of an epoch.
    """
    given = [o.loader if isinstance(o, RecordingLoader) else o for o in objects]
    prepared = accelerator.prepare(*given, device_placement=device_placement)
    prepared = list(prepared) if len(objects) > 1 else [prepared]
    for k, o in enumerate(objects):
        if isinstance(o, RecordingLoader):
            o.replace_loader(prepared[k])
            prepared[k] = o
    return prepared[0] if len(prepared) == 1 else tuple(prepared)
