"""Process-wide thread pools: made on first use, kept for the life of the process.

Starting threads for each call cost more than the work at an epoch's end
(8 fsync threads: ~2.3 ms a call vs ~1 ms on kept ones, several calls an
epoch), so the pools that serve short, frequent calls are kept here: the
recorders' encoders (``writers.ChunkWriter``), the readers' decoders and the
fsyncs of durable commits.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

_POOLS: dict[str, tuple[int, ThreadPoolExecutor]] = {}


def pool(name: str, workers: int) -> ThreadPoolExecutor:
    """This process's pool of ``workers`` threads named ``snapstore-<name>``, made afresh in a forked
    process (an executor inherited through ``fork`` has no threads)."""
    kept = _POOLS.get(name)
    if kept is None or kept[0] != os.getpid():
        kept = _POOLS[name] = (os.getpid(), ThreadPoolExecutor(workers, thread_name_prefix=f"snapstore-{name}"))
    return kept[1]
