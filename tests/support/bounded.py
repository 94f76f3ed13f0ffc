"""Read and audit a snapshot in this process under a memory limit; print how each ended, with its cost.

Run as ``python -m tests.support.bounded <pristine> <hostile>`` (``tests/scenarios/test_hostile.py``):
reading and auditing the undamaged ``<pristine>`` first loads every module and
starts every thread pool; then the address space is limited to what it is now
plus ``EXTRA_BYTES``, and ``<hostile>`` is read entirely (``read_everything``)
and audited. The last line of stdout is JSON::

    {"read": {"ended": "ok" | "<SnapstoreError subclass>", "message": ..., "seconds": ..., "peak_mb": ...},
     "audit": {"ended": "ok" | "findings" | "<SnapstoreError subclass>", ...}}

``peak_mb`` is the resident memory at the peak of that step above what the
process held before it (``VmHWM``, reset through ``/proc/self/clear_refs``).
Any other exception (a ``MemoryError`` once the limit is reached, a bare
``ValueError``) escapes with its traceback and a non-zero exit.
"""

from __future__ import annotations

import json
import resource
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

threading.stack_size(1 << 20)  # threads started from here on reserve 1 MiB of address space, not 8

import snapstore  # noqa: E402  (after the stack size, before the limit)
from snapstore.errors import SnapstoreError  # noqa: E402
from tests.support.snapshots import read_everything  # noqa: E402

#: Address space the hostile reads may add to what the warmed-up process holds.
EXTRA_BYTES = 100 * 1024 * 1024


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    raise KeyError(key)


def _audit(path: str) -> dict[str, Any]:
    report = snapstore.audit(path, progress=False)
    if report.ok:
        return {"ended": "ok"}
    return {"ended": "findings", "message": "\n".join(str(f) for f in report.findings)}


def _read(path: str) -> dict[str, Any]:
    read_everything(path)
    return {"ended": "ok"}


def _measured(step: Callable[[str], dict[str, Any]], path: str) -> dict[str, Any]:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    before = _status_kb("VmRSS")
    t0 = time.perf_counter()
    try:
        out = step(path)
    except SnapstoreError as e:
        out = {"ended": type(e).__name__, "message": str(e)}
    out["seconds"] = round(time.perf_counter() - t0, 3)
    out["peak_mb"] = round((_status_kb("VmHWM") - before) / 1024, 1)
    return out


def main(pristine: str, hostile: str) -> None:
    _read(pristine)
    _audit(pristine)
    limit = _status_kb("VmSize") * 1024 + EXTRA_BYTES
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    result = {"read": _measured(_read, hostile), "audit": _measured(_audit, hostile)}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
