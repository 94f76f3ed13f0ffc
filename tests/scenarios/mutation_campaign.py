"""A long mutation run by hand: ``python -m tests.scenarios.mutation_campaign EXAMPLES SEED``.

Draws EXAMPLES examples of ``test_mutation.mutate`` (1 or 2 mutations each) with ``random.Random`` instead
of hypothesis, so that every outcome is counted instead of the run stopping at the first failure: refused
(a ``SnapstoreError``), harmless (everything reads back equal), plausible (a well-formed JSON value
changed: only the exception type is checked), and the three that must stay 0: silent wrong reads, foreign
exceptions and hangs (a read over 60 s). Prints one JSON line of counts, then the bad examples.
"""

from __future__ import annotations

import collections
import json
import random
import shutil
import signal
import sys
import tempfile
import time
import traceback
import types
from pathlib import Path
from typing import Any

import snapstore
from tests.scenarios import test_mutation as tm


class _Data:
    """What ``mutate`` draws from, by ``random`` (strategies are ``_STRATEGIES``' tuples)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def draw(self, s: Any, label: str | None = None) -> Any:
        return self.rng.choice(s[1]) if s[0] == "s" else self.rng.randint(s[1], s[2])


_STRATEGIES = types.SimpleNamespace(sampled_from=lambda xs: ("s", list(xs)), integers=lambda a, b: ("i", a, b))


class _Hang(Exception):
    pass


def _alarm(*_: Any) -> None:
    raise _Hang


def main(examples: int, seed: int) -> dict[str, Any]:
    tm.st = _STRATEGIES  # type: ignore[assignment]
    signal.signal(signal.SIGALRM, _alarm)
    base = Path(tempfile.mkdtemp())
    factory = types.SimpleNamespace(mktemp=lambda name: (base / name).mkdir() or base / name)
    source, want = tm.original.__wrapped__(factory)  # type: ignore[attr-defined]
    counts: collections.Counter[str] = collections.Counter()
    ops: collections.Counter[str] = collections.Counter()
    bad, mutations, start = [], 0, time.time()
    for i in range(examples):
        data = _Data(random.Random(seed * 100003 + i))
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "run.snap"
            shutil.copytree(source, root)
            done = [tm.mutate(root, data) for _ in range(data.draw(_STRATEGIES.integers(1, 2)))]
            mutations += len(done)
            ops.update(d["op"] for d in done)
            signal.alarm(60)
            try:
                got = tm.read_all(root)
            except snapstore.SnapstoreError:
                counts["refused"] += 1
                continue
            except _Hang:
                counts["hangs"] += 1
                bad.append(("hang", done))
                continue
            except Exception as e:  # noqa: BLE001 - counting them is the point
                counts["foreign exceptions"] += 1
                bad.append(("foreign", done, repr(e), traceback.format_exc()[-1500:]))
                continue
            finally:
                signal.alarm(0)
            if any(d["plausible"] for d in done):
                counts["plausible"] += 1
                continue
            try:
                tm.check_against(got, want)
                counts["harmless"] += 1
            except AssertionError:
                counts["silent wrong reads"] += 1
                bad.append(("silent", done))
    shutil.rmtree(base, ignore_errors=True)
    report = {"examples": examples, "seed": seed, "mutations": mutations, "seconds": round(time.time() - start),
              "outcomes": dict(counts), "operations": dict(ops)}
    print(json.dumps(report))
    for b in bad:
        print(b)
    return report


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
