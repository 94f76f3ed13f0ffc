"""What an epoch stores of its seen rows: the ``seen=`` policy of ``Recorder.wrap``; no I/O here.

Every epoch stores its order, batch sizes, workers and the content hash of
every seen row and output. The policy says which seen rows are also stored
in full (their bytes):

- ``"full"`` (the default): every row;
- ``"hash"``: none;
- a sampling policy, a dict with one or more of ``{"every": N}`` (every
  row of epochs 0, N, 2N, ...), ``{"batches": f}`` (a deterministic
  fraction ``0 < f <= 1`` of each epoch's batches: batch ``b`` when
  ``floor((b + 1) * f) > floor(b * f)``, so every ``1/f``-th batch, the
  same ones each epoch) and ``{"indices": [i, ...]}`` (the rows of these
  dataset indices, e.g. a probe set); a row is stored when any of them
  selects it.

The policy is written to the stream's and to each epoch's manifest
(``to_dict``); which rows an epoch holds in full is its ``full`` array. A
row stored in full that is bitwise its raw sample is stored once, in the
stream's raw samples (``layout.SEEN_RAW``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import UsageError

__all__ = ["FULL", "SeenPolicy"]

_KEYS = ("every", "batches", "indices")


@dataclass(frozen=True)
class SeenPolicy:
    """Which seen rows an epoch stores in full (see the module docstring).

    Attributes
    ----------
    mode : {"full", "hash", "sampled"}
    every : int or None
        Sampled: every row of epochs ``0, every, 2*every, ...``.
    batches : float or None
        Sampled: the fraction of each epoch's batches stored in full.
    indices : tuple of int
        Sampled: dataset indices whose rows are stored in full.
    """

    mode: str
    every: int | None = None
    batches: float | None = None
    indices: tuple[int, ...] = ()

    @classmethod
    def parse(cls, seen: Any) -> SeenPolicy:
        """The policy ``Recorder.wrap(seen=...)`` was given; ``UsageError`` naming what is wrong."""
        if isinstance(seen, SeenPolicy):
            return seen
        if seen in ("full", "hash"):
            return cls(seen)
        hint = ("pass seen='full', seen='hash', or a dict with one or more of {'every': N} (every Nth epoch in "
                "full), {'batches': f} (a fraction 0 < f <= 1 of the batches) and {'indices': [...]} (a probe set)")
        if not isinstance(seen, dict) or not seen or set(seen) - set(_KEYS):
            raise UsageError(f"seen={seen!r:.200} is not a policy; {hint}")
        every, batches, indices = seen.get("every"), seen.get("batches"), seen.get("indices")
        if every is not None and (not _is_int(every) or every < 1):
            raise UsageError(f"seen={{'every': {every!r}}}: 'every' must be an int >= 1 (epochs); {hint}")
        if batches is not None and (isinstance(batches, bool) or not isinstance(batches, (int, float))
                                    or not 0 < batches <= 1):
            raise UsageError(f"seen={{'batches': {batches!r}}}: 'batches' must be a fraction 0 < f <= 1; {hint}")
        if indices is not None:
            try:
                values = np.asarray(indices)
            except (TypeError, ValueError):
                values = np.asarray([None])
            if values.ndim != 1 or not values.size or values.dtype.kind not in "iu" or (values < 0).any():
                raise UsageError(f"seen={{'indices': {indices!r:.80}}}: 'indices' must be a non-empty list of "
                                 f"dataset indices (ints >= 0); {hint}")
            indices = tuple(sorted(set(values.tolist())))
        return cls("sampled", every, None if batches is None else float(batches), indices or ())

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"mode": self.mode}
        if self.every is not None:
            d["every"] = self.every
        if self.batches is not None:
            d["batches"] = self.batches
        if self.indices:
            d["indices"] = list(self.indices)
        return d

    @classmethod
    def from_dict(cls, d: Any) -> SeenPolicy:
        """The policy stored in a manifest; ``ValueError`` if it is not one snapstore writes."""
        if not isinstance(d, dict) or d.get("mode") not in ("full", "hash", "sampled"):
            raise ValueError(f"'seen' is {d!r:.80}, not a policy")
        if d["mode"] != "sampled":
            if set(d) != {"mode"}:
                raise ValueError(f"'seen' is {d!r:.80}, not a policy")
            return cls(d["mode"])
        try:
            return cls.parse({k: v for k, v in d.items() if k != "mode"})
        except UsageError:
            raise ValueError(f"'seen' is {d!r:.80}, not a policy") from None

    def describe(self) -> str:
        """The policy as ``wrap(seen=...)`` takes it, for messages."""
        if self.mode != "sampled":
            return f"seen={self.mode!r}"
        return f"seen={ {k: v for k, v in self.to_dict().items() if k != 'mode'} }"

    def whole_epoch(self, epoch: int) -> bool | None:
        """True when every row of ``epoch`` is stored in full, False when none is, None when it depends."""
        if self.mode == "full" or (self.every is not None and epoch % self.every == 0):
            return True
        if self.mode == "hash":
            return False
        return None

    def full_rows(self, epoch: int, batch: int, indices: np.ndarray) -> np.ndarray:
        """Which rows of batch ``batch`` of ``epoch``, dataset ``indices`` (int64, (n,)), are stored in full
        (bool, (n,))."""
        whole = self.whole_epoch(epoch)
        if whole is not None:
            return np.full(len(indices), whole)
        if self.batches is not None and math.floor((batch + 1) * self.batches) > math.floor(batch * self.batches):
            return np.ones(len(indices), dtype=bool)
        if self.indices:
            return np.isin(indices, np.asarray(self.indices, dtype=np.int64))
        return np.zeros(len(indices), dtype=bool)


FULL = SeenPolicy("full")
"""The default policy: every seen row stored in full."""


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)
